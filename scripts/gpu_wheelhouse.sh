#!/usr/bin/env bash
# Build the GPU proof kit's wheelhouse (on a machine with a package registry; the GPU machine has none).
#   bash scripts/gpu_wheelhouse.sh [DIR]      default DIR: gpu_wheelhouse/ (git-ignored, carried to the GPU)
# The GPU image (scripts/gpu_image_requirements.txt: its published list) has torch, transformers,
# accelerate, peft and ~190 more, but not Axolotl, TRL, datasets or pydantic. These are the wheels,
# installed there with --no-deps, that an `rl: spin` (and `rl: dpo`) run through `axolotl train`
# really imports, found by running it in a venv holding exactly the image's list
# (scripts/gpu_rehearsal.sh) until no import failed. Every wheel must suit the image's Python 3.12
# on manylinux x86-64 (checked below, whatever machine builds it). Must stay <= 60 MiB.
# Re-running is cheap: an existing wheelhouse with the same list is kept.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
dest="${1:-$repo/gpu_wheelhouse}"

wheels=(
  # what the kit is about
  axolotl==0.21.0 trl==1.14.1 datasets==5.0.1
  axolotl-contribs-lgpl==0.0.7 axolotl-contribs-mit==0.0.6  # axolotl.train imports axolotl.contribs (sdists: built here)
  # Axolotl's config schema and axolotl_selfplay/config.py; not in the image (pydantic-core is compiled)
  pydantic==2.13.5 pydantic-core==2.46.5 annotated-types==0.8.0 typing-inspection==0.4.5
  # datasets' import-time dependencies (pandas is imported by datasets.arrow_dataset at import). pandas,
  # xxhash, dateutil, six, requests, urllib3, charset-normalizer, colorama and pillow are in the image
  # too, at versions not published: carried, so the machine runs the versions the rehearsal ran
  dill==0.4.1 multiprocess==0.70.19 xxhash==4.1.0 pandas==3.1.1
  python-dateutil==4.0.0 six==1.17.0 pytz==2026.6 tzdata==2026.6  # pandas' own
  requests==2.34.2 urllib3==2.8.0 charset-normalizer==3.5.3       # datasets.utils.file_utils; the image's hub uses httpx
  # Axolotl's import-time dependencies on the `axolotl train` path
  colorama==0.4.6 fire==0.7.1 termcolor==3.3.0 addict==2.4.0 python-dotenv==1.0.1
  posthog==6.7.11 backoff==2.2.1 distro==1.9.0   # axolotl.telemetry imports it; AXOLOTL_DO_NOT_TRACK=1: nothing is sent
  pillow==13.0.0      # axolotl.utils.schemas.multimodal (config schema) imports PIL
  fastcore==2.2.41    # axolotl.utils.model_shard_quant
  evaluate==0.4.1     # axolotl.utils.callbacks
)
# Imported at import time but never called by a single-GPU, unquantised bf16 SPIN run, and not in
# the image or too big to carry (limit 60 MiB), so satisfied by stand-in modules (the
# `selfplay-gpu-stubs` wheel built below) whose every attribute is a class that raises when used:
#   numba        (in the image, at a version not published, and unused: the stand-in, first on the
#                path, keeps its numpy-version checks out of the run) axolotl.utils.samplers.multipack
#                                     decorates with @numba.njit at import; sample packing is off, and
#                                     the stand-in's njit returns the function unchanged.
#   bitsandbytes (43 MB, CUDA kernels) axolotl.loaders.adapter imports it for 4/8-bit (Q)LoRA; the
#                                     kit's LoRA is unquantised and only isinstance-checks its classes.
#   wandb        (~20 MB)             axolotl.utils.callbacks imports it; no wandb_project is set. The
#                                     stand-in has no `run`, so Transformers reports wandb unavailable.
# The stand-ins ship no dist-info under those names, so importlib.metadata (Transformers', PEFT's and
# Accelerate's availability checks) still sees the packages as not installed.
stubs=(numba bitsandbytes bitsandbytes.nn bitsandbytes.nn.parametrize bitsandbytes.functional
       bitsandbytes.optim bitsandbytes.optim.optimizer wandb)

want="$(printf '%s\n' "${wheels[@]}" "${stubs[@]}" | sha256sum | cut -d' ' -f1) $(sha256sum "$0" | cut -d' ' -f1)"
if [ -f "$dest/.stamp" ] && [ "$(cat "$dest/.stamp")" = "$want" ]; then
  echo "$dest"; exit 0
fi

