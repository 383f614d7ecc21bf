"""Opponent generation: our generator vs one written like the official SPIN `generate.py` (CPU).

    python benchmarks/generation_throughput.py [--workdir outputs/bench/generation] [--prompts 256] [--results FILE]

Same model, same prompts (mixed lengths: chat histories of 1–4 conversations),
same `max_new_tokens`, greedy decoding so the outputs are comparable:
- `official-style`: fixed batches of prompts in dataset order, the tokenizer's
  left padding, `model.generate` (what uclaml/SPIN's generate.py does);
- `ours`: `axolotl_selfplay.sampling.hf.generate_responses` (prompts sorted by
  length, hand-made left padding, rows that end their turn leave the running batch
  and its KV cache, cut at the first end of turn).
Reports useful tokens per second (generated tokens up to and including the
first end of turn) and the useful-token efficiency: useful tokens / decode
slots computed (rows × decode steps: official-style, every row of a batch until its
longest response ends; ours, as the generator counts them), i.e. how much of the
work is padding. Each generator
runs `--repeats` times, the two in alternating order (after one untimed pass of each with
`--warmup`); the median time is used. Ratios measured
side by side are the result; absolute numbers on these shared CPUs are noise.

The efficiency depends only on the model's greedy response lengths, so the model
is rebuilt and warmed up deterministically on every run (seed 0, one thread:
multi-threaded float sums differ in the last bits, and greedy lengths with them),
and the table reports the response-length distribution it was measured on.

Needs the project venv. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import CHAT_DATA as DATA
from bench_common import add_results_argument, machine, markdown_table, write_results


def mixed_prompts(tokenizer, count: int, seed: int) -> list[list[int]]:
    """Chat histories of 1–4 bundled conversations, ending with the generation prompt."""
    conversations = [json.loads(line)["messages"] for line in DATA.read_text().splitlines()]
    rng = random.Random(seed)
    prompts = []
    for index in range(count):
        history = [m for conv in rng.sample(conversations, 1 + index % 4) for m in conv][:-1]
        text = tokenizer.apply_chat_template(history, tokenize=False, add_generation_prompt=True)
        prompts.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    rng.shuffle(prompts)
    return prompts


def long_reply_chats(path: Path, seed: int = 0) -> None:
    """The bundled chats with each last reply replaced by 1–12 bundled replies joined: a model
    warmed up on them ends its turn after tens to hundreds of tokens, at varied lengths."""
    conversations = [json.loads(line)["messages"] for line in DATA.read_text().splitlines()]
    replies = [m["content"] for conv in conversations for m in conv if m["role"] == "assistant"]
    rng = random.Random(seed)
    with open(path, "w") as handle:
        for conv in conversations:
            reply = " ".join(rng.sample(replies, rng.randint(1, 12)))
            handle.write(json.dumps({"messages": conv[:-1] + [{"role": "assistant", "content": reply}]}) + "\n")


def useful(tokens: list[int], eos: int) -> int:
    return tokens.index(eos) + 1 if eos in tokens else len(tokens)


@torch.no_grad()
def official_style(model, tokenizer, prompts, batch_size, max_new_tokens):
    tokenizer.padding_side = "left"
    outputs, slots = [], 0
    for start in range(0, len(prompts), batch_size):  # dataset order, fixed batches
        batch = tokenizer.pad({"input_ids": prompts[start : start + batch_size]}, return_tensors="pt").to(model.device)
        generated = model.generate(
            **batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )[:, batch["input_ids"].shape[1] :]
        rows = [row.tolist() for row in generated]
        outputs += [row[: useful(row, tokenizer.eos_token_id)] for row in rows]
        slots += generated.shape[0] * generated.shape[1]
    return outputs, slots


def ours(model, tokenizer, prompts, batch_size, max_new_tokens):
    from axolotl_selfplay.sampling.hf import generate_responses
    from axolotl_selfplay.sampling.spec import SamplingSpec

    stats = {}  # decode slots as the generator computed them: ended rows leave the batch
    results = generate_responses(
        model, prompts, spec=SamplingSpec.greedy(max_new_tokens), pad_token_id=tokenizer.pad_token_id,
        eos_token_ids={tokenizer.eos_token_id}, batch_size=batch_size, seed=0, stats=stats,
    )
    return [tokens for tokens, _ in results], stats["decode_slots"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="outputs/bench/generation")
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default 64, 256 with --long-replies")
    parser.add_argument("--long-replies", action="store_true",
                        help="warm the model up on replies of 1-12 joined sentences (responses of tens to hundreds of tokens)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", action="store_true",
                        help="one untimed pass of each generator on the first batch of prompts before timing "
                             "(a GPU's first calls pay for kernel loading, autotuning and allocator growth)")
    add_results_argument(parser)
    parser.add_argument("--model-dir", help="use this model instead of building the warmed-up tiny one")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", help="float32 or bfloat16")
    args = parser.parse_args()
    args.max_new_tokens = args.max_new_tokens or (256 if args.long_replies else 64)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from axolotl_selfplay.tiny_models import build_tiny_model, warm_up

    work = Path(args.workdir).resolve() / ("long" if args.long_replies else "short")
    if args.model_dir:
        model_dir = Path(args.model_dir)
    else:
        model_dir = work / "model"
        warm_data = DATA
        if args.long_replies:
            work.mkdir(parents=True, exist_ok=True)
            warm_data = work / "long_replies.jsonl"
            long_reply_chats(warm_data)
        # warmed up so responses end at varied lengths, as a real SFT model's do; rebuilt every
        # run on one thread with a fixed seed, so the model (and its greedy lengths) never vary
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        build_tiny_model(str(model_dir), data_file=str(DATA), hidden_size=256, num_layers=4, seed=0)
        warm_up(str(model_dir), str(warm_data), steps=300, seed=0)
        torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(
        str(model_dir), attn_implementation="sdpa", dtype=getattr(torch, args.dtype)
    ).to(args.device).eval()
    prompts = mixed_prompts(tokenizer, args.prompts, seed=0)

    runs = {"official-style": official_style, "ours": ours}
    times = {name: [] for name in runs}
    prefill = {name: [] for name in runs}  # max_new_tokens 1: the prompts' forward and one step
    results = {}
    if args.warmup:
        for generate in runs.values():
            generate(model, tokenizer, prompts[: args.batch_size], args.batch_size, args.max_new_tokens)
    for repeat in range(args.repeats):
        # alternating the order: whichever runs second would otherwise always find warmer caches and clocks
        order = list(runs.items()) if repeat % 2 == 0 else list(reversed(runs.items()))
        for name, generate in order:
            start = time.perf_counter()
            results[name] = generate(model, tokenizer, prompts, args.batch_size, args.max_new_tokens)
            times[name].append(time.perf_counter() - start)
            start = time.perf_counter()
            generate(model, tokenizer, prompts, args.batch_size, 1)
            prefill[name].append(time.perf_counter() - start)

    lengths = [len(p) for p in prompts]
    rows, rates = [], {}
    for name, (outputs, slots) in results.items():
        tokens = sum(len(o) for o in outputs)
        seconds = statistics.median(times[name])
        rates[name] = tokens / seconds
        first = statistics.median(prefill[name])
        rows.append([name, f"{seconds:.1f}", f"{first:.1f} / {max(seconds - first, 0):.1f}", f"{rates[name]:.0f}",
                     f"{tokens / slots:.2f}"])
    rows.append(["ratio ours / official-style", "", "", f"**{rates['ours'] / rates['official-style']:.2f}×**", ""])
    # both return outputs in prompt order; greedy, so they must agree token for token
    same = sum(a == b for a, b in zip(results["ours"][0], results["official-style"][0]))
    replies = sorted(len(o) for o in results["ours"][0])

    def quantile(q):
        return replies[min(len(replies) - 1, int(q * len(replies)))]

    text = (
        f"{len(prompts)} prompts of {min(lengths)}–{max(lengths)} tokens (median {statistics.median(lengths):.0f}), "
        f"batch {args.batch_size}, max_new_tokens {args.max_new_tokens}, greedy; response lengths (tokens, end of "
        f"turn included): min {replies[0]}, p25 {quantile(0.25)}, median {quantile(0.5)}, p75 {quantile(0.75)}, "
        f"p90 {quantile(0.9)}, max {replies[-1]}, {sum(n == args.max_new_tokens for n in replies)} hit max_new_tokens. "
        f"Identical greedy outputs: {same}/{len(prompts)}. Measured on {machine()}.\n\n"
        + markdown_table(["generator", "time (s)", "of which prompts + first token / the rest (s)", "useful tokens/s",
                          "efficiency (useful / decode slots)"], rows)
        + "\n"
    )
    write_results(args.results, "generation_throughput" + ("_long" if args.long_replies else ""), text)


if __name__ == "__main__":
    main()
