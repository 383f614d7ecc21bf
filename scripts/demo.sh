#!/usr/bin/env bash
# One command, fresh machine -> a real `axolotl train` with `rl: spin` on a tiny local model (CPU).
# Sets up .venv/axolotl-0.19 (Python 3.11), builds the tiny model offline, trains 2 SPIN iterations.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
venv="$(bash scripts/setup_env.sh "${AXOLOTL_VERSION:-0.19}" | tail -n 1)"
export PATH="$venv/bin:$PATH" AXOLOTL_DO_NOT_TRACK=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

axolotl-selfplay tiny-model outputs/tiny-model --data example_configs/data/tiny_chat.jsonl
rm -rf outputs/tiny-spin outputs/tiny-spin-prepared
axolotl train example_configs/tiny-spin-cpu.yml

python - <<'PY'
import json, pathlib
out = pathlib.Path("outputs/tiny-spin")
for path in sorted((out / "selfplay").glob("iter_*.jsonl")):
    rows = [json.loads(line) for line in path.open()]
    print(f"{path}: {len(rows)} pairs; first generated opponent: {rows[0]['generated'][:60]!r}")
print(f"trained model: {out}/model.safetensors; TensorBoard logs: {out}/runs")
PY
