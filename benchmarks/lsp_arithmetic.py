"""Does LSP raise Solver accuracy on a verifiable toy task with NO data? (CPU, tiny model)

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/lsp_arithmetic.py --workdir outputs/lsp_arithmetic \
        --arms lsp_zero grpo grpo_lsp_loss sft --results benchmarks/RESULTS.md

Question: Language Self-Play (`rl: lsp`, arXiv 2509.07414) trains one model as
Challenger (writes queries) and Solver (answers them) from a task reward alone.
On two-number addition ("What is A+B?", operands 0..49, `exact_sum` reward),
does the Solver's exact-match accuracy on a FIXED held-out set rise when it
plays LSP-Zero, with no training data at all, and how does that compare with
spending the same optimizer steps on plain SFT with labelled data, or on
Axolotl's own GRPO (`rl: grpo`) trained on the task's problems (the LSP paper's
peer: LSP-Zero with no data against GRPO with data)?

Setup, per seed:
1. a held-out set of 200 "What is A+B?" problems (fixed seed, the same for every
   run); neither the SFT data's Solver rows nor GRPO's prompts contain a
   held-out (or dev) problem, so held-out accuracy measures generalisation,
   not recall (LSP's Challenger may write any problem);
2. a tiny offline Llama + tokenizer (`axolotl_selfplay.tiny_models.build_tiny_model`),
   warmed up with `warm_up` to a WEAK start (a model that cannot play either
   role gets no LSP signal; one that is already perfect has nothing to learn);
3. from that same start, arms with the same number of optimizer steps and the
   same learning rate, each a real `axolotl train` subprocess:
   - `lsp_zero`: `rl: lsp`, `self_reward: false`, reward `arithmetic.exact_sum`;
   - `grpo`: Axolotl's `rl: grpo` (TRL's GRPOTrainer, HF generation, `trl.use_vllm:
     false`) on every "What is A+B?" of the operand range except the held-out and
     dev problems, as one-user-turn chats (the chat template the Solver sees in
     LSP), same reward function, temperature, answer length and KL weight (`beta`
     = kl_beta, k3 to the start), and as many problems × answers per step as
     LSP-Zero's Solver (games·N problems × G answers); TRL's defaults otherwise
     (advantages divided by the group's std, `loss_type: dapo`);
   - `grpo_lsp_loss`: the same with LSP's own loss form (`scale_rewards: none`,
     `loss_type: grpo`: reward minus the group mean, per-sequence token means), so
     that against `lsp_zero` only the problems (data vs. the Challenger's) and the
     Challenger's own loss term differ;
   - `sft`: plain Axolotl SFT on the arithmetic SFT data (both roles);
   - `lsp` (first `--self-reward-seeds` seeds): `rl: lsp` with the self-judge on;
4. held-out greedy exact match of the Solver before and after each arm.
Prints a markdown table (mean ± sd over seeds, paired difference to the start,
wall time), the paired difference of every arm to `lsp_zero`, the first/last-step
LSP and GRPO metrics from TensorBoard, and the last step's sample queries (did
the Challenger drift?). `--arms` picks the arms
(all five by default; the `lsp` arm costs about 4× an LSP-Zero run and gave
bit-identical weights to it, see RESULTS.md).

Defaults (the run in benchmarks/RESULTS.md): Llama hidden 128 × 4 layers, vocab
512, warmed up 1000 steps × 32 rows at lr 1e-3 on 4096 both-role rows (minus
held-out/dev Solver rows) to ~15% held-out; every arm 80 AdamW steps at a
constant lr 3e-4. LSP: 2 games per step × 8 queries × 4 answers, temperature
1.0, answers ≤ 6 tokens, queries ≤ 16 tokens, kl_beta 0.04; GRPO: 16 problems ×
4 answers per step (micro_batch_size 64 completions, num_generations 4), beta
0.04; SFT arm: 32 rows per step. lr and steps were picked on seed 0 with the dev split (`--on-dev`):
lr 1e-3 for 40 steps took LSP-Zero from 14% to 6% on dev, 3e-4 and 1e-4 did not
hurt. Checkpoints every 20 steps give the held-out curve. The four arms above:
about 28 minutes on 2 shared CPU cores (one process at a time; ~3 min of it per
seed builds the start, reused by later runs of the same workdir).
`--challenger-weight` sets the LSP arms' `challenger_weight`; `--report-only`
rewrites the tables from a run's results{TAG}.json.

Needs the project venv (axolotl on PATH). Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import random
import shutil
import statistics
import sys
import time
from contextlib import redirect_stdout
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (
    PLUGIN,
    REPO,
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

REWARD_MODULE = REPO / "example_configs" / "rewards" / "arithmetic.py"


def load_arithmetic():
    # The reward module is not a package; load it by path so the held-out set,
    # the SFT data and the reward all share one definition of the task.
    spec = importlib.util.spec_from_file_location("arithmetic", REWARD_MODULE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ARITH = load_arithmetic()


# -- data ----------------------------------------------------------------------


def heldout_problems(count: int, seed: int) -> list[tuple[int, int]]:
    """`count` distinct (a, b) pairs, fixed by `seed`."""
    rng = random.Random(seed)
    pairs: list[tuple[int, int]] = []
    seen = set()
    while len(pairs) < count:
        pair = (rng.randint(0, ARITH.MAX_OPERAND), rng.randint(0, ARITH.MAX_OPERAND))
        if pair not in seen:
            seen.add(pair)
            pairs.append(pair)
    return pairs


def write_grpo_data(path: Path, excluded: list[tuple[int, int]]) -> int:
    """GRPO's prompts: every "What is A+B?" of the task's operand range except the held-out
    and dev problems, each once (uniform over the allowed pairs, as the SFT data and the warm-up
    are over all pairs), as one-user-turn chats; TRL's GRPOTrainer applies the tokenizer's chat
    template, as the Solver sees its query in LSP. Returns the number of prompts written."""
    banned = set(excluded)
    pairs = [(a, b) for a in range(ARITH.MAX_OPERAND + 1) for b in range(ARITH.MAX_OPERAND + 1) if (a, b) not in banned]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        handle.writelines(
            json.dumps({"prompt": [{"role": "user", "content": ARITH.question(a, b)}]}) + "\n" for a, b in pairs
        )
    return len(pairs)


def write_sft_data(path: Path, rows: int, excluded: list[tuple[int, int]]) -> int:
    """Both-role SFT rows with every held-out (and dev) problem removed from the Solver rows.

    Challenger rows stay (they only teach the question format). Returns the
    number of rows written.
    """
    banned = {ARITH.question(a, b) for a, b in excluded}
    kept = [
        row
        for row in ARITH.sft_rows(rows, seed=0)
        if not (row["messages"][0]["content"] in banned)  # a Solver row asking a held-out problem
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in kept)
    return len(kept)


# -- model -----------------------------------------------------------------------


def build_start(model_dir: Path, data: Path, args, seed: int) -> None:
    """The weak starting model of one seed (init and SFT order depend on the seed).

    A start built earlier with the same settings is reused: it is deterministic,
    and the arms are what a re-run usually changes.
    """
    from axolotl_selfplay.tiny_models import build_tiny_model, warm_up

    recipe = {k: getattr(args, k) for k in ("hidden_size", "layers", "sft_steps", "sft_lr", "sft_rows", "heldout_seed")}
    marker = model_dir / "start_recipe.json"
    if marker.exists() and json.loads(marker.read_text()) == recipe:
        return
    build_tiny_model(str(model_dir), str(data), hidden_size=args.hidden_size, num_layers=args.layers, seed=seed)
    warm_up(str(model_dir), str(data), args.sft_steps, lr=args.sft_lr, seed=seed)
    marker.write_text(json.dumps(recipe))


def evaluate(model_dir: Path, heldout: list[tuple[int, int]], batch_size: int = 100) -> float:
    """Greedy exact match of the Solver on the held-out problems (user turn = question)."""
    model, tokenizer = load_for_eval(model_dir)
    prompts = chat_prompts(tokenizer, [ARITH.question(a, b) for a, b in heldout])
    answers = greedy_replies(model, tokenizer, prompts, max_new_tokens=6, batch_size=batch_size)
    return sum(text.strip() == str(a + b) for text, (a, b) in zip(answers, heldout)) / len(heldout)


# -- axolotl runs -------------------------------------------------------------------


def common_config(model_dir: Path, out: Path, seed: int, args) -> dict:
    """CPU settings shared by every arm: same optimizer, lr, constant schedule."""
    return axolotl_config(
        model_dir,
        out,
        datasets=None,
        dataset_prepared_path=None,
        micro_batch_size=None,
        max_steps=args.steps,
        learning_rate=args.lr,
        warmup_steps=0,
        seed=seed,
        # Checkpoints only for the held-out curve (`--eval-every`); weights only, no optimizer state.
        **(
            {"save_strategy": "steps", "save_steps": args.eval_every, "save_only_model": True}
            if args.eval_every
            else {"save_strategy": "no"}
        ),
        plugins=[PLUGIN],  # Axolotl < 0.20 finds the plugin only through this line (0.21 accepts it)
    )


def lsp_config(model_dir: Path, out: Path, seed: int, args, self_reward: bool) -> dict:
    cfg = common_config(model_dir, out, seed, args)
    cfg.update(
        {
            "rl": "lsp",
            "micro_batch_size": args.games,  # games per optimizer step
            "selfplay": {
                "generation": {"max_new_tokens": 6, "temperature": 1.0, "batch_size": 64},
                "lsp": {
                    "num_queries": args.num_queries,
                    "num_answers": args.num_answers,
                    "max_query_tokens": 16,
                    "challenger_prompt": ARITH.CHALLENGER_PROMPT,
                    "self_reward": self_reward,
                    "judge_max_new_tokens": 8,
                    "reward_funcs": ["arithmetic.exact_sum"],
                    "kl_beta": args.kl_beta,
                    "challenger_weight": args.challenger_weight,
                },
            },
        }
    )
    return cfg


def grpo_config(model_dir: Path, out: Path, seed: int, args, prompts: Path, variant: str = "grpo") -> dict:
    """Axolotl's own `rl: grpo` (TRL's GRPOTrainer, HF generation) on the task's problems.

    Matched to `lsp_zero`: same start, lr, optimizer steps, reward function, temperature,
    answer length (6 tokens), KL weight (k3, to the start model) and answers per step: a
    micro-batch of games·N·G completions = games·N problems × G answers each, one
    generation per optimizer step (on-policy, as LSP). `grpo` keeps TRL's defaults for
    the rest (advantages divided by the group's std, `loss_type: dapo`);
    `grpo_lsp_loss` uses LSP's own loss form (no std scaling, per-sequence token means:
    `scale_rewards: none`, `loss_type: grpo`), so only the data differs from LSP's Solver.
    """
    cfg = common_config(model_dir, out, seed, args)
    per_step = args.games * args.num_queries * args.num_answers
    trl = {
        "use_vllm": False,
        "num_generations": args.num_answers,
        "max_completion_length": 6,
        "temperature": 1.0,
        "beta": args.kl_beta,
        "reward_funcs": ["arithmetic.exact_sum"],
    }
    if variant == "grpo_lsp_loss":
        trl.update({"scale_rewards": "none", "loss_type": "grpo"})
    cfg.update(
        {
            "rl": "grpo",
            "datasets": [{"path": str(prompts), "ds_type": "json", "split": "train"}],
            "dataset_prepared_path": str(out.parent / f"prepared-{out.name}"),
            "micro_batch_size": per_step,  # completions per step (TRL counts completions)
            "num_epochs": 100,  # max_steps stops it
            "trl": trl,
        }
    )
    cfg.pop("plugins", None)  # the peer runs without this plugin
    return cfg


def sft_config(model_dir: Path, out: Path, seed: int, args, data: Path) -> dict:
    cfg = common_config(model_dir, out, seed, args)
    cfg.update(
        {
            "datasets": [chat_dataset(data)],
            "dataset_prepared_path": str(out.parent / f"prepared-{out.name}"),
            "micro_batch_size": args.sft_batch_size,
            "sample_packing": False,
            "num_epochs": 1000,  # max_steps stops it; the data must not run out first
        }
    )
    return cfg


def train(cfg: dict, run_dir: Path) -> float:
    """Run `axolotl train` in `run_dir` (where the reward module sits); returns wall seconds."""
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(REWARD_MODULE, run_dir / "arithmetic.py")
    return axolotl_train(cfg, run_dir, threads=int(os.environ.get("OMP_NUM_THREADS", "1"))).seconds


def curve(out: Path, heldout: list[tuple[int, int]]) -> dict[int, float]:
    """Held-out exact match of every intermediate checkpoint (step -> accuracy)."""
    points = {}
    for checkpoint in out.glob("checkpoint-*"):
        points[int(checkpoint.name.split("-")[1])] = evaluate(checkpoint, heldout)
    return dict(sorted(points.items()))


ARMS = ["lsp_zero", "grpo", "grpo_lsp_loss", "sft", "lsp"]  # report order
LSP_TAGS = [
    "lsp/solver_reward",
    "lsp/zero_std_frac",
    "lsp/degenerate_query_frac",
    "lsp/distinct_query_frac",
    "lsp/kl",
]
WINDOW = 10  # steps averaged at each end: one step holds only 2 games x 8 queries, so single steps are noisy


def lsp_trace(out: Path) -> dict:
    """Per metric: first step, last step, mean of the first and of the last WINDOW steps."""
    trace = {}
    for tag in LSP_TAGS:
        values = [v for _, v in scalars(out, f"train/{tag}")] or [float("nan")]
        trace[tag] = (values[0], values[-1], statistics.fmean(values[:WINDOW]), statistics.fmean(values[-WINDOW:]))
    return trace


GRPO_TAGS = ["reward", "reward_std", "frac_reward_zero_std", "kl", "completions/mean_length"]


def grpo_trace(out: Path) -> dict:
    """TRL's own GRPO metrics, as lsp_trace."""
    trace = {}
    for tag in GRPO_TAGS:
        values = [v for _, v in scalars(out, f"train/{tag}")] or [float("nan")]
        trace[tag] = (values[0], values[-1], statistics.fmean(values[:WINDOW]), statistics.fmean(values[-WINDOW:]))
    return trace


