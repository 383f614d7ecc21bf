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
import io
import statistics
import sys
from contextlib import redirect_stdout
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import CHAT_DATA, add_results_argument, axolotl_config, axolotl_train, mean_sd, scalars, write_results


def train(cfg: dict, out: Path) -> None:
    axolotl_train(cfg, out.parent / f"{out.name}-config")


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
    add_results_argument(parser)
    args = parser.parse_args()
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)

    from axolotl_selfplay.tiny_models import build_tiny_model

    model = work / "tiny-model"
    build_tiny_model(str(model), data_file=str(CHAT_DATA))
    results: dict[str, list[list[dict]]] = {"spin": [], "spin_chi2": []}
    for seed in args.seeds:
        sft = work / f"sft-{seed}"
        cfg = axolotl_config(model, sft, seed=seed, num_epochs=15, learning_rate=3e-3)
        train(cfg, sft)
        for kind in results:
            out = work / f"{kind}-{seed}"
            cfg = axolotl_config(sft, out, seed=seed)
            cfg.update({
                "rl": kind,
                "learning_rate": args.lr,
                "selfplay": {"iterations": args.iterations, "epochs_per_iteration": args.epochs_per_iteration,
                             "beta": args.beta, "generation": {"max_new_tokens": 24, "batch_size": 64}},
            })
            train(cfg, out)
            results[kind].append(per_iteration(out, args.iterations))

    def cell(kind, t, key):
        return mean_sd([run[t][key] for run in results[kind]], 2)

    tables = io.StringIO()
    with redirect_stdout(tables):
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
    write_results(args.results, "stability", tables.getvalue())


if __name__ == "__main__":
    main()
