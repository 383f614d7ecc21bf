"""The demo's "what you should see": reads a finished run's outputs and prints what self-play did.

    python scripts/demo_summary.py spin outputs/tiny-spin --start outputs/tiny-model
    python scripts/demo_summary.py lsp outputs/tiny-lsp --start outputs/tiny-arithmetic \
        --sft-data example_configs/data/arithmetic_sft.jsonl

spin (also spin_chi2): per iteration t, from `selfplay/iter_t.jsonl` (the y' that the model after
t iterations sampled for every training prompt) the fraction of y' identical to the real response
y and the mean log-prob of y under that model; from the TensorBoard log the iteration's
`rewards/accuracies` and `rewards/margins`. Then the start and the trained model are measured the
same way (4 samples per prompt, greedy decoding, log-prob of y), and two example prompts show y and
y' at every iteration: the first prompt (in file order) whose greedy answer went from wrong to y, and the
first whose greedy answer is not y after training, each labelled as such.

lsp: the Solver's greedy exact match before and after on every addition problem of the task that is
no Solver row of the warm-up data (about 2,260), with the standard error of the paired change and
the spread over training seeds measured for the demo's setting, and whether the change is larger
than twice that noise; two held-out problems chosen by a stated rule (one that went from wrong to
right, one that did not); then what LSP did: its metrics first -> last steps (`lsp/solver_reward`,
measured on the Challenger's own problems, so no accuracy; `lsp/zero_std_frac`; the Challenger's
degenerate and distinct queries; the KL) and the first query of the first and last step.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def scalars(run: Path) -> dict[str, dict[int, float]]:
    """Every logged scalar of the run's TensorBoard log: tag -> {step: value}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values: dict[str, dict[int, float]] = {}
    for events in sorted(run.joinpath("runs").rglob("events.out.tfevents.*")):
        log = EventAccumulator(str(events.parent), size_guidance={"scalars": 0})
        log.Reload()
        for tag in log.Tags()["scalars"]:
            values.setdefault(tag.removeprefix("train/"), {}).update({e.step: e.value for e in log.Scalars(tag)})
    return values


