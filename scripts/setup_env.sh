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
# Each step says what it does and roughly how long it takes on a fresh machine, then prints a
# heartbeat every 30 s while pip works (pip itself stays quiet: its full output goes to
# $venv/setup.log), and how long it took.
step() {
  local message="$1"; shift
  local start=$SECONDS
  echo "  $message" >&2
  "$@" >>"$log" 2>&1 &
  local pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    sleep 5
    if kill -0 "$pid" 2>/dev/null && (( (SECONDS - start) % 30 < 5 )); then
      echo "    ... still working ($((SECONDS - start)) s; details: $log)" >&2
    fi
  done
  if ! wait "$pid"; then
    echo "  FAILED after $((SECONDS - start)) s; the end of $log:" >&2
    tail -n 30 "$log" >&2
    exit 1
  fi
  echo "    done in $((SECONDS - start)) s" >&2
}

echo "setting up $venv (Axolotl $version, $("$python" --version 2>&1)):" >&2
"$python" -m venv "$venv"
log="$venv/setup.log"
: >"$log"
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
step "upgrading pip (~10 s)" "${pip[@]}" install --upgrade pip
if [ "$version" = "0.19" ]; then
  # torch first, so Axolotl's torch requirement is met by the CPU build
  step "installing torch 2.13.0 CPU (~1 min; a local file on the project's machines)" "${pip[@]}" install "torch==2.13.0"
  estimate="~5 min on a fresh machine"
else
  estimate="~8 min on a fresh machine: Axolotl's CUDA torch build is ~4 GB"
fi
# DeepSpeed (for the 2-process ZeRO tests) builds no CUDA ops with DS_BUILD_OPS=0.
step "installing ${pins[*]} and axolotl-selfplay (editable, with test extras) ($estimate)" \
  env DS_BUILD_OPS=0 "${pip[@]}" install "${pins[@]}" -e "$repo[test]"
echo "$want" > "$stamp"
echo "$venv"
