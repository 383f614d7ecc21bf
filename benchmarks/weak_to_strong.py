"""Weak-to-strong at toy scale: does self-play beat continued SFT, from a weak start and past the SFT plateau?

    OMP_NUM_THREADS=1 python benchmarks/weak_to_strong.py --workdir outputs/weak_to_strong --sft-steps 2400 --jobs 2

The claim under test (SPIN, arXiv 2401.01335; χ², arXiv 2602.01357): starting
from an SFT model, self-play on the SFT prompts and answers improves the model
beyond what more SFT gives, in particular once more SFT no longer helps.
Everything below is a real `axolotl train` run of our trainers; nothing is
downloaded.

Task: two-digit addition written digit by digit ("4 7 + 2 3" -> "7 0"), so the
tiny BPE tokenizer sees one token per digit and held-out problems can be
solved by generalising. 10,000 problems, split once (fixed seed) into
`--train` SFT problems, a dev set (used only to pick the starts) and a held-out
set (reported).

Per seed:
1. θ0 run: a tiny Llama (hidden 128 × 4 layers, `build_tiny_model`) trained by
   plain Axolotl SFT on the training problems, a checkpoint every
   `--sft-save-every` steps; every checkpoint is scored on the dev set. Starts:
   - weak: the first checkpoint with dev exact match ≥ `--weak-at`;
   - plateau: the first checkpoint after which no later checkpoint is better
     on dev by more than `--plateau-tol` (more SFT epochs at the θ0 lr no
     longer help);
   - converged: the plateau start after the plateau's continued-SFT arm (at the
     arms' lr), where more SFT no longer helps at all: the papers' regime.
2. From each start, arms with the same optimizer, lr and number of optimizer
   steps (K iterations × E epochs over the training problems):
   - `sft`: continued SFT (plain Axolotl SFT);
   - `spin` and `spin_chi2` at β 0.1 and β 1;
   - `+reg` (β 0.1): both regularisers of arXiv 2404.04291 on, KL toward θ0
     (`kl_to_base`) and fictitious play against all past iterates
     (`history: K`, `opponent_mixture: uniform`);
   - `+sft` (β 0.1): SPIN plus 1 × the real answer's NLL (`sft_weight: 1`, RPO).
   Every self-play arm keeps one optimizer over its K iterations
   (`reset_optimizer: false`), like continued SFT.
3. At every iteration boundary (a checkpoint): held-out and training exact
   match (greedy) and the held-out mean log-prob of the real answer; per
   self-play iteration the largest logged batch mean |reward| and the fraction
   of opponents identical to the real answer (TensorBoard).
Prints markdown tables: mean ± sd over seeds, and the paired difference
(same seed, same start) to continued SFT. Results accumulate in
`WORKDIR/results.json`; a rerun only runs what is missing.

Needs the project venv (axolotl on PATH). About an hour on 2 CPU cores with
`--jobs 2` (each job one thread).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import random
import shutil
import statistics
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import redirect_stdout
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (
    add_results_argument,
    axolotl_config,
    axolotl_train,
    chat_dataset,
    chat_prompts,
    greedy_replies,
    load_for_eval,
    mean_sd,
    scalars,
    write_results,
)

ITERATIONS = 3
REGIMES = {
    "weak": "θ0 stopped mid-way",
    "plateau": "θ0 where more SFT epochs (at the θ0 lr) stopped improving dev exact match",
    "converged": "the plateau start + the continued-SFT arm (lr --lr), after which more SFT no longer helps",
}


# -- task --------------------------------------------------------------------------


def digits(n: int) -> str:
    return " ".join(str(n))


def question(a: int, b: int) -> str:
    return f"{digits(a)} + {digits(b)}"


def answer(a: int, b: int) -> str:
    return digits(a + b)


def split_problems(train: int, dev: int, heldout: int, seed: int = 1234):
    problems = [(a, b) for a in range(100) for b in range(100)]
    random.Random(seed).shuffle(problems)
    return problems[:train], problems[train : train + dev], problems[train + dev : train + dev + heldout]


def write_chat(path: Path, problems) -> None:
    with open(path, "w") as handle:
        for a, b in problems:
            row = {
                "messages": [
                    {"role": "user", "content": question(a, b)},
                    {"role": "assistant", "content": answer(a, b)},
                ]
            }
            handle.write(json.dumps(row) + "\n")


# -- evaluation ----------------------------------------------------------------------


def evaluate(model_dir: Path, tokenizer_dir: Path, problems, batch_size: int = 250) -> dict:
    """Greedy exact match and mean log-prob of the real answer (summed over its tokens and <|im_end|>)."""
    from axolotl_selfplay.scoring.logprobs import score_responses

    model, tokenizer = load_for_eval(model_dir, tokenizer_dir)
    prompts = chat_prompts(tokenizer, [question(a, b) for a, b in problems])
    replies = [tokenizer(answer(a, b) + "<|im_end|>", add_special_tokens=False)["input_ids"] for a, b in problems]
    texts = greedy_replies(model, tokenizer, prompts, max_new_tokens=6, batch_size=batch_size)
    correct = sum(text.strip() == answer(a, b) for text, (a, b) in zip(texts, problems))
    logps = score_responses(model, prompts, replies, pad_token_id=tokenizer.pad_token_id, batch_size=batch_size)
    return {"em": correct / len(problems), "logp": statistics.fmean(logps)}


# -- axolotl runs ----------------------------------------------------------------------


def base_config(model: Path, tokenizer: Path, out: Path, data: Path, seed: int, lr: float, args) -> dict:
    return axolotl_config(
        model,
        out,
        tokenizer_config=str(tokenizer),
        datasets=[chat_dataset(data)],
        dataset_prepared_path=str(out.parent / f"prepared-{out.name}"),  # per run: jobs run concurrently
        sequence_len=64,
        sample_packing=False,
        micro_batch_size=args.batch_size,
        learning_rate=lr,
        warmup_steps=0,
        weight_decay=0.0,
        seed=seed,
        save_strategy="steps",
        save_only_model=True,
        save_total_limit=1000,  # Axolotl keeps 4 by default; every checkpoint is evaluated
    )


def train(cfg: dict, out: Path) -> float:
    """One `axolotl train` subprocess (one thread) in a fresh `out`; returns wall seconds."""
    if out.exists():
        shutil.rmtree(out)  # TensorBoard events would accumulate
    return axolotl_train(cfg, out, threads=1).seconds


def checkpoints(out: Path) -> dict[int, Path]:
    return dict(sorted((int(p.name.split("-")[1]), p) for p in out.glob("checkpoint-*")))


# -- the θ0 run and its starts ---------------------------------------------------------


def sft_start(seed: int, work: Path, data: Path, dev, args) -> dict:
    """Plain SFT from a random tiny Llama; returns the dev curve and the weak / plateau checkpoints."""
    from axolotl_selfplay.tiny_models import build_tiny_model

    base = work / f"init-{seed}"
    out = work / f"theta0-{seed}"
    cfg = base_config(base, base, out, data, seed, args.sft_lr, args)
    cfg.update({"max_steps": args.sft_steps, "save_steps": args.sft_save_every, "num_epochs": 10_000})
    done = out / "config.yml"
    if done.exists() and yaml.safe_load(done.read_text()) == cfg and (out / f"checkpoint-{args.sft_steps}").exists():
        seconds = float("nan")  # a finished θ0 run of an earlier invocation, same settings: reused
    else:
        build_tiny_model(str(base), str(data), hidden_size=args.hidden_size, num_layers=args.layers, seed=seed)
        seconds = train(cfg, out)
    curve = {step: evaluate(path, base, dev)["em"] for step, path in checkpoints(out).items()}
    steps = list(curve)
    weak = next((s for s in steps if curve[s] >= args.weak_at), steps[0])
    plateau = next(s for s in steps if all(curve[later] <= curve[s] + args.plateau_tol for later in steps if later > s))
    return {"seconds": seconds, "dev_curve": curve, "weak": weak, "plateau": plateau, "tokenizer": str(base)}


# -- the arms --------------------------------------------------------------------------

ARMS = {
    # name: (rl, selfplay overrides); `sft` is continued SFT
    "sft": (None, {}),
    "spin β0.1": ("spin", {"beta": 0.1}),
    "spin β1": ("spin", {"beta": 1.0}),
    "spin_chi2 β0.1": ("spin_chi2", {"beta": 0.1}),
    "spin_chi2 β1": ("spin_chi2", {"beta": 1.0}),
    "spin β0.1 +reg": ("spin", {"beta": 0.1, "kl_to_base": 0.5, "history": ITERATIONS, "opponent_mixture": "uniform"}),
    "spin_chi2 β0.1 +reg": (
        "spin_chi2",
        {"beta": 0.1, "kl_to_base": 0.5, "history": ITERATIONS, "opponent_mixture": "uniform"},
    ),
    # the SFT term (`sft_weight`, TRL's rpo_alpha): λ = 1 × the real answer's token-mean NLL
    "spin β0.1 +sft": ("spin", {"beta": 0.1, "sft_weight": 1.0}),
}


def run_arm(arm: str, start: Path, tokenizer: Path, out: Path, data: Path, seed: int, problems: dict, args) -> dict:
    rl, overrides = ARMS[arm]
    per_iteration = math.ceil(args.train / args.batch_size) * args.epochs_per_iteration
    cfg = base_config(start, tokenizer, out, data, seed, args.lr, args)
    cfg["save_steps"] = per_iteration
    if rl is None:
        cfg.update({"max_steps": ITERATIONS * per_iteration, "num_epochs": 10_000})
    else:
        cfg["rl"] = rl
        cfg["selfplay"] = {
            "iterations": ITERATIONS,
            "epochs_per_iteration": args.epochs_per_iteration,
            # One AdamW over all K iterations, as the continued-SFT arm has (and as every arm of
            # RESULTS.md was measured); the lr is constant, so the schedule's restart changes nothing.
            "reset_optimizer": False,
            **overrides,
            "generation": {"max_new_tokens": 6, "temperature": 1.0, "batch_size": 256},
        }
    seconds = train(cfg, out)
    saved = checkpoints(out)
    if list(saved) != [per_iteration * (t + 1) for t in range(ITERATIONS)]:
        raise RuntimeError(f"{out}: expected a checkpoint at every iteration boundary, found {list(saved)}")
    run = {"seconds": seconds, "iterations": []}
    for t, path in enumerate(saved.values()):
        row = {
            f"{split}_{k}": v
            for split in ("heldout", "train")
            for k, v in evaluate(path, tokenizer, problems[split]).items()
        }
        if rl is not None:
            row.update(tensorboard_iteration(out, t))
        run["iterations"].append(row)
    for path in list(saved.values())[: -1 if rl is None else None]:
        shutil.rmtree(path)  # ~5 MB each; the numbers are kept in results.json
    return run  # continued SFT keeps its last checkpoint: the next regime's start


def tensorboard_iteration(out: Path, t: int) -> dict:
    iteration = dict(scalars(out, "train/selfplay/iteration"))
    real = dict(scalars(out, "train/rewards/real"))
    gen = dict(scalars(out, "train/rewards/generated"))
    identical = dict(scalars(out, "train/opponent/identical_frac"))
    steps = [s for s, it in iteration.items() if round(it) == t]
    return {
        "max_abs_reward": max(max(abs(real[s]), abs(gen[s])) for s in steps),
        "identical": statistics.fmean(identical[s] for s in steps),
    }


# -- report ----------------------------------------------------------------------------


def report(results: dict, args) -> None:
    seeds = sorted(results["starts"], key=int)
    print(
        f"\nseeds {seeds}; {args.train} training problems, {args.heldout} held-out; Llama hidden {args.hidden_size} × "
        f"{args.layers} layers; θ0: SFT lr {args.sft_lr}, batch {args.batch_size}; arms: lr {args.lr}, batch "
        f"{args.batch_size}, {ITERATIONS} iterations × {args.epochs_per_iteration} epochs "
        f"({ITERATIONS * math.ceil(args.train / args.batch_size) * args.epochs_per_iteration} optimizer steps)\n"
    )
    print("| seed | θ0 SFT wall (s) | weak start: step, dev EM | plateau start: step, dev EM |")
    print("|---|---|---|---|")
    for s in seeds:
        st = results["starts"][s]
        curve = {int(k): v for k, v in st["dev_curve"].items()}
        print(
            f"| {s} | {st['seconds']:.0f} | {st['weak']}, {curve[st['weak']]:.3f} | {st['plateau']}, {curve[st['plateau']]:.3f} |"
        )
    for regime, description in REGIMES.items():
        runs = results["arms"].get(regime, {})
        if not runs:
            continue
        starts = results["start_eval"][regime]
        print(f"\n### {regime} start: {description}\n")
        print(
            "held-out exact match per iteration (mean ± sd over seeds); paired diff = arm − continued SFT, same seed, after iteration 3\n"
        )
        print(
            "| arm | start | iter 1 | iter 2 | iter 3 | paired diff to SFT (iter 3) | diff to start | wall time (s) |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for arm in ARMS:
            if not all(arm in runs.get(s, {}) for s in seeds):
                continue
            cells = [mean_sd([starts[s]["heldout_em"] for s in seeds])]
            cells += [mean_sd([runs[s][arm]["iterations"][t]["heldout_em"] for s in seeds]) for t in range(ITERATIONS)]
            final = {s: runs[s][arm]["iterations"][-1]["heldout_em"] for s in seeds}
            diff_sft = [final[s] - runs[s]["sft"]["iterations"][-1]["heldout_em"] for s in seeds]
            diff_start = [final[s] - starts[s]["heldout_em"] for s in seeds]
            cells += ["—" if arm == "sft" else mean_sd(diff_sft), mean_sd(diff_start)]
            cells.append(f"{statistics.fmean(runs[s][arm]['seconds'] for s in seeds):.0f}")
            print(f"| {arm} | " + " | ".join(cells) + " |")
        print(
            "\nheld-out log-prob of the real answer and training exact match, start → iter 1 → iter 2 → iter 3 (mean over seeds)\n"
        )
        print("| arm | held-out logp(y) | train exact match |")
        print("|---|---|---|")
        for arm in ARMS:
            if not all(arm in runs.get(s, {}) for s in seeds):
                continue
            lp = [statistics.fmean(starts[s]["heldout_logp"] for s in seeds)]
            lp += [
                statistics.fmean(runs[s][arm]["iterations"][t]["heldout_logp"] for s in seeds)
                for t in range(ITERATIONS)
            ]
            em = [statistics.fmean(starts[s]["train_em"] for s in seeds)]
            em += [
                statistics.fmean(runs[s][arm]["iterations"][t]["train_em"] for s in seeds) for t in range(ITERATIONS)
            ]
            print(
                f"| {arm} | " + " → ".join(f"{v:.2f}" for v in lp) + " | " + " → ".join(f"{v:.3f}" for v in em) + " |"
            )
        print(
            "\nself-play diagnostics per iteration (mean ± sd over seeds): largest logged batch-mean |reward| (β·log π_θ/π_θt), opponents identical to y (dropped)\n"
        )
        print("| arm | max abs reward: iter 1 / 2 / 3 | identical y': iter 1 / 2 / 3 |")
        print("|---|---|---|")
        for arm, (rl, _) in ARMS.items():
            if rl is None or not all(arm in runs.get(s, {}) for s in seeds):
                continue
            rew = " / ".join(
                mean_sd([runs[s][arm]["iterations"][t]["max_abs_reward"] for s in seeds], 2) for t in range(ITERATIONS)
            )
            ident = " / ".join(
                mean_sd([runs[s][arm]["iterations"][t]["identical"] for s in seeds], 2) for t in range(ITERATIONS)
            )
            print(f"| {arm} | {rew} | {ident} |")


# -- main --------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="outputs/weak_to_strong")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2, help="axolotl runs at once (one thread each)")
    parser.add_argument("--train", type=int, default=1024, help="SFT / self-play training problems")
    parser.add_argument("--dev", type=int, default=500, help="problems used only to pick the starts")
    parser.add_argument("--heldout", type=int, default=1000)
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32, help="micro_batch_size of every run (SPIN: pairs)")
    parser.add_argument("--sft-lr", type=float, default=1e-3)
    parser.add_argument("--sft-steps", type=int, default=2000)
    parser.add_argument("--sft-save-every", type=int, default=100)
    parser.add_argument("--weak-at", type=float, default=0.15, help="weak start: first checkpoint with dev EM ≥ this")
    parser.add_argument("--plateau-tol", type=float, default=0.02)
    parser.add_argument("--lr", type=float, default=1e-4, help="learning rate of every arm")
    parser.add_argument("--epochs-per-iteration", type=int, default=2, help="E (the paper: 2)")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=list(REGIMES))
    parser.add_argument("--starts-only", action="store_true", help="run the θ0 SFT and pick the starts, then stop")
    add_results_argument(parser)
    args = parser.parse_args()
    if "converged" in args.regimes and not ("plateau" in args.regimes and "sft" in args.arms):
        parser.error("--regimes converged starts from the plateau's continued-SFT arm: add `plateau` and arm `sft`")

    import torch
    import transformers

    # Resolve transformers' lazy attributes once, here: resolving them from two threads at once can fail.
    for name in ("AutoModelForCausalLM", "AutoTokenizer", "LlamaConfig", "LlamaForCausalLM", "PreTrainedTokenizerFast"):
        getattr(transformers, name)
    torch.set_num_threads(1)
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    train, dev, heldout = split_problems(args.train, args.dev, args.heldout)
    data = work / "train.jsonl"
    write_chat(data, train)
    problems = {"train": train[:500], "heldout": heldout}
    results_path = work / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results.setdefault("starts", {})
    for key in ("start_eval", "arms"):
        for regime in REGIMES:
            results.setdefault(key, {}).setdefault(regime, {})
    began = time.monotonic()

    def save():
        results_path.write_text(json.dumps(results, indent=1))

    def out_dir(regime: str, seed: str, arm: str) -> Path:
        return work / f"{regime}-{seed}-{arm.replace(' ', '_').replace('β', 'b')}"

    def converged_start(seed: str) -> Path:
        """The last checkpoint of continued SFT from the plateau start (lr `--lr`, flat by then)."""
        sft = out_dir("plateau", seed, "sft")
        return max(checkpoints(sft).items())[1] if sft.exists() and checkpoints(sft) else sft / "missing"

    def arm_jobs(seed: str, regimes):
        """Evaluate the seed's starts, then the (regime, seed, arm) runs still missing."""
        st = results["starts"][seed]
        tokenizer = Path(st["tokenizer"])
        for regime in regimes:
            if regime == "converged":
                start = converged_start(seed)
            else:
                start = work / f"theta0-{seed}" / f"checkpoint-{st[regime]}"
            if seed not in results["start_eval"][regime]:
                results["start_eval"][regime][seed] = {
                    f"{split}_{k}": v
                    for split in ("heldout", "train")
                    for k, v in evaluate(start, tokenizer, problems[split]).items()
                }
            for arm in args.arms:
                # The plateau's continued-SFT run is rerun when its last checkpoint (the converged start) is gone.
                rerun = regime == "plateau" and arm == "sft" and "converged" in args.regimes and not start_exists(seed)
                if rerun or arm not in results["arms"][regime].get(seed, {}):
                    yield (regime, seed, arm, start, tokenizer, out_dir(regime, seed, arm))

    def start_exists(seed: str) -> bool:
        return (converged_start(seed) / "config.json").exists()

    def first_regimes(seed: str):
        """Regimes whose start exists now; `converged` waits for the plateau's continued SFT."""
        if "converged" in args.regimes and not start_exists(seed):
            return [r for r in args.regimes if r != "converged"]
        return args.regimes

    def one(job):
        _, seed, arm, start, tokenizer, out = job
        return run_arm(arm, start, tokenizer, out, data, int(seed), problems, args)

    # Arms of a seed start as soon as its θ0 run is done, so both job slots stay busy.
    with ThreadPoolExecutor(args.jobs) as pool:
        pending = {}
        for seed in map(str, args.seeds):
            if seed in results["starts"]:
                if not args.starts_only:
                    pending.update({pool.submit(one, job): ("arm", job) for job in arm_jobs(seed, first_regimes(seed))})
            else:
                pending[pool.submit(sft_start, int(seed), work, data, dev, args)] = ("start", seed)
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                kind, what = pending.pop(future)
                if kind == "start":
                    start = results["starts"][what] = future.result()
                    save()
                    print(
                        f"seed {what}: θ0 dev curve {start['dev_curve']}; weak {start['weak']}, plateau {start['plateau']}",
                        flush=True,
                    )
                    if not args.starts_only:
                        pending.update(
                            {pool.submit(one, job): ("arm", job) for job in arm_jobs(what, first_regimes(what))}
                        )
                else:
                    regime, seed, arm, *_ = what
                    run = results["arms"][regime].setdefault(seed, {})[arm] = future.result()
                    save()
                    final = run["iterations"][-1]
                    print(
                        f"{regime} seed {seed} {arm}: held-out EM {final['heldout_em']:.3f} ({run['seconds']:.0f}s)",
                        flush=True,
                    )
                    if (regime, arm) == ("plateau", "sft") and "converged" in args.regimes:
                        pending.update({pool.submit(one, job): ("arm", job) for job in arm_jobs(seed, ["converged"])})
    if args.starts_only:
        return
    tables = io.StringIO()
    with redirect_stdout(tables):
        report(results, args)
    write_results(args.results, "weak_to_strong", tables.getvalue())
    print(f"\ntotal wall time {time.monotonic() - began:.0f}s")


if __name__ == "__main__":
    main()
