#!/usr/bin/env bash
# The GPU proof kit: one command on the (offline) GPU machine, within 9 minutes on one H200 (~5 expected):
# install ≤ 60 s + imports ≤ 30 s + parts ≤ 420 s (backstop 450 s), leaving a 10-minute command a minute.
#   bash scripts/gpu_check.sh          GPU: a Qwen2.5-0.5B-shaped random model, bf16
#   bash scripts/gpu_check.sh --cpu    the CPU rehearsal (scripts/gpu_rehearsal.sh, CI): a tiny model, fp32
# 1. installs gpu_wheelhouse/ (scripts/gpu_wheelhouse.sh; carried with the tree) offline and --no-deps
#    into a --target folder on top of the image's Python, so the image's torch/transformers are the
#    ones used; this checkout is on PYTHONPATH (60 s at most);
# 2. the import check: pydantic, axolotl.cli.train, trl, datasets and the plugin must import in the
#    image's Python within 30 s, or the kit stops there with the report (no part would run anyway);
# 3. scripts/gpu_check.py: every part under its own limit, all of them within 420 s.
# Writes $OUT/gpu_report.md (markdown) and $OUT/gpu_logs.tar.gz (every step's full log); $OUT unset:
# gpu_report/. Exit status 0: every part passed. Environment: GPU_CHECK_PYTHON (default python3),
# GPU_WHEELHOUSE, GPU_CHECK_WORK, GPU_CHECK_INSTALL_LIMIT and GPU_CHECK_IMPORT_LIMIT (seconds, default
# 60 and 30: the image's packages are byte-compiled; the CPU rehearsal's first imports compile them).
set -uo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
cpu=0; [[ " $* " == *" --cpu "* ]] && cpu=1
python=""  # the image's Python: the first that imports torch and transformers
for candidate in "${GPU_CHECK_PYTHON:-}" python3 python; do
  if [ -n "$candidate" ] && "$candidate" -c 'import torch, transformers' >/dev/null 2>&1; then python="$candidate"; break; fi
done
wheelhouse="${GPU_WHEELHOUSE:-$repo/gpu_wheelhouse}"
out="${OUT:-$repo/gpu_report}"
work="${GPU_CHECK_WORK:-$repo/outputs/gpu-check}"
site="$work/site"
logs="$work/logs"
rm -rf "$logs"; mkdir -p "$out" "$logs"
pack_logs() { tar -czf "$out/gpu_logs.tar.gz" -C "$work" logs 2>/dev/null; }
fail() {  # the report is written even when the kit cannot start
  printf '## GPU proof kit report\n\n**FAIL** before any part ran: %s\n\n```\n%s\n```\n\n%s\n' "$1" \
    "$(tail -c 3000 "$2" 2>/dev/null)" "Full log: ${2#"$work"/} in gpu_logs.tar.gz." > "$out/gpu_report.md"
  pack_logs; cat "$out/gpu_report.md"; exit 1
}
{ date -u; nvidia-smi 2>&1 || echo "(no nvidia-smi)"; echo "python: $python"; } > "$logs/machine.log" 2>&1
[ -n "$python" ] || fail "no Python with torch and transformers found (set GPU_CHECK_PYTHON)" "$logs/machine.log"
ls "$wheelhouse"/*.whl >/dev/null 2>&1 || fail "no wheels in $wheelhouse (build them with scripts/gpu_wheelhouse.sh and carry the folder)" /dev/null

echo "=== installing $(ls "$wheelhouse"/*.whl | wc -l) wheels offline into $site" >&2
rm -rf "$site"
install_limit="${GPU_CHECK_INSTALL_LIMIT:-60}"
if ! timeout "$install_limit" "$python" -m pip install --no-index --no-deps --disable-pip-version-check -q --target "$site" \
     "$wheelhouse"/*.whl > "$logs/install.log" 2>&1; then
  # no pip in the image: a wheel is a zip, so unpacking it installs it (without console scripts:
  # gpu_check.py then runs `python -m axolotl.cli.main`)
  echo "pip install failed or ran past ${install_limit} s; unpacking the wheels instead" \
    | tee -a "$logs/install.log" >&2
  rm -rf "$site"
  timeout "$install_limit" "$python" -c 'import sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in sys.argv[2:]]' \
    "$site" "$wheelhouse"/*.whl >> "$logs/install.log" 2>&1 || fail "could not install the wheelhouse" "$logs/install.log"
fi
export PYTHONPATH="$site:$repo${PYTHONPATH:+:$PYTHONPATH}"
export PATH="$site/bin:$(dirname "$(command -v "$python")"):$PATH"
export AXOLOTL_DO_NOT_TRACK=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

echo "=== import check" >&2
imports='import pydantic, axolotl.cli.train, trl, datasets, axolotl_selfplay.plugin'
limit="${GPU_CHECK_IMPORT_LIMIT:-30}"
timeout "$limit" "$python" -c "$imports" > "$logs/import.log" 2>&1
rc=$?
if [ "$rc" != 0 ]; then
  [ "$rc" = 124 ] && echo "(import check: over its ${limit} s limit)" >> "$logs/import.log"
  fail "the import check failed (exit $rc): \`$imports\` (limit ${limit} s)" "$logs/import.log"
fi
echo "imports OK: $imports" >> "$logs/import.log"

# the driver's own limits end it within 420 s (the rehearsal's: 1500); this one is the backstop
backstop=450; [ "$cpu" = 1 ] && backstop=1560
timeout "$backstop" "$python" scripts/gpu_check.py --out "$out" --work "$work" "$@" 2>&1 | tee "$logs/driver.log"
status=${PIPESTATUS[0]}
[ "$status" = 124 ] && echo "**FAIL**: the kit ran past its ${backstop} s backstop; the parts above finished." \
  >> "$out/gpu_report.md"
# the driver packs after each part; once more with its own log and the report's inputs
(cd "$work" && tar -czf "$out/gpu_logs.tar.gz" logs $(ls ./*.yml ./*.json ./*.md 2>/dev/null))
exit "$status"