def read_samples(out: Path) -> list[dict]:
    path = out / "selfplay" / "lsp_samples.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def last_samples(out: Path, limit: int = 8) -> list[dict]:
    rows = read_samples(out)
    last = max(row["step"] for row in rows)
    return [row for row in rows if row["step"] == last][:limit]


def query_drift(out: Path) -> dict:
    """Did the Challenger's problems change? Logged queries of the first vs last WINDOW steps.

    lsp_samples.jsonl holds the first 8 queries of each step (one row per query,
    with its answers), so each window sees about 8·WINDOW queries.
    """
    rows = read_samples(out)
    last = max(row["step"] for row in rows)
    drift = {}
    for name, steps in (("first", range(1, WINDOW + 1)), ("last", range(last - WINDOW + 1, last + 1))):
        queries = {(row["step"], row["query"]) for row in rows if row["step"] in steps}
        parsed = [ARITH.parse_question(q) for _, q in queries]
        sums = [a + b for a, b in (p for p in parsed if p)]
        drift[name] = {
            "queries": len(queries),
            "well_formed": len(sums) / max(len(queries), 1),
            "mean_sum": statistics.fmean(sums) if sums else float("nan"),
            "carry_frac": statistics.fmean(float(a % 10 + b % 10 >= 10) for a, b in (p for p in parsed if p))
            if sums
            else float("nan"),
        }
    return drift


