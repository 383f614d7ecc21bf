#!/usr/bin/env bash
# One command, fresh machine -> the whole test suite on Axolotl 0.19 (Python 3.11) and 0.21 (Python 3.12).
#   scripts/test.sh            both versions
#   scripts/test.sh 0.19       one version; extra arguments go to pytest (e.g. -k resume, -n 0)
# Two pytest workers (pytest-xdist), each taking whole test files: most tests wait on
# `axolotl train` subprocesses whose start-up is single-threaded, so two at a time use both
# cores of a small CI machine. SELFPLAY_TEST_WORKERS=0 runs them one by one.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
versions=("0.19" "0.21")
if [ $# -gt 0 ] && [[ "$1" =~ ^0\.[0-9]+$ ]]; then versions=("$1"); shift; fi
export AXOLOTL_DO_NOT_TRACK=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

status=0
for version in "${versions[@]}"; do
  venv="$(bash scripts/setup_env.sh "$version" | tail -n 1)"
  echo "=== Axolotl $version: $("$venv/bin/python" -c 'import axolotl, sys; print(axolotl.__version__, "on Python", sys.version.split()[0])')"
  PATH="$venv/bin:$PATH" "$venv/bin/python" -m pytest -q -p no:cacheprovider \
    -n "${SELFPLAY_TEST_WORKERS:-2}" --dist loadfile "$@" || status=$?
done
exit $status
