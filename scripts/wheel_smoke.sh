#!/usr/bin/env bash
# The package as a user installs it: build the sdist and the wheel, check what they contain,
# install the wheel (NOT editable) into a copy of the Axolotl 0.19 venv without the editable install,
# and run one real `axolotl train` with `rl: spin` from a folder outside the repository, so only the
# installed package can be imported.
#   bash scripts/wheel_smoke.sh        (CI runs it; ~2 min)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
export AXOLOTL_DO_NOT_TRACK=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

builder="$(bash scripts/setup_env.sh 0.19 | tail -n 1)"
dist="$repo/outputs/wheel-smoke/dist"
rm -rf "$dist" && mkdir -p "$dist"
echo "=== building the sdist and the wheel"
"$builder/bin/python" -m pip --disable-pip-version-check -q install build
"$builder/bin/python" -m build --outdir "$dist" "$repo" >"$dist/build.log" 2>&1 || { tail -n 30 "$dist/build.log"; exit 1; }
if grep -E "[A-Za-z]+Warning|deprecated" "$dist/build.log"; then
  echo "the build printed deprecation warnings (above): fix them in pyproject.toml" >&2
  exit 1
fi

echo "=== checking their contents"
"$builder/bin/python" - "$dist" "$repo" <<'PY'
import sys, tarfile, zipfile
from pathlib import Path

dist, repo = Path(sys.argv[1]), Path(sys.argv[2])
modules = sorted(str(p.relative_to(repo)) for p in (repo / "axolotl_selfplay").rglob("*.py"))
wheel = next(dist.glob("axolotl_selfplay-*.whl"))
sdist = next(dist.glob("axolotl_selfplay-*.tar.gz"))
names = set(zipfile.ZipFile(wheel).namelist())
missing = [m for m in modules if m not in names]
assert not missing, f"modules missing from {wheel.name}: {missing}"
info = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
entry_points = zipfile.ZipFile(wheel).read(info).decode()
assert "[axolotl.plugins]\nselfplay = axolotl_selfplay.plugin:SelfPlayPlugin" in entry_points, entry_points
assert "[console_scripts]\naxolotl-selfplay = axolotl_selfplay.cli:main" in entry_points, entry_points
metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
import axolotl_selfplay  # the builder venv's editable install: the version written in one place
assert f"\nVersion: {axolotl_selfplay.__version__}\n" in metadata
assert "License-Expression: Apache-2.0" in metadata and "Requires-Dist: axolotl<0.22,>=0.19" in metadata
assert any(n.endswith("licenses/LICENSE") for n in names), "LICENSE missing from the wheel"
sdist_names = {n.split("/", 1)[1] for n in tarfile.open(sdist).getnames() if "/" in n}
for needed in ["pyproject.toml", "README.md", "LICENSE", *modules]:
    assert needed in sdist_names, f"{needed} missing from {sdist.name}"
print(f"{wheel.name}: {len(modules)} modules, both entry points; {sdist.name} complete")
PY

venv="$repo/.venv/wheel-smoke"
echo "=== installing the wheel (not editable) into a copy of the Axolotl 0.19 venv without this repository ($venv)"
# A hard-linked copy of the builder venv takes seconds where a fresh Axolotl install takes minutes; pip
# replaces files (unlink, then a new file) and never edits one in place, so the builder venv is untouched.
rm -rf "$venv"
cp -al "$builder" "$venv"
rm -f "$venv/.selfplay-installed" "$venv/setup.log"
# Console scripts name their interpreter by absolute path: point them at the copy (sed -i writes a new
# file, so the builder's scripts keep theirs).
find "$venv/bin" -maxdepth 1 -type f -exec grep -lI "^#!$builder/bin/python" {} + \
  | xargs -r sed -i "1s|^#!$builder/bin/python|#!$venv/bin/python|"
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" uninstall -y axolotl-selfplay >"$venv/install.log" 2>&1
# Resolves the wheel's requirements against the installed Axolotl 0.19, as a user's `pip install` would.
"${pip[@]}" install "$(ls "$dist"/axolotl_selfplay-*.whl)" >>"$venv/install.log" 2>&1 || { tail -n 30 "$venv/install.log"; exit 1; }
"${pip[@]}" check >>"$venv/install.log" 2>&1 || { tail -n 30 "$venv/install.log"; exit 1; }

echo "=== axolotl train from the installed wheel, outside the repository"
work="$(mktemp -d)"
cd "$work"
"$venv/bin/python" -c "import axolotl_selfplay, sys; f = axolotl_selfplay.__file__; print('imported from', f); sys.exit('site-packages' not in f)"
PATH="$venv/bin:$PATH" axolotl-selfplay tiny-model model --data "$repo/example_configs/data/tiny_chat.jsonl" >/dev/null
cat >config.yml <<EOF
base_model: $work/model
plugins:
  - axolotl_selfplay.plugin.SelfPlayPlugin
rl: spin
selfplay:
  iterations: 2
  generation: {max_new_tokens: 8, batch_size: 32}
datasets:
  - path: $repo/example_configs/data/tiny_chat.jsonl
    type: chat_template
    train_on_eos: turn
chat_template: tokenizer_default
dataset_prepared_path: $work/prepared
sequence_len: 128
output_dir: $work/out
micro_batch_size: 32
optimizer: adamw_torch
learning_rate: 1.0e-3
bf16: false
fp16: false
save_strategy: "no"
logging_steps: 1
EOF
PATH="$venv/bin:$PATH" axolotl train config.yml >train.log 2>&1 || { tail -n 40 train.log; exit 1; }
grep -q "self-play iteration 1: 64 opponents" train.log
test -f out/selfplay/iter_1.jsonl && test -f out/model.safetensors
echo "wheel smoke: OK (axolotl train with rl: spin from the installed wheel)"
rm -rf "$work"