find_python() {  # the image's Python is 3.12: build (and pick binary wheels) for 3.12
  local candidate
  for candidate in "${GPU_WHEELHOUSE_PYTHON:-}" "$(pyenv root 2>/dev/null)"/versions/3.12*/bin/python3.12 python3.12; do
    if [ -n "$candidate" ] && "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1; then
      echo "$candidate"; return 0
    fi
  done
  echo "Python 3.12 not found (the GPU image's version); set GPU_WHEELHOUSE_PYTHON" >&2; return 1
}
python="$(find_python)"
rm -rf "$dest"; mkdir -p "$dest"
echo "building the wheelhouse in $dest ..." >&2
# binary wheels for the image's platform whatever this machine is; the few sdists (Axolotl's contribs)
# are pure Python, built here
sdists=(); binaries=()
for wheel in "${wheels[@]}"; do
  case "$wheel" in axolotl-contribs-*) sdists+=("$wheel");; *) binaries+=("$wheel");; esac
done
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_5_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$tag")
done
# several at a time: pip asks the index one package at a time, and each answer takes a while
printf '%s\n' "${binaries[@]}" | xargs -P 8 -n 4 "$python" -m pip download -q --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp "${platforms[@]}" -d "$dest" 2> >(grep -v "WARNING: Location" >&2) &
"$python" -m pip wheel -q --no-deps -w "$dest" "${sdists[@]}" 2> >(grep -v "WARNING: Location" >&2)
wait $! || { echo "downloading the wheels failed" >&2; exit 1; }
# every wheel must install on the image: Python 3.12 (CPython), manylinux x86-64 or pure Python
for whl in "$dest"/*.whl; do
  tags="$(basename "$whl" .whl | rev | cut -d- -f1-3 | rev)"
  [[ "$tags" =~ ^(py3|py2\.py3|py312|cp312|cp3[0-9]+)-(none|abi3|cp312)-(any|.*manylinux[^-]*x86_64.*)$ ]] \
    || { echo "$(basename "$whl"): not for the image's Python 3.12 on x86-64 Linux" >&2; exit 1; }
done

"$python" - "$dest" "${stubs[@]}" <<'PY'
"""Write the stand-in modules as one small wheel (selfplay_gpu_stubs), installable with --no-deps."""
import base64, hashlib, sys, zipfile
from pathlib import Path

dest, modules = Path(sys.argv[1]), sys.argv[2:]
STUB = '''"""Stand-in from the axolotl-selfplay GPU proof kit (scripts/gpu_wheelhouse.sh): the real package
is not installed. Importing works; using anything raises."""


def __getattr__(name):
    if name.startswith("__") or name == "run":  # wandb: no `run` = not usable (Transformers checks it)
        raise AttributeError(name)

    def refuse(*args, **kwargs):
        raise RuntimeError(f"{__name__}.{name}: a stand-in from the axolotl-selfplay GPU kit; the real package is not installed")

    return type(name, (), {"__init__": refuse, "__call__": refuse, "__module__": __name__})
'''
NJIT = '''

def njit(*args, **kwargs):
    """Identity decorator: the decorated function runs as plain Python."""
    if len(args) == 1 and callable(args[0]) and not kwargs:
        return args[0]
    return lambda fn: fn


jit = njit
'''
packages = {m.rsplit(".", 1)[0] for m in modules if "." in m}
files = {}
for module in modules:
    path = module.replace(".", "/") + ("/__init__.py" if module in packages or "." not in module else ".py")
    body = STUB + (NJIT if module == "numba" else "")
    children = sorted(m.rsplit(".", 1)[1] for m in modules if "." in m and m.rsplit(".", 1)[0] == module)
    if children:
        body += f"\nfrom . import {', '.join(children)}  # noqa: E402\n"
    files[path] = body
info = "selfplay_gpu_stubs-0.1.0.dist-info"
files[f"{info}/METADATA"] = "Metadata-Version: 2.1\nName: selfplay-gpu-stubs\nVersion: 0.1.0\n"
files[f"{info}/WHEEL"] = "Wheel-Version: 1.0\nGenerator: gpu_wheelhouse.sh\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
record = []
for path, text in files.items():
    digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
    record.append(f"{path},sha256={digest},{len(text.encode())}")
record.append(f"{info}/RECORD,,")
files[f"{info}/RECORD"] = "\n".join(record) + "\n"
with zipfile.ZipFile(dest / "selfplay_gpu_stubs-0.1.0-py3-none-any.whl", "w", zipfile.ZIP_DEFLATED) as whl:
    for path, text in files.items():
        whl.writestr(path, text)
PY

size=$(du -sb "$dest" | cut -f1)
if [ "$size" -gt $((60 * 1024 * 1024)) ]; then
  echo "wheelhouse is $((size / 1024 / 1024)) MiB, over the 60 MiB limit" >&2; exit 1
fi
echo "$want" > "$dest/.stamp"
echo "wheelhouse: $(ls "$dest"/*.whl | wc -l) wheels, $((size / 1024)) KiB" >&2
echo "$dest"
