#!/usr/bin/env bash
# CPU rehearsal of the GPU proof kit (CI runs it): if this passes, `bash scripts/gpu_check.sh` on the
# GPU machine very likely works the first time.
#   1. a Python 3.12 venv holding exactly the GPU image's packages: scripts/gpu_image_requirements.txt
#      (its published list, 197 packages, torch 2.11.0 with its CUDA 13 libraries included: it runs on
#      CPU), installed --no-deps so nothing is added on its own (by uv, fetched into
#      .venv/gpu-image-uv; pip if uv cannot be had). Cached in .venv/gpu-image, rebuilt only when
#      that file changes (~2 min with uv: it downloads 3.3 GB);
#   2. the audit: this venv must hold exactly that list (`gpu_check.py --audit-env`), or the rehearsal
#      fails: a package that pip (or anyone) added would hide a wheel the machine lacks;
#   3. the wheelhouse (scripts/gpu_wheelhouse.sh), installed by the kit exactly as on the GPU machine;
#   4. `scripts/gpu_check.sh --cpu`: the install, the import check, the same parts on a tiny model in
#      fp32; then the audit of the kit's install: exactly the wheelhouse's wheels.
# Report and logs: outputs/gpu-rehearsal/ (gpu_report.md, gpu_logs.tar.gz).
# GPU_REHEARSAL_PARTS=lora,full,... runs a subset of the kit's parts (CI: the SPIN runs, the scoring;
# the two timing comparisons, generation and dpo, only cost CPU time here).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
unset PYTHONPATH PYTHONHOME PYTHONUSERBASE  # nothing of this machine's Pythons may leak in
export PYTHONNOUSERSITE=1
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
  echo "=== creating $venv: exactly the GPU image's packages ..." >&2
  rm -rf "$venv"
  "$python" -m venv "$venv"
  # uv installs the 197 pinned wheels in ~2 min where pip takes ~10 (it fetches and unpacks them in
  # parallel); pip is the fallback. Both --no-deps: nothing beyond the list (the audit below checks).
  uv="$repo/.venv/gpu-image-uv/bin/uv"
  [ -x "$uv" ] || "$python" -m pip install -q --no-deps --only-binary=:all: --target "$repo/.venv/gpu-image-uv" \
    uv==0.13.9 2> >(grep -v "WARNING: Location" >&2) || true
  if [ -x "$uv" ]; then
    # its cache beside the venv, hard-linked into it, then dropped: nothing of ~7 GB kept twice
    UV_CACHE_DIR="$venv/.uv-cache" "$uv" pip install -q --python "$venv/bin/python" --no-deps --only-binary :all: \
      -r "$requirements"
    rm -rf "$venv/.uv-cache"
  else
    wheels="$venv/.wheels"
    mkdir -p "$wheels"
    grep -o '^[A-Za-z0-9._-]*==[^ #]*' "$requirements" \
      | xargs -P 8 -n 25 "$venv/bin/python" -m pip download -q --no-deps --only-binary=:all: -d "$wheels" \
        2> >(grep -v "WARNING: Location" >&2)
    "$venv/bin/python" -m pip install -q --no-deps --no-index --no-compile "$wheels"/*.whl \
      2> >(grep -v "WARNING: Location" >&2)
    rm -rf "$wheels"
  fi
  echo "$want" > "$stamp"
fi
"$venv/bin/python" scripts/gpu_check.py --audit-env "$requirements"
echo "=== image: $("$venv/bin/python" -c 'import sys, torch, transformers; print("Python", sys.version.split()[0], "torch", torch.__version__, "transformers", transformers.__version__)')"

wheelhouse="$(bash scripts/gpu_wheelhouse.sh | tail -n 1)"
rm -rf outputs/gpu-rehearsal
status=0
OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" GPU_CHECK_PYTHON="$venv/bin/python" GPU_WHEELHOUSE="$wheelhouse" \
  GPU_CHECK_WORK="$repo/outputs/gpu-rehearsal/work" OUT="$repo/outputs/gpu-rehearsal" \
  GPU_CHECK_INSTALL_LIMIT=300 GPU_CHECK_IMPORT_LIMIT=300 \
  bash scripts/gpu_check.sh --cpu ${GPU_REHEARSAL_PARTS:+--parts "$GPU_REHEARSAL_PARTS"} || status=$?
"$venv/bin/python" scripts/gpu_check.py --audit-env "$requirements" --wheelhouse "$wheelhouse" \
  --site outputs/gpu-rehearsal/work/site || status=1
exit "$status"
