"""SPIN vs the DPO route, same pairs (CPU): one training step, and one whole iteration.

    python benchmarks/step_vs_dpo.py [--workdir outputs/step_vs_dpo] [--hidden 768] [--layers 12]

Both arms are real `axolotl train` runs of a randomly initialised Llama big enough
that weights matter (~64M parameters at the defaults), full fine-tuning, fp32,
AdamW, the same micro-batch and sequence length:
- `spin`: `rl: spin`, one iteration over the bundled 64-conversation chat set. The
  opponent y' is generated and lp_θt(y), lp_θt(y') are scored once at the start
  of the iteration; each step then runs ONE forward/backward over [y; y'] and no
  reference model is held.
- `dpo`: Axolotl's `rl: dpo` (TRL's DPOTrainer) on exactly the pairs the SPIN run
  trained on (chosen = y, rejected = y', from `selfplay/iter_0.jsonl`), with its
  reference model: every step adds a no-grad reference forward, and the
  reference's weights stay in memory.
Step time = median wall-clock gap between consecutive logged steps (TensorBoard),
which excludes SPIN's generation pass at the iteration start; peak memory = the
training process's max RSS.

Whole iteration: the `spin` run's wall time (start-up, generation, scoring,
training, saving) vs the official three-stage pipeline reproduced with current
libraries: (1) a generation script written like the official SPIN `generate.py`
(load the model, fixed batches of prompts in dataset order, left-padded
`model.generate`, write a file), (2) conversion to a preference file, (3) the
`dpo` run above (a separate `axolotl train` that loads the model and its
reference). Ratios, measured side by side in one run, are the result; absolute
numbers on these shared CPUs are noise.

Needs the project venv (axolotl on PATH). Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stability import DATA, common

MEASURE = """
import resource, subprocess, sys
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)
sys.stderr.write((proc.stdout + proc.stderr)[-4000:] if proc.returncode else "")
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)  # KiB, the largest descendant
sys.exit(proc.returncode)
"""


def train_measured(cfg: dict, path: Path) -> float:
    """Run `axolotl train` in a fresh process tree; returns the peak RSS of its training process (GiB)."""
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = dict(os.environ, AXOLOTL_DO_NOT_TRACK="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env["PATH"]
    proc = subprocess.run(
        [sys.executable, "-c", MEASURE, "axolotl", "train", str(path)], capture_output=True, text=True, env=env
    )
    if proc.returncode != 0:
        sys.exit(f"axolotl train {path} failed:\n{proc.stderr[-4000:]}")
    return int(proc.stdout.strip().splitlines()[-1]) / 2**20


def step_seconds(out: Path) -> float:
    """Median gap between consecutive training steps (the first step, which follows start-up
    and SPIN's generation pass, is only the reference point)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for events in sorted(out.joinpath("runs").rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events.parent), size_guidance={"scalars": 0})
        acc.Reload()
        if "train/loss" in acc.Tags()["scalars"]:
            times = [e.wall_time for e in acc.Scalars("train/loss")]
            return statistics.median(b - a for a, b in itertools.pairwise(times))
    raise RuntimeError(f"no train/loss in {out}")


GENERATE_LIKE_OFFICIAL = """
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
model_dir, prompts_file, out_file, batch, max_new = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
tokenizer = AutoTokenizer.from_pretrained(model_dir)
tokenizer.padding_side = "left"
model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
prompts = [json.loads(line)["prompt"] for line in open(prompts_file)]
torch.manual_seed(0)
with open(out_file, "w") as out, torch.no_grad():
    for start in range(0, len(prompts), batch):  # dataset order, fixed batches
        chunk = prompts[start : start + batch]
        enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
        gen = model.generate(**enc, max_new_tokens=max_new, do_sample=True, pad_token_id=tokenizer.pad_token_id)
        for prompt, row in zip(chunk, gen[:, enc["input_ids"].shape[1]:]):
            out.write(json.dumps({"prompt": prompt, "generated": tokenizer.decode(row, skip_special_tokens=False)}) + "\\n")
"""


def timed(command: list[str]) -> float:
    import time

    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"{command[:3]} failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
    return time.perf_counter() - start


def dpo_pairs(spin_out: Path, path: Path) -> int:
    """The SPIN run's iteration-0 pairs as a DPO file (the pairs SPIN trained on)."""
    rows = [json.loads(line) for line in (spin_out / "selfplay" / "iter_0.jsonl").read_text().splitlines()]
    pairs = [
        {"prompt": r["prompt"], "chosen": r["real"], "rejected": r["generated"]} for r in rows if r["status"] == "ok"
    ]
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return len(pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="outputs/step_vs_dpo")
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)

    from axolotl_selfplay.cli import build_tiny_model

    model = work / "model"
    if not (model / "model.safetensors").exists():
        build_tiny_model(str(model), data_file=str(DATA), hidden_size=args.hidden, num_layers=args.layers)
    from safetensors import safe_open

    with safe_open(str(model / "model.safetensors"), "pt") as f:
        params = sum(_numel(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118 (safe_open is not a dict)

    spin_out = work / "spin"
    cfg = common(str(model), spin_out, seed=0)
    cfg.update({"rl": "spin", "micro_batch_size": args.micro_batch, "learning_rate": 1e-5})
    cfg["selfplay"] = {"iterations": 1, "generation": {"max_new_tokens": args.max_new_tokens, "batch_size": 16}}
    import time

    start = time.perf_counter()
    spin_rss = train_measured(cfg, work / "spin.yml")
    spin_wall = time.perf_counter() - start
    spin_step = step_seconds(spin_out)

    pairs = dpo_pairs(spin_out, work / "pairs.jsonl")
    # Stages 1-2 of the official pipeline: a separate generation script, then conversion
    # (stage 3 is the dpo run below; it trains on SPIN's pairs so both arms see the same data).
    generation_wall = timed(
        [sys.executable, "-c", GENERATE_LIKE_OFFICIAL, str(model), str(work / "pairs.jsonl"),
         str(work / "generated.jsonl"), "16", str(args.max_new_tokens)]
    )
    dpo_out = work / "dpo"
    cfg = common(str(model), dpo_out, seed=0)
    cfg.update({"rl": "dpo", "rl_beta": 0.1, "micro_batch_size": args.micro_batch, "learning_rate": 1e-5})
    cfg["datasets"] = [{"path": str(work / "pairs.jsonl"), "type": "passthrough"}]
    cfg.pop("plugins", None)  # plain Axolotl DPO
    start = time.perf_counter()
    dpo_rss = train_measured(cfg, work / "dpo.yml")
    dpo_wall = time.perf_counter() - start
    dpo_step = step_seconds(dpo_out)

    print(f"model: Llama {args.hidden}×{args.layers}, {params / 1e6:.0f}M parameters (fp32), "
          f"{pairs} pairs, micro-batch {args.micro_batch} pairs, AdamW, full fine-tuning\n")
    print("| arm | step time (s) | peak RSS (GiB) |")
    print("|---|---|---|")
    print(f"| spin (no reference model) | {spin_step:.2f} | {spin_rss:.2f} |")
    print(f"| TRL DPOTrainer (live reference) | {dpo_step:.2f} | {dpo_rss:.2f} |")
    print(f"| ratio spin / dpo | {spin_step / dpo_step:.2f} | {spin_rss / dpo_rss:.2f} |")
    pipeline = generation_wall + dpo_wall
    print("\n| one whole iteration | wall time (s) |")
    print("|---|---|")
    print(f"| spin: one `axolotl train` (generate + score + train) | {spin_wall:.1f} |")
    print(f"| official-style pipeline: generate script + DPO run | {pipeline:.1f} "
          f"({generation_wall:.1f} + {dpo_wall:.1f}) |")
    print(f"| ratio spin / pipeline | {spin_wall / pipeline:.2f} |")


def _numel(shape) -> int:
    total = 1
    for size in shape:
        total *= size
    return total


if __name__ == "__main__":
    main()
