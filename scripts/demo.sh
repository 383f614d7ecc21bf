#!/usr/bin/env bash
# One command, fresh machine -> real `axolotl train` runs with `rl: spin` and `rl: lsp` on tiny
# local models (CPU). Sets up .venv/axolotl-0.19 (Python 3.11), builds the tiny models offline,
# trains 2 SPIN iterations, then 20 data-free Language Self-Play steps on the arithmetic toy task.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
venv="$(bash scripts/setup_env.sh "${AXOLOTL_VERSION:-0.19}" | tail -n 1)"
export PATH="$venv/bin:$PATH" AXOLOTL_DO_NOT_TRACK=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

axolotl-selfplay tiny-model outputs/tiny-model --data example_configs/data/tiny_chat.jsonl
rm -rf outputs/tiny-spin outputs/tiny-spin-prepared
axolotl-selfplay check example_configs/tiny-spin-cpu.yml   # the config and every data row, no model loaded
axolotl train example_configs/tiny-spin-cpu.yml

python - <<'PY'
import json, pathlib
out = pathlib.Path("outputs/tiny-spin")
for path in sorted((out / "selfplay").glob("iter_*.jsonl")):
    rows = [json.loads(line) for line in path.open()]
    print(f"{path}: {len(rows)} pairs; first generated opponent: {rows[0]['generated'][:60]!r}")
print(f"trained model: {out}/model.safetensors; TensorBoard logs: {out}/runs")
PY

echo "=== rl: lsp (no data; the tiny model is first warmed up on both roles of the arithmetic task)"
axolotl-selfplay tiny-model outputs/tiny-arithmetic --data example_configs/data/arithmetic_sft.jsonl --sft-steps 300
rm -rf outputs/tiny-lsp
axolotl train example_configs/tiny-lsp-cpu.yml

python - <<'PY'
import json, pathlib
out = pathlib.Path("outputs/tiny-lsp")
rows = [json.loads(line) for line in (out / "selfplay" / "lsp_samples.jsonl").open()]
last = [r for r in rows if r["step"] == rows[-1]["step"]]
print(f"{out}/selfplay/lsp_samples.jsonl: {len(rows)} sampled queries; last step:")
for r in last[:4]:
    answers = ", ".join(f"{a['answer']!r} ({a['reward']:g})" for a in r["answers"]) or "degenerate query"
    print(f"  challenger: {r['query']!r:24} solver (reward): {answers}")
print(f"trained model: {out}/model.safetensors; TensorBoard logs: {out}/runs")
PY