# -- report ------------------------------------------------------------------------


def report(results: dict, args) -> None:
    seeds = sorted(results["start"])
    print(
        f"\nheld-out: {args.heldout} problems; seeds {seeds}; model hidden {args.hidden_size} × {args.layers} layers, "
        f"warm-up {args.sft_steps} steps at lr {args.sft_lr}; every arm {args.steps} optimizer steps at lr {args.lr}; "
        f"LSP: {args.games} games × {args.num_queries} queries × {args.num_answers} answers per step, "
        f"kl_beta {args.kl_beta}; "
        f"GRPO: {args.games * args.num_queries} problems × {args.num_answers} answers per step "
        f"(`grpo`: TRL defaults, std-scaled advantages, loss_type dapo; `grpo_lsp_loss`: scale_rewards none, "
        f"loss_type grpo), beta {args.kl_beta}\n"
    )
    print("| arm | seeds | held-out exact match | paired diff to start | wall time / run (s) |")
    print("|---|---|---|---|---|")
    print(f"| start (warm-up) | {len(seeds)} | {mean_sd([results['start'][s] for s in seeds])} | — | — |")
    arms = [arm for arm in ARMS if results.get(arm)]
    for arm in arms:
        runs = results[arm]
        ran = sorted(runs)
        accs = [runs[s]["acc"] for s in ran]
        diffs = [runs[s]["acc"] - results["start"][s] for s in ran]
        times = [runs[s]["seconds"] for s in ran]
        per_seed = ", ".join(f"{d:+.3f}" for d in diffs)
        seconds = statistics.fmean(times)
        print(f"| {arm} | {len(ran)} | {mean_sd(accs)} | {mean_sd(diffs)} ({per_seed}) | {seconds:.0f} |")

    if results.get("lsp_zero"):
        others = [arm for arm in arms if arm != "lsp_zero"]
        print("\npaired difference to `lsp_zero` (same seed, same start): arm − lsp_zero, mean ± sd (per seed)\n")
        print("| arm | seeds | arm − lsp_zero |")
        print("|---|---|---|")
        for arm in others:
            both = sorted(set(results[arm]) & set(results["lsp_zero"]))
            if both:
                diffs = [results[arm][s]["acc"] - results["lsp_zero"][s]["acc"] for s in both]
                per_seed = ", ".join(f"{d:+.3f}" for d in diffs)
                print(f"| {arm} | {len(both)} | {mean_sd(diffs)} ({per_seed}) |")

    steps = sorted({step for arm in arms for run in results[arm].values() for step in run["curve"]})
    if steps:
        print("\nheld-out exact match along training (checkpoints; mean ± sd over the seeds the arm ran)\n")
        print("| arm | 0 | " + " | ".join(str(s) for s in steps) + " |")
        print("|---" * (len(steps) + 2) + "|")
        for arm in arms:
            runs = results[arm]
            cells = [mean_sd([results["start"][s] for s in runs])]
            cells += [mean_sd([runs[s]["curve"][step] for s in runs]) for step in steps]
            print(f"| {arm} | " + " | ".join(cells) + " |")

    for arm in (a for a in ARMS if a.startswith("grpo")):
        runs = results.get(arm) or {}
        if not runs:
            continue
        print(f"\n{arm}: TRL's metrics, first → last step [mean of the first {WINDOW} → last {WINDOW} steps], "
              "per seed")
        print()
        print("| seed | " + " | ".join(GRPO_TAGS) + " |")
        print("|---" * (len(GRPO_TAGS) + 1) + "|")
        for s in sorted(runs):
            traces = (runs[s]["trace"][t] for t in GRPO_TAGS)
            cells = [f"{a:.3f} → {b:.3f} [{c:.3f} → {d:.3f}]" for a, b, c, d in traces]
            print(f"| {s} | " + " | ".join(cells) + " |")

    for arm in ("lsp_zero", "lsp"):
        runs = results.get(arm) or {}
        if not runs:
            continue
        print(f"\n{arm}: first → last step [mean of the first {WINDOW} → last {WINDOW} steps], per seed\n")
        print("| seed | " + " | ".join(LSP_TAGS) + " |")
        print("|---" * (len(LSP_TAGS) + 1) + "|")
        for s in sorted(runs):
            cells = [f"{a:.3f} → {b:.3f} [{c:.3f} → {d:.3f}]" for a, b, c, d in (runs[s]["trace"][t] for t in LSP_TAGS)]
            print(f"| {s} | " + " | ".join(cells) + " |")
        print(f"\n{arm}: logged Challenger queries, first vs last {WINDOW} steps (per seed)\n")
        print("| seed | queries | well-formed | mean A+B | needs a carry |")
        print("|---|---|---|---|---|")
        for s in sorted(runs):
            for name in ("first", "last"):
                d = runs[s]["drift"][name]
                print(
                    f"| {s} {name} | {d['queries']} | {d['well_formed']:.2f} | {d['mean_sum']:.1f} | {d['carry_frac']:.2f} |"
                )
        first = min(runs)
        print(f"\n{arm} seed {first}, samples of the last step:\n")
        for row in runs[first]["samples"]:
            print(f"    {json.dumps(row)}")


