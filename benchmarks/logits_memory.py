"""Peak memory where the logits dominate: `rl: spin` vs `rl: dpo` (TRL's DPOTrainer) (CPU).

    python benchmarks/logits_memory.py [--workdir outputs/bench/logits_memory] [--vocab 131072]

A Llama with a large vocabulary and a tiny body (hidden 32, 2 layers: ~8.4M of its
parameters are the embedding and the lm_head), so the (rows × positions × vocabulary)
logits are what a training step's memory is made of. Long rows: prompts of several
chat turns, long replies, and opponents of `--max-new-tokens` tokens (a random model
rarely ends its turn, so most y' use them all). Both arms are real `axolotl train`
runs, full fine-tuning, fp32, AdamW, micro-batch 8 pairs, on the same pairs:
- `spin`: one iteration (generation, scoring, training); log-probs from the last
  hidden states at the response positions, lm_head in chunks (scoring/head.py);
- `dpo`: Axolotl's `rl: dpo` on the SPIN run's own pairs (chosen = y, rejected = y',
  from `selfplay/iter_0.jsonl`), with its live reference model.
Peak memory = the training process's max RSS. The floor of one such process is
printed beside it: `python -c "import axolotl.cli.train"` (torch, transformers,
Axolotl imported) plus the weights, gradients and AdamW moments (4 × the weights).

Needs the project venv (axolotl on PATH). Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (
    CHAT_DATA,
    add_results_argument,
    axolotl_config,
    axolotl_env,
    axolotl_train,
    chat_dataset,
    machine,
    markdown_table,
    read_jsonl,
    write_results,
)


def long_chats(path: Path, rows: int, seed: int = 0) -> None:
    """Chats with a long prompt (several bundled conversations) and a long reply (several replies joined)."""
    conversations = [json.loads(line)["messages"] for line in CHAT_DATA.read_text().splitlines()]
    replies = [m["content"] for conv in conversations for m in conv if m["role"] == "assistant"]
    rng = random.Random(seed)
    with open(path, "w") as handle:
        for _ in range(rows):
            history = [m for conv in rng.sample(conversations, 5) for m in conv][:-1]
            reply = " ".join(rng.sample(replies, 16))
            handle.write(json.dumps({"messages": history + [{"role": "assistant", "content": reply}]}) + "\n")


def big_vocabulary_model(model_dir: Path, vocab: int, hidden: int, layers: int) -> int:
    """The tiny tokenizer grown to `vocab` tokens (`<t123>`-style added tokens, so any sampled id
    decodes to text that encodes back to it) with a Llama of that vocabulary."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from axolotl_selfplay.tiny_models import build_tiny_model

    build_tiny_model(str(model_dir), data_file=str(CHAT_DATA))
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    tokenizer.add_tokens([f"<t{i}>" for i in range(len(tokenizer), vocab)])
    tokenizer.save_pretrained(str(model_dir))
    config = LlamaConfig.from_pretrained(str(model_dir))
    config.update({"vocab_size": vocab, "hidden_size": hidden, "intermediate_size": 2 * hidden, "num_hidden_layers": layers})
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(str(model_dir))
    return sum(p.numel() for p in model.parameters())


PROCESS_FLOOR = "import axolotl.cli.train, resource; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("outputs/bench/logits_memory"))
    parser.add_argument("--vocab", type=int, default=131072)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--label", default="spin (hidden states, lm_head in chunks)", help="the spin row's name")
    parser.add_argument("--spin-only", action="store_true", help="skip the dpo arm (e.g. to measure another checkout)")
    add_results_argument(parser)
    args = parser.parse_args()
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)

    model = work / "model"
    params = big_vocabulary_model(model, args.vocab, args.hidden, args.layers)
    data = work / "long_chats.jsonl"
    long_chats(data, args.rows)
    common = {"micro_batch_size": args.micro_batch, "learning_rate": 1e-5, "sequence_len": 1024, "seed": 0}

    spin_out = work / "spin" / "run"
    cfg = axolotl_config(model, spin_out, rl="spin", datasets=[chat_dataset(data)], **common)
    cfg["selfplay"] = {"iterations": 1, "generation": {"max_new_tokens": args.max_new_tokens, "batch_size": 16}}
    spin = axolotl_train(cfg, spin_out.parent, measure_memory=True)

    # The DPO arm trains on exactly the pairs SPIN trained on.
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model))
    rows = [r for r in read_jsonl(spin_out / "selfplay" / "iter_0.jsonl") if r["status"] == "ok"]
    pairs = work / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": r["prompt"], "chosen": r["real"], "rejected": r["generated"]}) + "\n"
                             for r in rows))
    lengths = {key: [len(tokenizer(r[key], add_special_tokens=False)["input_ids"]) for r in rows]
               for key in ("prompt", "real", "generated")}
    dpo = None
    if not args.spin_only:
        dpo_out = work / "dpo" / "run"
        cfg = axolotl_config(model, dpo_out, rl="dpo", rl_beta=0.1,
                             datasets=[{"path": str(pairs), "type": "passthrough"}], plugins=None, **common)
        dpo = axolotl_train(cfg, dpo_out.parent, measure_memory=True)

    floor_kib = int(subprocess.run([sys.executable, "-c", PROCESS_FLOOR], capture_output=True, text=True,
                                   env=axolotl_env(), check=True).stdout.split()[-1])
    floor = floor_kib / 2**20 + 16 * params / 2**30  # fp32 weights, gradients, two AdamW moments
    try:
        from axolotl_selfplay.scoring.head import CHUNK_BYTES

        chunk = f"lm_head chunk {CHUNK_BYTES // (4 * args.vocab)} positions"
    except ImportError:  # a checkout from before head_logps.py
        chunk = "full logits"

    def mean(values):
        return sum(values) / len(values)

    rows_md = [[args.label, f"{spin.peak_rss_gib:.2f}"]]
    if dpo is not None:
        rows_md += [
            ["TRL DPOTrainer (live reference)", f"{dpo.peak_rss_gib:.2f}"],
            ["**ratio spin / dpo**", f"**{spin.peak_rss_gib / dpo.peak_rss_gib:.2f}**"],
        ]
    rows_md.append(["floor: one process + weights, gradients, AdamW moments", f"{floor:.2f}"])
    text = (
        f"Llama with a {args.vocab}-token vocabulary, hidden {args.hidden} × {args.layers} layers "
        f"({params / 1e6:.1f}M parameters, fp32, AdamW, full fine-tuning), micro-batch {args.micro_batch} pairs, "
        f"{len(rows)} pairs; tokens per row: prompt {mean(lengths['prompt']):.0f}, real reply "
        f"{mean(lengths['real']):.0f}, generated reply {mean(lengths['generated']):.0f} (max {args.max_new_tokens}); "
        f"{chunk}. Measured on {machine()}.\n\n"
        + markdown_table(["arm", "peak RSS (GiB)"], rows_md)
        + "\n"
    )
    write_results(args.results, "logits_memory" + ("_spin_only" if args.spin_only else ""), text)


if __name__ == "__main__":
    main()
