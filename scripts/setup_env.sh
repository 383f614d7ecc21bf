#!/usr/bin/env bash
# Create (or reuse) a virtualenv with Axolotl and axolotl-selfplay installed.
#   scripts/setup_env.sh 0.19   -> .venv/axolotl-0.19  (Python 3.11, torch 2.13.0 CPU, DeepSpeed)
#   scripts/setup_env.sh 0.21   -> .venv/axolotl-0.21  (Python 3.12; pip pulls Axolotl's CUDA torch build, ~4 GB)
# Prints the venv path on the last line. Re-running is cheap: the install is skipped
# while pyproject.toml is unchanged.
set -euo pipefail
version="${1:?usage: setup_env.sh 0.19|0.21}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
venv="$repo/.venv/axolotl-$version"

find_python() {
  # A pyenv shim answers `command -v` but fails when that version is not selected,
  # so try pyenv's own installs first and keep the first interpreter that runs.
  local want="$1" candidate
  for candidate in "$(pyenv root 2>/dev/null)"/versions/"$want"*/bin/python"$want" "python$want"; do
    if "$candidate" -c 'import sys' >/dev/null 2>&1; then command -v "$candidate"; return 0; fi
  done
  echo "Python $want not found (needed for Axolotl $version); install it, e.g. 'pyenv install $want'" >&2
  return 1
}

case "$version" in
  0.19) python="$(find_python 3.11)"; pins=("torch==2.13.0" "axolotl==0.19.*" "deepspeed>=0.18.6,<0.19") ;;
  0.21) python="$(find_python 3.12)"; pins=("axolotl==0.21.*" "deepspeed>=0.18.6,<0.20") ;;
  *) echo "unknown Axolotl version '$version' (use 0.19 or 0.21)" >&2; exit 2 ;;
esac

stamp="$venv/.selfplay-installed"
want="$(sha256sum "$repo/pyproject.toml" | cut -d' ' -f1) ${pins[*]}"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "$venv"; exit 0
fi
echo "setting up $venv (Axolotl $version) ..." >&2
"$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install --upgrade pip >&2 2> >(grep -v "WARNING: Location" >&2)
if [ "$version" = "0.19" ]; then
  # torch first, so Axolotl's torch requirement is met by the CPU build
  "${pip[@]}" install "torch==2.13.0" >&2 2> >(grep -v "WARNING: Location" >&2)
fi
# DeepSpeed (for the 2-process ZeRO tests) builds no CUDA ops with DS_BUILD_OPS=0.
DS_BUILD_OPS=0 "${pip[@]}" install "${pins[@]}" -e "$repo[test]" >&2 2> >(grep -v "WARNING: Location" >&2)
echo "$want" > "$stamp"
echo "$venv"