# -- main --------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="outputs/lsp_arithmetic")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--heldout", type=int, default=200)
    parser.add_argument("--heldout-seed", type=int, default=12345)
    parser.add_argument("--sft-rows", type=int, default=4096, help="both-role rows before held-out filtering")
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--sft-steps", type=int, default=1000, help="warm-up steps (batch 32) to the weak start")
    parser.add_argument("--sft-lr", type=float, default=1e-3)
    parser.add_argument("--steps", type=int, default=80, help="optimizer steps of every arm")
    parser.add_argument("--lr", type=float, default=3e-4, help="learning rate of every arm")
    parser.add_argument("--games", type=int, default=2, help="LSP games per step (micro_batch_size)")
    parser.add_argument("--num-queries", type=int, default=8)
    parser.add_argument("--num-answers", type=int, default=4)
    parser.add_argument("--kl-beta", type=float, default=0.04)
    parser.add_argument("--challenger-weight", type=float, default=1.0, help="LSP arms: selfplay.lsp.challenger_weight")
    parser.add_argument("--sft-batch-size", type=int, default=32, help="SFT arm micro_batch_size")
    parser.add_argument("--arms", nargs="+", default=ARMS, choices=ARMS)
    parser.add_argument("--self-reward-seeds", type=int, default=1, help="seeds that also run the `lsp` arm")
    parser.add_argument("--start-only", action="store_true", help="build and evaluate the starts, then stop")
    parser.add_argument("--eval-every", type=int, default=20, help="also evaluate a checkpoint every N steps")
    parser.add_argument("--tag", default="", help="suffix of the arms' run directories (tuning runs)")
    parser.add_argument("--on-dev", action="store_true", help="evaluate on the dev split (for tuning)")
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite the tables from WORKDIR/results{TAG}.json of an earlier run"
    )
    add_results_argument(parser)
    args = parser.parse_args()

    if args.report_only:
        saved = json.loads((Path(args.workdir) / f"results{args.tag}.json").read_text())
        results = {
            arm: {int(seed): run for seed, run in runs.items()} if isinstance(runs, dict) else runs
            for arm, runs in saved.items()
        }
        for runs in results.values():
            for run in runs.values() if isinstance(runs, dict) else ():
                if isinstance(run, dict):
                    run["curve"] = {int(step): acc for step, acc in run["curve"].items()}
        render(results, args)
        return

    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    # One draw, split: the held-out set reported, and a dev set of the same size
    # that hyper-parameters were tuned on (`--on-dev`); the SFT data has neither.
    problems = heldout_problems(2 * args.heldout, args.heldout_seed)
    heldout, dev = problems[: args.heldout], problems[args.heldout :]
    data = work / "arithmetic_sft.jsonl"
    kept = write_sft_data(data, args.sft_rows, problems)
    print(f"SFT data: {kept} rows ({args.sft_rows - kept} Solver rows on held-out/dev problems dropped)", flush=True)
    grpo_prompts = work / "arithmetic_grpo_prompts.jsonl"
    print(f"GRPO prompts: {write_grpo_data(grpo_prompts, problems)} problems (held-out/dev excluded)", flush=True)
    if args.on_dev:
        print("evaluating on the DEV set (tuning run)", flush=True)
        heldout = dev

    results: dict = {"start": {}, **{arm: {} for arm in ARMS}}
    began = time.monotonic()
    for index, seed in enumerate(args.seeds):
        start_dir = work / f"start-{seed}"
        t0 = time.monotonic()
        build_start(start_dir, data, args, seed)
        results["start"][seed] = evaluate(start_dir, heldout)
        print(f"seed {seed}: start {results['start'][seed]:.3f} ({time.monotonic() - t0:.0f}s)", flush=True)
        if args.start_only:
            continue
        for arm in args.arms:
            if arm == "lsp" and index >= args.self_reward_seeds:
                continue
            out = work / f"{arm}{args.tag}-{seed}"
            if out.exists():
                shutil.rmtree(out)  # TensorBoard events and lsp_samples.jsonl would accumulate
            if arm == "sft":
                cfg = sft_config(start_dir, out, seed, args, data)
            elif arm.startswith("grpo"):
                cfg = grpo_config(start_dir, out, seed, args, grpo_prompts, variant=arm)
            else:
                cfg = lsp_config(start_dir, out, seed, args, self_reward=(arm == "lsp"))
            seconds = train(cfg, out)
            run = {"acc": evaluate(out, heldout), "seconds": seconds, "curve": curve(out, heldout)}
            if arm.startswith("grpo"):
                run["trace"] = grpo_trace(out)
            elif arm != "sft":
                run["trace"] = lsp_trace(out)
                run["samples"] = last_samples(out)
                run["drift"] = query_drift(out)
            results[arm][seed] = run
            print(f"seed {seed}: {arm} {run['acc']:.3f} ({seconds:.0f}s)", flush=True)
    results["wall_seconds"] = time.monotonic() - began
    (work / f"results{args.tag}.json").write_text(json.dumps(results, indent=1, default=str))
    render(results, args)


def render(results: dict, args) -> None:
    wall = results.pop("wall_seconds", None)
    tables = io.StringIO()
    with redirect_stdout(tables):
        report(results, args)
        if wall is not None:
            print(f"\nWhole run (starts, arms, evaluations): {wall / 60:.1f} min.")
    write_results(args.results, "lsp_arithmetic", tables.getvalue())


if __name__ == "__main__":
    main()
