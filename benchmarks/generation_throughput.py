"""Opponent generation: our generator vs one written like the official SPIN `generate.py` (CPU).

    python benchmarks/generation_throughput.py [--workdir outputs/generation] [--prompts 256]

Same model, same prompts (mixed lengths: chat histories of 1–4 conversations),
same `max_new_tokens`, greedy decoding so the outputs are comparable:
- `official-style`: fixed batches of prompts in dataset order, the tokenizer's
  left padding, `model.generate` (what uclaml/SPIN's generate.py does);
- `ours`: `axolotl_selfplay.generation.generate_responses` (prompts sorted by
  length, hand-made left padding, cut at the first end of turn).
Reports useful tokens per second (generated tokens up to and including the
first end of turn) and the useful-token efficiency: useful tokens / decode
slots computed (rows × decode steps of every batch; a batch decodes until its
longest response ends), i.e. how much of the work is padding. Each generator
runs `--repeats` times alternately; the median time is used. Ratios measured
side by side are the result; absolute numbers on these shared CPUs are noise.

Needs the project venv. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "example_configs" / "data" / "tiny_chat.jsonl"


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
    from axolotl_selfplay.generation import _length_sorted_batches, generate_responses
    from axolotl_selfplay.sampling import SamplingSpec

    results = generate_responses(
        model, prompts, spec=SamplingSpec.greedy(max_new_tokens), pad_token_id=tokenizer.pad_token_id,
        eos_token_ids={tokenizer.eos_token_id}, batch_size=batch_size, seed=0,
    )
    outputs = [tokens for tokens, _ in results]
    # decode slots: each length-sorted batch runs until its longest response ends
    slots = sum(len(b) * max(len(outputs[i]) for i in b) for b in _length_sorted_batches([len(p) for p in prompts], batch_size))
    return outputs, slots


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="outputs/generation")
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model-dir", help="use this model instead of building the warmed-up tiny one")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", help="float32 or bfloat16")
    args = parser.parse_args()
    torch.set_num_threads(max(torch.get_num_threads(), 1))

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from axolotl_selfplay.cli import build_tiny_model, warm_up

    model_dir = Path(args.model_dir or Path(args.workdir).resolve() / "model")
    if not args.model_dir and not (model_dir / "model.safetensors").exists():
        # warmed up so responses end at varied lengths, as a real SFT model's do
        build_tiny_model(str(model_dir), data_file=str(DATA), hidden_size=256, num_layers=4)
        warm_up(str(model_dir), str(DATA), steps=300)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(
        str(model_dir), attn_implementation="sdpa", dtype=getattr(torch, args.dtype)
    ).to(args.device).eval()
    prompts = mixed_prompts(tokenizer, args.prompts, seed=0)

    runs = {"official-style": official_style, "ours": ours}
    times = {name: [] for name in runs}
    results = {}
    for _ in range(args.repeats):
        for name, generate in runs.items():
            start = time.perf_counter()
            results[name] = generate(model, tokenizer, prompts, args.batch_size, args.max_new_tokens)
            times[name].append(time.perf_counter() - start)

    lengths = [len(p) for p in prompts]
    print(f"{len(prompts)} prompts of {min(lengths)}–{max(lengths)} tokens (median {statistics.median(lengths):.0f}), "
          f"batch {args.batch_size}, max_new_tokens {args.max_new_tokens}, greedy\n")
    print("| generator | time (s) | useful tokens/s | efficiency (useful / decode slots) |")
    print("|---|---|---|---|")
    rates = {}
    for name, (outputs, slots) in results.items():
        tokens = sum(len(o) for o in outputs)
        seconds = statistics.median(times[name])
        rates[name] = tokens / seconds
        print(f"| {name} | {seconds:.1f} | {rates[name]:.0f} | {tokens / slots:.2f} |")
    print(f"| ratio ours / official-style | | {rates['ours'] / rates['official-style']:.2f}× | |")
    # both return outputs in prompt order; greedy, so they must agree token for token
    same = sum(a == b for a, b in zip(results["ours"][0], results["official-style"][0]))
    print(f"\nidentical greedy outputs: {same}/{len(prompts)}")


if __name__ == "__main__":
    main()
