#!/usr/bin/env bash
# One command, fresh machine -> real `axolotl train` runs of self-play on tiny local models (CPU),
# then a printed "what you should see". Sets up .venv/axolotl-0.19 (Python 3.11), builds the tiny
# models offline and warms them up with a few SFT steps (so their answers are readable), trains
# 6 iterations of χ² SPIN (`rl: spin_chi2`) on a 64-conversation chat set, then data-free
# Language Self-Play steps on the arithmetic toy task. About 4-8 minutes on 2 CPU cores.
#
# The terminal shows one line per stage, a progress line every 20 s while a stage runs, and the
# summaries. Each stage's full output (Axolotl's config dump, library warnings, the trainer's
# progress bars) goes to a log file under outputs/demo-logs/ that the stage line names. When a
# stage fails, the demo prints the end of its log and the log's path, and exits non-zero.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"   # the example configs' relative paths resolve against the repository root
venv="$(bash scripts/setup_env.sh "${AXOLOTL_VERSION:-0.19}" | tail -n 1)"
export PATH="$venv/bin:$PATH" AXOLOTL_DO_NOT_TRACK=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
logs=outputs/demo-logs
rm -rf "$logs"
mkdir -p "$logs"
demo_start=$SECONDS

# The latest progress a stage's log shows: the warm-up's step, the trainer's step (its tqdm bar)
# and, for SPIN, the self-play iteration being generated or trained.
progress() {
  local log="$1" text=""
  local warm step iteration
  warm="$(grep -aoE 'warm-up step [0-9]+/[0-9]+, loss [0-9.]+' "$log" | tail -n 1 || true)"
  step="$(tr '\r' '\n' <"$log" | grep -aoE '^ *[0-9]+%\|[^|]*\| *[0-9]+/[0-9]+' | tail -n 1 | grep -oE '[0-9]+/[0-9]+$' || true)"
  iteration="$(grep -aoE 'self-play iteration [0-9]+' "$log" | tail -n 1 | grep -oE '[0-9]+$' || true)"
  [ -n "$warm" ] && text=", $warm"
  [ -n "$iteration" ] && text="$text, self-play iteration $iteration"
  [ -n "$step" ] && text="$text, training step $step"
  [ -z "$text" ] && text=", starting up (imports, model and data)"
  echo "$text"
}

stage_pid=""
# setsid (util-linux; macOS has none) gives a stage its own process group, so that an interrupted
# demo stops the stage's whole process tree (axolotl train starts accelerate, which starts Python).
if command -v setsid >/dev/null; then own_group=(setsid); else own_group=(); fi
trap 'if [ -n "$stage_pid" ]; then kill -TERM -- "-$stage_pid" 2>/dev/null || kill -TERM "$stage_pid" 2>/dev/null || true; fi' EXIT

# run_stage "what it does" LOG COMMAND...: COMMAND's whole output goes to LOG.
run_stage() {
  local label="$1" log="$logs/$2"; shift 2
  local start=$SECONDS next=$((SECONDS + 20)) rc=0
  echo "--- $label (log: $log)"
  ${own_group[@]+"${own_group[@]}"} "$@" >"$log" 2>&1 </dev/null &
  stage_pid=$!
  while kill -0 "$stage_pid" 2>/dev/null; do
    sleep 1
    if (( SECONDS >= next )) && kill -0 "$stage_pid" 2>/dev/null; then
      echo "    ... $((SECONDS - start)) s$(progress "$log")"
      next=$((SECONDS + 20))
    fi
  done
  wait "$stage_pid" || rc=$?
  stage_pid=""
  if (( rc != 0 )); then
    echo "FAILED after $((SECONDS - start)) s (exit $rc): $label. The last 60 lines of its log:" >&2
    tail -n 60 "$log" >&2
    echo "FAILED: $label; the whole log: $repo/$log" >&2
    exit "$rc"
  fi
  echo "    done in $((SECONDS - start)) s"
}

# The warm-ups run torch on one thread: measured on 2 shared cores, the 300-step warm-up took
# 24 s on torch's default 2 threads when nothing else ran but 410 s beside another busy process
# (its threads wait on each other), and 26-28 s on one thread either way.
warm_up_threads="${OMP_NUM_THREADS:-1}"

echo "=== 1. self-play fine-tuning (rl: spin_chi2) on the tiny chat set, from a 100-step SFT warm-up"
rm -rf outputs/tiny-spin outputs/tiny-spin-prepared
run_stage "build the tiny chat model and warm it up (100 SFT steps)" spin-1-warm-up.log \
  env OMP_NUM_THREADS="$warm_up_threads" axolotl-selfplay tiny-model outputs/tiny-model --data example_configs/data/tiny_chat.jsonl --sft-steps 100
# the config and every data row, no model loaded
run_stage "axolotl-selfplay check example_configs/tiny-spin-cpu.yml" spin-2-check.log \
  axolotl-selfplay check example_configs/tiny-spin-cpu.yml
sed -n '/^axolotl-selfplay check:/,$p' "$logs/spin-2-check.log" | sed 's/^/    /'   # its report
run_stage "axolotl train example_configs/tiny-spin-cpu.yml (6 iterations x 2 epochs x 8 steps)" spin-3-train.log \
  axolotl train example_configs/tiny-spin-cpu.yml
echo "trained model: outputs/tiny-spin/model.safetensors; opponents: outputs/tiny-spin/selfplay/; TensorBoard: outputs/tiny-spin/runs"

echo
echo "=== 2. rl: lsp (no data; the tiny model is first warmed up on both roles of the arithmetic task)"
rm -rf outputs/tiny-lsp
run_stage "build the tiny arithmetic model and warm it up (300 SFT steps)" lsp-1-warm-up.log \
  env OMP_NUM_THREADS="$warm_up_threads" axolotl-selfplay tiny-model outputs/tiny-arithmetic --data example_configs/data/arithmetic_sft.jsonl --sft-steps 300
run_stage "axolotl train example_configs/tiny-lsp-cpu.yml" lsp-2-train.log \
  axolotl train example_configs/tiny-lsp-cpu.yml
echo "trained model: outputs/tiny-lsp/model.safetensors; samples: outputs/tiny-lsp/selfplay/lsp_samples.jsonl; TensorBoard: outputs/tiny-lsp/runs"

# What self-play did, read from the runs' outputs (scripts/demo_summary.py); the two models of
# each run are measured first (about half a minute each). Their warnings go to a log.
summarize() {
  local log="$logs/summary.log" rc=0
  python scripts/demo_summary.py "$@" 2>>"$log" || rc=$?
  if (( rc != 0 )); then
    echo "FAILED (exit $rc): scripts/demo_summary.py $*. The last 60 lines of its log:" >&2
    tail -n 60 "$log" >&2
    echo "FAILED: the summary; the whole log: $repo/$log" >&2
    exit "$rc"
  fi
}
echo
echo "--- measuring the start and trained models (warnings: $logs/summary.log)"
summarize spin outputs/tiny-spin --start outputs/tiny-model
summarize lsp outputs/tiny-lsp --start outputs/tiny-arithmetic --sft-data example_configs/data/arithmetic_sft.jsonl
echo
echo "demo finished in $((SECONDS - demo_start)) s; every stage's full output: $logs/"
