#!/usr/bin/env bash
# The benchmarks, side by side on this machine (CPU): prints the tables recorded in benchmarks/RESULTS.md.
#   bash scripts/bench.sh          speed and memory: generation throughput, SPIN step vs TRL DPO,
#                                  one whole iteration vs the official pipeline (~6 min)
#   bash scripts/bench.sh --all    also the studies: spin vs spin_chi2 stability, LSP on arithmetic,
#                                  weak-to-strong (self-play vs continued SFT) (~2 h)
# Sets up .venv/axolotl-0.19 like the demo. Outputs go to outputs/bench/. No test asserts a time.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
venv="$(bash scripts/setup_env.sh "${AXOLOTL_VERSION:-0.19}" | tail -n 1)"
export PATH="$venv/bin:$PATH" AXOLOTL_DO_NOT_TRACK=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

echo "=== opponent generation throughput"
python benchmarks/generation_throughput.py --workdir outputs/bench/generation
echo "=== SPIN vs TRL DPOTrainer: one step, one whole iteration"
python benchmarks/step_vs_dpo.py --workdir outputs/bench/step_vs_dpo
if [[ "${1:-}" == "--all" ]]; then
  echo "=== spin vs spin_chi2 stability"
  python benchmarks/stability.py --workdir outputs/bench/stability
  echo "=== LSP on the arithmetic toy task"
  OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/lsp_arithmetic.py --workdir outputs/bench/lsp_arithmetic
  echo "=== weak-to-strong: spin / spin_chi2 vs continued SFT, weak and plateau SFT starts"
  OMP_NUM_THREADS=1 python benchmarks/weak_to_strong.py --workdir outputs/bench/weak_to_strong --sft-steps 2400 --jobs 2
fi
