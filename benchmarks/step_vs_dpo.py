"""SPIN vs the DPO route, same pairs (CPU): one training step, and one whole iteration.

    python benchmarks/step_vs_dpo.py [--workdir outputs/bench/step_vs_dpo] [--hidden 768] [--layers 12] [--results FILE]

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
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (
    CHAT_DATA,
    add_results_argument,
    axolotl_config,
    axolotl_env,
    axolotl_train,
    machine,
    markdown_table,
    read_jsonl,
    step_seconds,
    write_results,
)

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
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=axolotl_env(), check=False)
    if proc.returncode != 0:
        sys.exit(f"{command[:3]} failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
    return time.perf_counter() - start


def dpo_pairs(spin_out: Path, path: Path) -> int:
    """The SPIN run's iteration-0 pairs as a DPO file (the pairs SPIN trained on)."""
    rows = read_jsonl(spin_out / "selfplay" / "iter_0.jsonl")
    pairs = [{"prompt": r["prompt"], "chosen": r["real"], "rejected": r["generated"]} for r in rows if r["status"] == "ok"]
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return len(pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("outputs/bench/step_vs_dpo"))
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    add_results_argument(parser)
    args = parser.parse_args()
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)

    from axolotl_selfplay.tiny_models import build_tiny_model

    model = work / "model"
    if not (model / "model.safetensors").exists():
        build_tiny_model(str(model), data_file=str(CHAT_DATA), hidden_size=args.hidden, num_layers=args.layers)
    from safetensors import safe_open

    with safe_open(str(model / "model.safetensors"), "pt") as f:
        params = sum(_numel(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118 (safe_open is not a dict)

    common = {"micro_batch_size": args.micro_batch, "learning_rate": 1e-5, "seed": 0}
    spin_out = work / "spin" / "run"
    cfg = axolotl_config(model, spin_out, rl="spin", **common)
    cfg["selfplay"] = {"iterations": 1, "generation": {"max_new_tokens": args.max_new_tokens, "batch_size": 16}}
    spin = axolotl_train(cfg, spin_out.parent, measure_memory=True)
    spin_step = step_seconds(spin_out)

    pairs = dpo_pairs(spin_out, work / "pairs.jsonl")
    # Stages 1-2 of the official pipeline: a separate generation script, then conversion
    # (stage 3 is the dpo run below; it trains on SPIN's pairs so both arms see the same data).
    generation_wall = timed(
        [sys.executable, "-c", GENERATE_LIKE_OFFICIAL, str(model), str(work / "pairs.jsonl"),
         str(work / "generated.jsonl"), "16", str(args.max_new_tokens)]
    )
    dpo_out = work / "dpo" / "run"
    cfg = axolotl_config(model, dpo_out, rl="dpo", rl_beta=0.1, plugins=None,  # plain Axolotl DPO
                         datasets=[{"path": str(work / "pairs.jsonl"), "type": "passthrough"}], **common)
    dpo = axolotl_train(cfg, dpo_out.parent, measure_memory=True)
    dpo_step = step_seconds(dpo_out)

    header = (f"Llama {args.hidden}×{args.layers}, {params / 1e6:.0f}M parameters (fp32), {pairs} pairs, micro-batch "
              f"{args.micro_batch} pairs, AdamW, full fine-tuning. Measured on {machine()}.\n\n")
    step = markdown_table(["arm", "step time (s)", "peak RSS (GiB)"], [
        ["spin (no reference model)", f"{spin_step:.2f}", f"{spin.peak_rss_gib:.2f}"],
        ["TRL DPOTrainer (live reference)", f"{dpo_step:.2f}", f"{dpo.peak_rss_gib:.2f}"],
        ["ratio spin / dpo", f"**{spin_step / dpo_step:.2f}**", f"**{spin.peak_rss_gib / dpo.peak_rss_gib:.2f}**"],
    ])
    pipeline = generation_wall + dpo.seconds
    iteration = markdown_table(["one whole iteration", "wall time (s)"], [
        ["spin: one `axolotl train` (start-up, generate, score, train, save)", f"{spin.seconds:.1f}"],
        ["official-style pipeline: generation script + DPO run",
         f"{pipeline:.1f} ({generation_wall:.1f} + {dpo.seconds:.1f})"],
        ["ratio spin / pipeline", f"**{spin.seconds / pipeline:.2f}**"],
    ])
    write_results(args.results, "step_vs_dpo", header + step + "\n\n" + iteration + "\n")


def _numel(shape) -> int:
    total = 1
    for size in shape:
        total *= size
    return total


if __name__ == "__main__":
    main()
