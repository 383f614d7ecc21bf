"""Stability of `spin` vs `spin_chi2` at a high learning rate (CPU, tiny model, a few minutes).

    python benchmarks/stability.py [--workdir DIR] [--lr 2e-3] [--iterations 4] [--seeds 42 43]

1. builds the tiny offline Llama and SFTs it with plain Axolotl SFT on the bundled chat set;
2. from that SFT model runs `rl: spin` and `rl: spin_chi2` (same data, schedule, β, seed) through
   `axolotl train`, with a deliberately high learning rate;
3. prints, per iteration, the real responses' log-prob (end of iteration) and the largest
   logged |reward| (batch means of β·log π_θ/π_θt for y and y'), plus the χ² bound
   [−1/(2c(1−α)), 1/(2cα)] = [−2, 2] at the defaults.

Needs the venv made by scripts/setup_env.sh (axolotl on PATH). Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "example_configs" / "data" / "tiny_chat.jsonl"


def common(model: str, out: Path, seed: int) -> dict:
    cfg = {
        "base_model": model,
        "tokenizer_type": "AutoTokenizer",
        "datasets": [{"path": str(DATA), "type": "chat_template", "field_messages": "messages",
                      "roles_to_train": ["assistant"], "train_on_eos": "turn"}],
        "chat_template": "tokenizer_default",
        "dataset_prepared_path": str(out.parent / "prepared"),
        "val_set_size": 0,
        "sequence_len": 128,
        "output_dir": str(out),
        "micro_batch_size": 16,
        "optimizer": "adamw_torch",
        "lr_scheduler": "constant",
        "seed": seed,
        "bf16": False, "fp16": False, "tf32": False,
        "attn_implementation": "sdpa",
        "logging_steps": 1,
        "save_strategy": "no",
        "use_tensorboard": True,
        "dataloader_num_workers": 0,
    }
    from importlib.metadata import version

    if tuple(int(x) for x in version("axolotl").split(".")[:2]) < (0, 20):
        cfg["plugins"] = ["axolotl_selfplay.plugin.SelfPlayPlugin"]
    return cfg


def train(cfg: dict, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = dict(os.environ, AXOLOTL_DO_NOT_TRACK="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env["PATH"]
    proc = subprocess.run(["axolotl", "train", str(path)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"axolotl train {path} failed:\n{(proc.stdout + proc.stderr)[-4000:]}")


def scalars(out: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for events in sorted(out.joinpath("runs").rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events.parent), size_guidance={"scalars": 0})
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            return [(e.step, e.value) for e in acc.Scalars(tag)]
    return []


def per_iteration(out: Path, iterations: int) -> list[dict]:
    iteration = dict(scalars(out, "train/selfplay/iteration"))
    logp = dict(scalars(out, "train/logps/real"))
    real = dict(scalars(out, "train/rewards/real"))
    gen = dict(scalars(out, "train/rewards/generated"))
    identical = dict(scalars(out, "train/opponent/identical_frac"))
    rows = []
    for t in range(iterations):
        steps = sorted(s for s, it in iteration.items() if round(it) == t)
        rows.append({
            "logp_start": logp[steps[0]],  # first step of the iteration: logp under θ_t
            "logp_real": logp[steps[-1]],
            "max_abs_reward": max(max(abs(real[s]), abs(gen[s])) for s in steps),
            "identical": statistics.fmean(identical[s] for s in steps),
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="outputs/stability")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--epochs-per-iteration", type=int, default=2)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    args = parser.parse_args()
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)

    from axolotl_selfplay.cli import build_tiny_model

    model = work / "tiny-model"
    build_tiny_model(str(model), data_file=str(DATA))
    results: dict[str, list[list[dict]]] = {"spin": [], "spin_chi2": []}
    for seed in args.seeds:
        sft = work / f"sft-{seed}"
        cfg = common(str(model), sft, seed)
        cfg.update({"num_epochs": 15, "learning_rate": 3e-3})
        train(cfg, work / f"sft-{seed}.yml")
        for kind in results:
            out = work / f"{kind}-{seed}"
            cfg = common(str(sft), out, seed)
            cfg.update({
                "rl": kind,
                "learning_rate": args.lr,
                "selfplay": {"iterations": args.iterations, "epochs_per_iteration": args.epochs_per_iteration,
                             "beta": args.beta, "generation": {"max_new_tokens": 24, "batch_size": 64}},
            })
            train(cfg, work / f"{kind}-{seed}.yml")
            results[kind].append(per_iteration(out, args.iterations))

    def cell(kind, t, key):
        values = [run[t][key] for run in results[kind]]
        mean = statistics.fmean(values)
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{mean:.2f} ± {sd:.2f}"

    print(f"\nlr {args.lr}, β {args.beta}, {args.epochs_per_iteration} epochs/iteration, seeds {args.seeds}; "
          "mean ± sd over seeds; χ² reward bound at the defaults: [-2, 2]\n")
    print(f"log-prob of the real responses under the SFT start: spin {cell('spin', 0, 'logp_start')}, "
          f"spin_chi2 {cell('spin_chi2', 0, 'logp_start')}\n")
    print("| iteration | spin logp(y) | spin_chi2 logp(y) | spin max abs(reward) | spin_chi2 max abs(reward) "
          "| spin identical y' | spin_chi2 identical y' |")
    print("|---|---|---|---|---|---|---|")
    for t in range(args.iterations):
        print(f"| {t} | {cell('spin', t, 'logp_real')} | {cell('spin_chi2', t, 'logp_real')} | "
              f"{cell('spin', t, 'max_abs_reward')} | {cell('spin_chi2', t, 'max_abs_reward')} | "
              f"{cell('spin', t, 'identical')} | {cell('spin_chi2', t, 'identical')} |")
    print("\nlogp(y): batch mean of log π_θ(y|x) at the last step of the iteration; max abs(reward): largest "
          "logged batch mean of |β·log π_θ/π_θt| over y and y' in the iteration; identical y': fraction of "
          "opponents equal to y (dropped).")


if __name__ == "__main__":
    main()
