#!/usr/bin/env bash
# CPU rehearsal of the GPU proof kit (CI runs it): if this passes, `bash scripts/gpu_check.sh` on the
# GPU machine very likely works the first time.
#   1. a Python 3.12 venv that mimics the GPU image: scripts/gpu_image_requirements.txt, torch 2.11.0
#      included (pip's default Linux build, CUDA 13; it runs on CPU). Cached in .venv/gpu-image; rebuilt
#      only when that file changes (first build ~3.5 min: it downloads ~4 GB);
#   2. the wheelhouse (scripts/gpu_wheelhouse.sh), installed exactly as on the GPU machine;
#   3. `scripts/gpu_check.sh --cpu`: the same parts on a tiny model in fp32. Report: outputs/gpu-rehearsal/.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
venv="$repo/.venv/gpu-image"
requirements="$repo/scripts/gpu_image_requirements.txt"

python=""
for candidate in "$(pyenv root 2>/dev/null)"/versions/3.12*/bin/python3.12 python3.12; do
  if "$candidate" -c 'import sys' >/dev/null 2>&1; then python="$(command -v "$candidate")"; break; fi
done
[ -n "$python" ] || { echo "Python 3.12 not found (the GPU image's version); install it, e.g. 'pyenv install 3.12'" >&2; exit 1; }

stamp="$venv/.gpu-image-installed"
want="$(sha256sum "$requirements" | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "=== creating $venv (mimics the GPU image) ..." >&2
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q -r "$requirements" 2> >(grep -v "WARNING: Location" >&2)
  echo "$want" > "$stamp"
fi
echo "=== image mimic: $("$venv/bin/python" -c 'import sys, torch, transformers; print("Python", sys.version.split()[0], "torch", torch.__version__, "transformers", transformers.__version__)')"

wheelhouse="$(bash scripts/gpu_wheelhouse.sh | tail -n 1)"
rm -rf outputs/gpu-rehearsal
OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" GPU_CHECK_PYTHON="$venv/bin/python" GPU_WHEELHOUSE="$wheelhouse" \
  GPU_CHECK_WORK="$repo/outputs/gpu-rehearsal/work" OUT="$repo/outputs/gpu-rehearsal" \
  bash scripts/gpu_check.sh --cpu
