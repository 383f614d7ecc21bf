#!/usr/bin/env bash
# One command, fresh machine -> real `axolotl train` runs of self-play on tiny local models (CPU),
# then a printed "what you should see". Sets up .venv/axolotl-0.19 (Python 3.11), builds the tiny
# models offline and warms them up with a few SFT steps (so their answers are readable), trains
# 6 iterations of χ² SPIN (`rl: spin_chi2`) on a 64-conversation chat set, then 20 data-free
# Language Self-Play steps on the arithmetic toy task. About 6-9 minutes on 2 CPU cores.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"   # the example configs' relative paths resolve against the repository root
venv="$(bash scripts/setup_env.sh "${AXOLOTL_VERSION:-0.19}" | tail -n 1)"
export PATH="$venv/bin:$PATH" AXOLOTL_DO_NOT_TRACK=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

echo "=== self-play fine-tuning (rl: spin_chi2) on the tiny chat set, from a 100-step SFT warm-up"
axolotl-selfplay tiny-model outputs/tiny-model --data example_configs/data/tiny_chat.jsonl --sft-steps 100
rm -rf outputs/tiny-spin outputs/tiny-spin-prepared
axolotl-selfplay check example_configs/tiny-spin-cpu.yml   # the config and every data row, no model loaded
axolotl train example_configs/tiny-spin-cpu.yml
echo "trained model: outputs/tiny-spin/model.safetensors; opponents: outputs/tiny-spin/selfplay/; TensorBoard: outputs/tiny-spin/runs"

echo "=== rl: lsp (no data; the tiny model is first warmed up on both roles of the arithmetic task)"
axolotl-selfplay tiny-model outputs/tiny-arithmetic --data example_configs/data/arithmetic_sft.jsonl --sft-steps 300
rm -rf outputs/tiny-lsp
axolotl train example_configs/tiny-lsp-cpu.yml
echo "trained model: outputs/tiny-lsp/model.safetensors; samples: outputs/tiny-lsp/selfplay/lsp_samples.jsonl; TensorBoard: outputs/tiny-lsp/runs"

# What self-play did, read from the runs' outputs (scripts/demo_summary.py).
python scripts/demo_summary.py spin outputs/tiny-spin --start outputs/tiny-model
python scripts/demo_summary.py lsp outputs/tiny-lsp --start outputs/tiny-arithmetic \
  --sft-data example_configs/data/arithmetic_sft.jsonl