def halves(values: list[float]) -> str:
    """'first half -> second half' of an iteration's logged steps (per-step values are 8-pair batches)."""
    half = max(len(values) // 2, 1)
    return f"{statistics.fmean(values[:half]):5.2f} -> {statistics.fmean(values[half:] or values):5.2f}"


def load_model(model_dir: Path):
    import logging

    # Keep the summary readable: torchao's and torch's import-time warnings, the loading bar.
    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    return tokenizer, model


def measure(model_dir: Path, rows: list[dict], max_new_tokens: int, samples: int = 4, seed: int = 0) -> dict:
    """A model on the training prompts: `samples` y' per prompt sampled as the run samples (temperature 1,
    no top-k/top-p), the fraction identical to y, greedy decoding's exact match, and the mean log π(y|x)."""
    import torch

    tokenizer, model = load_model(model_dir)
    tokenizer.padding_side = "left"
    torch.manual_seed(seed)
    pad, sampled, greedy, logps = tokenizer.pad_token, [], [], []
    for start in range(0, len(rows), 32):
        batch = rows[start : start + 32]
        prompts = tokenizer([r["prompt"] for r in batch], add_special_tokens=False, padding=True, return_tensors="pt")
        common = dict(max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        with torch.no_grad():
            out = model.generate(**prompts, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                 num_return_sequences=samples, **common)
            texts = tokenizer.batch_decode(out[:, prompts["input_ids"].shape[1] :])
            sampled += [[t.replace(pad, "") for t in texts[k : k + samples]] for k in range(0, len(texts), samples)]
            out = model.generate(**prompts, do_sample=False, **common)
            greedy += [t.replace(pad, "") for t in tokenizer.batch_decode(out[:, prompts["input_ids"].shape[1] :])]
            for r in batch:  # log π(y|x), one row at a time: no padding to get wrong
                x = tokenizer(r["prompt"], add_special_tokens=False)["input_ids"]
                y = tokenizer(r["real"], add_special_tokens=False)["input_ids"]
                logits = model(torch.tensor([x + y])).logits[0, len(x) - 1 : -1]
                logps.append(float(torch.log_softmax(logits, -1).gather(1, torch.tensor(y)[:, None]).sum()))
    n = len(rows)
    return {
        "sampled": sampled,
        "greedy_answers": greedy,
        "identical": sum(y == r["real"] for ys, r in zip(sampled, rows) for y in ys) / (n * samples),
        "greedy": sum(y == r["real"] for y, r in zip(greedy, rows)) / n,
        "logp": statistics.fmean(logps),
    }


def spin_summary(run: Path, start: Path, max_new_tokens: int) -> None:
    iterations = [
        [json.loads(line) for line in path.open()]
        for path in sorted(run.glob("selfplay/iter_*.jsonl"), key=lambda p: int(p.stem.split("_")[1]))
    ]
    logs = scalars(run)
    step_iteration = logs["selfplay/iteration"]
    n = len(iterations[0])
    print(f"\n=== what you should see: {run} ({n} training prompts, {len(iterations)} iterations)")
    print("y = the real response; y' = the model's own sample for the same prompt (temperature 1), one per prompt")
    print("and iteration, from selfplay/iter_<t>.jsonl. logp(y): mean log-prob of y under the model that sampled.")
    print("rewards/accuracies, rewards/margins: first half -> second half of the iteration's training steps.\n")
    print("iteration  y' identical to y  logp(y)   rewards/accuracies   rewards/margins")
    for t, rows in enumerate(iterations):
        steps = sorted(s for s, it in step_iteration.items() if round(it) == t)
        accuracies = halves([logs["rewards/accuracies"][s] for s in steps])
        margins = halves([logs["rewards/margins"][s] for s in steps])
        identical = sum(r["status"] == "identical" for r in rows)
        logp = statistics.fmean(r["ref_logp_real"] for r in rows)
        print(f"{t:<10} {f'{identical}/{n} = {identical / n:.0%}':>18} {logp:>8.2f}   {accuracies:>18}   {margins:>15}")

    rows = iterations[0]
    before, after = measure(start, rows, max_new_tokens), measure(run, rows, max_new_tokens)
    print(f"\nbefore vs after, on the same {n} prompts (4 samples y' per prompt; greedy: the most likely answer):")
    print(f"{'model':<44}  y' identical to y  greedy = y  logp(y)")
    for name, m in ((f"start ({start})", before), (f"trained ({run})", after)):
        print(f"{name:<44} {m['identical']:>18.0%} {m['greedy']:>11.0%} {m['logp']:>8.2f}")

    # Two examples, chosen by a fixed rule (stated in the output), not picked by hand.
    print("\nTwo examples, by a fixed rule: the first training prompt (in file order) whose greedy answer was")
    print("wrong at the start and equals y after training, and the first whose greedy answer is still not y")
    print("after training (wrong before and after, or right before and wrong after).")
    fixed = [i for i, r in enumerate(rows) if before["greedy_answers"][i] != r["real"] and after["greedy_answers"][i] == r["real"]]
    unfixed = [i for i, r in enumerate(rows) if after["greedy_answers"][i] != r["real"]]
    for title, chosen, none in (
        ("changed for the better (greedy answer wrong at the start, equal to y after training)", fixed,
         "no prompt changed for the better: none went from a wrong greedy answer to y"),
        ("did not get better", unfixed, "none: every greedy answer of the trained model equals y"),
    ):
        if not chosen:
            print(f"\n{none}")
            continue
        i = chosen[0]
        if title == "did not get better":
            title = ("got worse (greedy answer equal to y at the start, not after training)"
                     if before["greedy_answers"][i] == rows[i]["real"] else "did not change for the better (greedy answer wrong before and after)")
        question = rows[i]["prompt"].split("<|im_start|>user\n")[-1].split("<|im_end|>")[0]
        print(f"\n{title}:")
        print(f"  prompt {question!r}, real y = {rows[i]['real']!r}")
        print(f"  greedy, start          {before['greedy_answers'][i]!r}")
        print(f"  greedy, trained        {after['greedy_answers'][i]!r}")
        print("  and the run's sampled y' for it (temperature 1, one sample per iteration: noisy, often malformed):")
        for t, it_rows in enumerate(iterations):
            print(f"    iteration {t:<3} {it_rows[i]['generated']!r}")
    worse = sum(before["greedy_answers"][i] == r["real"] != after["greedy_answers"][i] for i, r in enumerate(rows))
    print(f"\n(of the {n} greedy answers, {len(fixed)} went from wrong to y, {worse} from y to wrong; "
          f"{len(unfixed)} are not y after training)")

    print("\nWhat it means: within every iteration rewards/accuracies rise and the margins grow: the model")
    print("learns to tell the real responses from its own samples. Whether that brings it closer to the data")
    print(f"shows from start to end: logp(y) {before['logp']:.2f} -> {after['logp']:.2f}, greedy answers equal to y "
          f"{before['greedy']:.0%} -> {after['greedy']:.0%}")
    print("(higher is closer). Sampled at temperature 1 the tiny model still spreads its probability, so the")
    print(f"identical-y' fraction moves less ({before['identical']:.0%} -> {after['identical']:.0%} over 4 samples per prompt), "
          "and with one sample per prompt")
    print("each iteration's fraction is noisy (+-5 points). At this scale self-play does not beat more SFT")
    print("(benchmarks/RESULTS.md, weak-to-strong).")


# The demo's LSP run (example_configs/tiny-lsp-cpu.yml from the 300-step warm-up) repeated with
# training seeds 42, 43, 44 from the same start: held-out change +0.004, +0.000, +0.004 (9, 1 and 8
# more problems right than wrong, of 2,260), so about 0.002 of spread between runs.
SEED_SPREAD = 0.002
SEED_NOTE = "+0.004, +0.000, +0.004 with seeds 42, 43, 44"


def heldout_problems(sft_data: Path) -> list[tuple[int, int]]:
    """Every addition problem of the task (operands 0..49, in order) that is no Solver row of the
    warm-up data: about 2,260 problems, so one evaluation's standard error is under a point."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from example_configs.rewards.arithmetic import MAX_OPERAND, parse_question

    seen = set()
    for line in sft_data.open():
        operands = parse_question(json.loads(line)["messages"][0]["content"])
        if operands:
            seen.add(operands)
    return [(a, b) for a in range(MAX_OPERAND + 1) for b in range(MAX_OPERAND + 1) if (a, b) not in seen]


def solver_answers(model_dir: Path, problems: list[tuple[int, int]]) -> list[str]:
    """The Solver's greedy answers (stripped, as the reward compares them)."""
    import torch

    tokenizer, model = load_model(model_dir)
    tokenizer.padding_side = "left"
    answers = []
    for start in range(0, len(problems), 256):
        batch = problems[start : start + 256]
        prompts = [
            tokenizer.apply_chat_template([{"role": "user", "content": f"What is {a}+{b}?"}], tokenize=False,
                                          add_generation_prompt=True)
            for a, b in batch
        ]
        inputs = tokenizer(prompts, add_special_tokens=False, padding=True, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**inputs, do_sample=False, max_new_tokens=6, eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.pad_token_id)
        answers += [t.strip() for t in tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)]
    return answers


def lsp_summary(run: Path, start: Path, sft_data: Path) -> None:
    logs = scalars(run)
    series = {tag: [v for _, v in sorted(logs[tag].items())] for tag in
              ("lsp/solver_reward", "lsp/zero_std_frac", "lsp/kl", "lsp/degenerate_query_frac", "lsp/distinct_query_frac")}
    steps = len(series["lsp/solver_reward"])
    k = max(steps // 5, 1)

    def trend(tag: str) -> str:
        values = series[tag]
        return f"{statistics.fmean(values[:k]):.3f} -> {statistics.fmean(values[-k:]):.3f}"

    problems = heldout_problems(sft_data)
    n = len(problems)
    answers_before = solver_answers(start, problems)
    right_before = [answer == str(a + b) for answer, (a, b) in zip(answers_before, problems)]
    answers_after = solver_answers(run, problems)
    right_after = [answer == str(a + b) for answer, (a, b) in zip(answers_after, problems)]
    before, after = sum(right_before) / n, sum(right_after) / n
    gained = sum(a and not b for a, b in zip(right_after, right_before))
    lost = sum(b and not a for a, b in zip(right_after, right_before))
    change = (gained - lost) / n
    # The standard error of the paired change (the same problems before and after), from the
    # problems whose verdict changed; and of one accuracy estimate (binomial).
    se_change = max(gained + lost - (gained - lost) ** 2 / n, 0.0) ** 0.5 / n
    se_accuracy = (after * (1 - after) / n) ** 0.5

    print(f"\n=== what you should see: {run} ({steps} LSP steps, no training data)")
    print(f"held-out Solver accuracy: greedy exact match on all {n} problems 'What is A+B?' (A, B in 0..49)")
    print("that are not a Solver row of the warm-up data:")
    print(f"  before (the warmed-up start, {start}): {before:.3f}")
    print(f"  after  ({run}): {after:.3f}")
    print(f"  change {change:+.3f} ({gained} problems went from wrong to right, {lost} from right to wrong);")
    print(f"  noise: standard error of this paired change {se_change:.3f}, of one accuracy {se_accuracy:.3f};")
    print(f"  over training seeds the change varied by about {SEED_SPREAD:.3f} (sd, measured: {SEED_NOTE})")
    if abs(change) > 2 * max(se_change, SEED_SPREAD):
        print(f"  -> the change is larger than twice its noise: LSP {'raised' if change > 0 else 'lowered'} held-out accuracy.")
    else:
        print("  -> the change is within twice its noise: at this size and length LSP's effect on held-out")
        print("     accuracy does not show; what LSP does is below.")

    print("\nTwo held-out problems, by a fixed rule (in A, B order): the first that went from wrong to right;")
    print("then the first that went from right to wrong or, if none did, the first still wrong after training.")
    went_right = [i for i in range(n) if right_after[i] and not right_before[i]]
    went_wrong = [i for i in range(n) if right_before[i] and not right_after[i]]
    still_wrong = [i for i in range(n) if not right_after[i] and not right_before[i]]
    picks = [("changed for the better", went_right)]
    picks.append(("got worse", went_wrong) if went_wrong else ("did not change for the better", still_wrong))
    for title, chosen in picks:
        if not chosen:
            print(f"  {title}: none")
            continue
        i = chosen[0]
        a, b = problems[i]
        print(f"  {title + ':':<31} What is {a}+{b}? (= {a + b})  before {answers_before[i]!r}, after {answers_after[i]!r}")

    print(f"\nWhat LSP did, from the run's metrics (first {k} -> last {k} steps; TensorBoard: {run}/runs):")
    print(f"  lsp/solver_reward          {trend('lsp/solver_reward')}   the Solver's reward on the Challenger's own problems")
    print(f"  lsp/zero_std_frac          {trend('lsp/zero_std_frac')}   groups whose 4 answers all got the same reward (no gradient)")
    print(f"  lsp/degenerate_query_frac  {trend('lsp/degenerate_query_frac')}   Challenger queries that are no addition problem")
    print(f"  lsp/distinct_query_frac    {trend('lsp/distinct_query_frac')}   distinct queries per game")
    print(f"  lsp/kl                     {trend('lsp/kl')}   per-token KL to the start")
    samples = [json.loads(line) for line in run.joinpath("selfplay", "lsp_samples.jsonl").open()]
    for step in (samples[0]["step"], samples[-1]["step"]):
        row = next(r for r in samples if r["step"] == step)
        answers = ", ".join(f"{x['answer']!r}{' (right)' if x['reward'] == 1.0 else ''}" for x in row["answers"])
        print(f"  step {step:<4} Challenger: {row['query']!r}  Solver: {answers}")
    print("(the first query of the first and the last step; all of them: "
          f"{run}/selfplay/lsp_samples.jsonl)")
    print("What it means: the Challenger writes well-formed, distinct problems (it is rewarded for making the")
    print("Solver fail, and a malformed query cannot be failed). The Solver learns only from groups where some")
    print("answers were right and some wrong; with most groups all wrong, most of each step carries no gradient")
    print("and the policy moves little (the KL above). The solver reward is scored on the Challenger's own")
    print("problems, whose difficulty changes, so it is no accuracy: the held-out set is the fixed measure.")
    print("This model (64 wide, 2 layers) is too weak for LSP to show. On a larger tiny model (128 wide, 4 layers)")
    print("warmed up to ~17%, 80 steps of LSP-Zero and of Axolotl's GRPO (with the problems as data) did not raise")
    print("held-out accuracy either; from a stronger start (~22%) both gained about 2.5 points, LSP-Zero matching")
    print("GRPO (2 seeds). benchmarks/RESULTS.md, LSP on arithmetic; the demo's settings tried: tiny-lsp-cpu.yml.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["spin", "lsp"])
    parser.add_argument("run", type=Path, help="the run's output_dir")
    parser.add_argument("--max-new-tokens", type=int, default=24, help="spin: as selfplay.generation.max_new_tokens")
    parser.add_argument("--start", type=Path, help="the model the run started from (base_model)")
    parser.add_argument("--sft-data", type=Path, help="lsp: the warm-up data (its problems are left out)")
    args = parser.parse_args()
    if args.kind == "spin":
        spin_summary(args.run, args.start, args.max_new_tokens)
    else:
        lsp_summary(args.run, args.start, args.sft_data)


if __name__ == "__main__":
    main()
