"""`axolotl-selfplay` helper commands.

    axolotl-selfplay check CONFIG.yml [--verbose]

checks a self-play config and its data as `axolotl train` would, without
loading the model (check.py).

    axolotl-selfplay tiny-model DIR [--data FILE.jsonl] [--hidden-size 64] [--layers 2]
                                    [--sft-steps N]

builds, fully offline, a tiny random Llama and a byte-level BPE tokenizer
trained locally (with a ChatML chat template), and saves both to DIR. Tests,
the demo and the benchmarks use it, so nothing is ever downloaded.
`--sft-steps N` then fits the model to the last assistant turn of every
conversation in `--data` for N steps (a quick warm start: a random model
cannot play LSP's roles; it never ends a turn).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|pad|>", "<|endoftext|>", "<|im_end|>", "<|im_start|>"]

_BUILTIN_CORPUS = [
    "user assistant system hello how are you today",
    "What is two plus three? Two plus three is five.",
    "Name a colour. Blue is a colour, and so are red and green.",
    "The quick brown fox jumps over the lazy dog.",
    "Please answer briefly. Sure, here is a short answer.",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20",
]


def _corpus(data_file: str | None) -> list[str]:
    texts = list(_BUILTIN_CORPUS)
    if data_file:
        with open(data_file, encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                for message in row.get("messages", []):
                    texts.append(f"{message['role']}\n{message['content']}")
    return texts


def build_tiny_model(
    output_dir: str,
    data_file: str | None = None,
    vocab_size: int = 512,
    hidden_size: int = 64,
    num_layers: int = 2,
    seed: int = 0,
) -> str:
    """Build and save a tiny Llama + locally trained tokenizer; returns output_dir."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tokenizer_model = Tokenizer(models.BPE())
    tokenizer_model.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer_model.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer_model.train_from_iterator(_corpus(data_file), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer_model,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        unk_token=None,
        model_max_length=2048,
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    os.makedirs(output_dir, exist_ok=True)
    tokenizer.save_pretrained(output_dir)

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(output_dir)
    return output_dir


def warm_up(model_dir: str, data_file: str, steps: int, lr: float = 3e-3, batch_size: int = 32, seed: int = 0) -> None:
    """Plain supervised fine-tuning on the last assistant turn of each row (tiny models only)."""
    import random

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .logprobs import pad_sequences, sequence_logps

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    examples = []
    with open(data_file, encoding="utf-8") as f:
        for line in f:
            messages = json.loads(line)["messages"]
            prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
            reply = messages[-1]["content"] + "<|im_end|>"
            examples.append(
                (tokenizer(prompt, add_special_tokens=False)["input_ids"], tokenizer(reply, add_special_tokens=False)["input_ids"])
            )
    rng = random.Random(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        batch = rng.sample(examples, min(batch_size, len(examples)))
        padded = pad_sequences([p for p, _ in batch], [r for _, r in batch], tokenizer.pad_token_id)
        logits = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits
        loss = -sequence_logps(logits, padded["labels"]).sum() / (padded["labels"] != -100).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.save_pretrained(model_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="axolotl-selfplay", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    from .check import add_check_command, run_check_command

    add_check_command(sub)
    tiny = sub.add_parser("tiny-model", help="build a tiny offline Llama + tokenizer with a chat template")
    tiny.add_argument("output_dir")
    tiny.add_argument("--data", help="chat jsonl ({'messages': [...]}) whose text trains the tokenizer")
    tiny.add_argument("--vocab-size", type=int, default=512)
    tiny.add_argument("--hidden-size", type=int, default=64)
    tiny.add_argument("--layers", type=int, default=2)
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--sft-steps", type=int, default=0, help="warm the model up on --data for N steps")
    tiny.add_argument("--sft-lr", type=float, default=3e-3)
    args = parser.parse_args(argv)
    if args.command == "check":
        return run_check_command(args)
    if args.command == "tiny-model":
        build_tiny_model(args.output_dir, args.data, args.vocab_size, args.hidden_size, args.layers, args.seed)
        if args.sft_steps:
            if not args.data:
                parser.error("--sft-steps needs --data")
            warm_up(args.output_dir, args.data, args.sft_steps, lr=args.sft_lr, seed=args.seed)
        print(f"tiny model and tokenizer written to {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
