#!/usr/bin/env bash
# The GPU proof kit: one command on the (offline) GPU machine, under 8 minutes on one H200.
#   bash scripts/gpu_check.sh          GPU: a Qwen2.5-0.5B-shaped random model, bf16
#   bash scripts/gpu_check.sh --cpu    the CPU rehearsal (scripts/gpu_rehearsal.sh, CI): a tiny model, fp32
# Installs gpu_wheelhouse/ (scripts/gpu_wheelhouse.sh; carried with the tree) offline and --no-deps
# into a --target folder on top of the image's Python, so the image's torch/transformers are the
# ones used; this checkout is on PYTHONPATH. Then runs scripts/gpu_check.py, which writes ONE
# markdown report: $OUT/gpu_report.md ($OUT unset: gpu_report/gpu_report.md). Exit status 0: every
# part passed. Environment: GPU_CHECK_PYTHON (default python3), GPU_WHEELHOUSE, GPU_CHECK_WORK.
set -uo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
python=""  # the image's Python: the first that imports torch and transformers
for candidate in "${GPU_CHECK_PYTHON:-}" python3 python; do
  if [ -n "$candidate" ] && "$candidate" -c 'import torch, transformers' >/dev/null 2>&1; then python="$candidate"; break; fi
done
wheelhouse="${GPU_WHEELHOUSE:-$repo/gpu_wheelhouse}"
out="${OUT:-$repo/gpu_report}"
work="${GPU_CHECK_WORK:-$repo/outputs/gpu-check}"
site="$work/site"
mkdir -p "$out" "$work"
fail() {  # the report is written even when the kit cannot start
  printf '## GPU proof kit report\n\n**FAIL** before any part ran: %s\n\n```\n%s\n```\n' "$1" "$(tail -c 3000 "$2" 2>/dev/null)" \
    > "$out/gpu_report.md"
  cat "$out/gpu_report.md"; exit 1
}
[ -n "$python" ] || fail "no Python with torch and transformers found (set GPU_CHECK_PYTHON)" /dev/null
ls "$wheelhouse"/*.whl >/dev/null 2>&1 || fail "no wheels in $wheelhouse (build them with scripts/gpu_wheelhouse.sh and carry the folder)" /dev/null

echo "=== installing $(ls "$wheelhouse"/*.whl | wc -l) wheels offline into $site" >&2
rm -rf "$site"
if ! "$python" -m pip install --no-index --no-deps --disable-pip-version-check -q --target "$site" \
     "$wheelhouse"/*.whl > "$work/install.log" 2>&1; then
  # no pip in the image: a wheel is a zip, so unpacking it installs it (without console scripts:
  # gpu_check.py then runs `python -m axolotl.cli.main`)
  echo "pip install failed (see $work/install.log); unpacking the wheels instead" >&2
  rm -rf "$site"
  "$python" -c 'import sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in sys.argv[2:]]' \
    "$site" "$wheelhouse"/*.whl >> "$work/install.log" 2>&1 || fail "could not install the wheelhouse" "$work/install.log"
fi
export PYTHONPATH="$site:$repo${PYTHONPATH:+:$PYTHONPATH}"
export PATH="$site/bin:$(dirname "$(command -v "$python")"):$PATH"
export AXOLOTL_DO_NOT_TRACK=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# 470 s in all on the GPU (each part also has its own limit inside); the rehearsal gets more
limit=470; [[ " $* " == *" --cpu "* ]] && limit=1500
timeout "$limit" "$python" scripts/gpu_check.py --out "$out" --work "$work" "$@"
status=$?
[ "$status" = 124 ] && echo "**FAIL**: the kit ran past its ${limit} s limit; the parts above finished." >> "$out/gpu_report.md"
exit "$status"
