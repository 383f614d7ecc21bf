#!/usr/bin/env bash
# The benchmarks, side by side on this machine (CPU). Each writes its tables into one results file
# (default outputs/bench/RESULTS.md; benchmarks/RESULTS.md holds the published ones and the prose).
#   bash scripts/bench.sh                    speed and memory: generation throughput, SPIN step vs TRL DPO and
#                                            one whole iteration vs the official pipeline, logits memory with a
#                                            131072-token vocabulary, host memory of the opponent store and θ_0 (~25 min)
#   bash scripts/bench.sh --all              also the studies: spin vs spin_chi2 stability, LSP on arithmetic,
#                                            weak-to-strong (self-play vs continued SFT) (~2 h)
#   RESULTS=benchmarks/RESULTS.md bash scripts/bench.sh    update the published tables in place
# Sets up .venv/axolotl-0.19 like the demo. Outputs go to outputs/bench/. No test asserts a time.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
venv="$(bash scripts/setup_env.sh "${AXOLOTL_VERSION:-0.19}" | tail -n 1)"
export PATH="$venv/bin:$PATH" AXOLOTL_DO_NOT_TRACK=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
results="${RESULTS:-outputs/bench/RESULTS.md}"

echo "=== opponent generation throughput"
python benchmarks/generation_throughput.py --results "$results"
echo "=== SPIN vs TRL DPOTrainer: one step, one whole iteration"
python benchmarks/step_vs_dpo.py --results "$results"
echo "=== peak memory where the logits dominate (131072-token vocabulary): spin vs dpo"
python benchmarks/logits_memory.py --results "$results"
echo "=== host memory: the opponent store of 50k prompts and θ_0 on an 8-rank node"
python benchmarks/host_memory.py --results "$results"
if [[ "${1:-}" == "--all" ]]; then
  echo "=== spin vs spin_chi2 stability"
  python benchmarks/stability.py --results "$results"
  echo "=== LSP on the arithmetic toy task"
  OMP_NUM_THREADS=1 python benchmarks/lsp_arithmetic.py --workdir outputs/bench/lsp_arithmetic --results "$results"
  echo "=== weak-to-strong: spin / spin_chi2 vs continued SFT, weak and plateau SFT starts"
  OMP_NUM_THREADS=1 python benchmarks/weak_to_strong.py --workdir outputs/bench/weak_to_strong --sft-steps 2400 --jobs 2 --results "$results"
fi
echo "tables written to $results"
