"""Host memory of the opponent store and of θ_0, one node of `--world` ranks (CPU).

    python benchmarks/host_memory.py [--examples 50000] [--world 8] [--baseline-checkout ../main]

Opponent store: a synthetic store of `--examples` prompts (128–384 tokens, mean 256),
real responses (256–768, mean 512) and `history` 2 iterations of opponents (256–768
each), token ids drawn from a 131072-token vocabulary, built the way the trainer
builds it (rows streamed in; the rollout's result installed). Each arm runs in a
fresh process and reports the growth of its RSS over the process with its imports
done, per token it stores:
- `before`: the store of `--baseline-checkout` (Python int lists; every rank holds
  every example, and the rollout's `gather_object` ships every pool to every rank):
  measured on one rank; a node holds `--world` identical copies;
- `after, 1 rank`: this checkout's store in a one-process run (int32 arrays);
- `after, rank r of W`: this checkout's store on each rank of a W-rank node (each rank
  holds the tokens of its examples and everyone's metadata), every rank measured.

θ_0 (`kl_to_base` with full fine-tuning): W forked processes (gloo) each holding the
same model, as DDP / DeepSpeed replicate it; the CPU bytes each keeps for θ_0 before
(a full copy per rank) and after (its part of every tensor), and a check that swapping
θ_0 in and out restores the weights bit for bit.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import REPO, add_results_argument, free_port, machine, markdown_table, write_results

VOCAB = 131072
HISTORY = 2


def example(i: int, tokens: bool = True):
    """Example i's prompt, real response and HISTORY opponents: token lists, or only their
    lengths when `tokens` is False (deterministic per example)."""
    import numpy as np

    rng = np.random.default_rng(i)
    lengths = [int(rng.integers(128, 385)), int(rng.integers(256, 769))] + [int(n) for n in rng.integers(256, 769, HISTORY)]
    if not tokens:
        return lengths[0], lengths[1], lengths[2:]
    prompt, real, *opponents = (rng.integers(0, VOCAB, n).tolist() for n in lengths)
    return prompt, real, opponents


def deep_size(root) -> int:
    """Bytes of every object reachable from `root` (each counted once), as sys.getsizeof sees them."""
    import types

    seen, stack, total = set(), [root], 0
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, (type, types.ModuleType, types.FunctionType, types.MethodType)):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        if isinstance(obj, (list, tuple, set)):
            stack.extend(obj)
        elif isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        else:
            if hasattr(obj, "__dict__"):
                stack.append(vars(obj))
            for slot in getattr(type(obj), "__slots__", ()):
                if hasattr(obj, slot):
                    stack.append(getattr(obj, slot))
    return total


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def build_store(kind: str, examples: int, rank: int, world: int, checkout: str) -> dict:
    """Runs inside a fresh process: build one rank's store, report its memory."""
    import gc

    if kind == "before":
        spec = importlib.util.spec_from_file_location("old_opponent", Path(checkout) / "axolotl_selfplay" / "opponent.py")
        opponent = importlib.util.module_from_spec(spec)
        sys.modules["old_opponent"] = opponent
        spec.loader.exec_module(opponent)
    else:
        from axolotl_selfplay.spin import store as opponent
    gc.collect()
    start = rss_kib()
    if kind == "before":  # build_examples' lists, then the store over them
        prompts, reals = zip(*((p, r) for p, r, _ in map(example, range(examples))))
        store = opponent.OpponentStore(list(prompts), list(reals), history=HISTORY)
    else:
        store = opponent.OpponentStore.from_examples(
            ((i, *example(i)[:2]) for i in range(examples)), examples, HISTORY, rank=rank, world=world
        )
    held = 0
    for iteration in range(HISTORY):  # two rollouts installed: the pools hold `history` opponents each
        pools = []
        for i in range(examples):
            mine = kind == "before" or store.holds(i)  # the y' this rank generates (its shard)
            tokens = example(i)[2][iteration] if mine else None
            new = opponent.Opponent(iteration, tokens, False, opponent.USABLE, -1.0)
            if tokens is None:  # another rank's: metadata only, as the rollout gathers it
                new.length = example(i, tokens=False)[2][iteration]
            pools.append(store.retained(i, iteration) + [new])
        store.set_iteration(iteration, [-1.0] * examples, pools)
        del pools
    for i in range(examples):
        if kind == "before" or store.holds(i):
            p, r, o = example(i, tokens=False)
            held += p + r + sum(o)
    gc.collect()
    grown = rss_kib() - start
    return {"held_tokens": held, "grown_kib": grown, "store_bytes": deep_size(store), "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            "nbytes": store.nbytes() if kind != "before" else None}


def measure(kind: str, examples: int, rank: int, world: int, checkout: str) -> dict:
    code = (
        f"import sys, json; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); import host_memory; "
        f"print(json.dumps(host_memory.build_store({kind!r}, {examples}, {rank}, {world}, {checkout!r})))"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- θ_0 -------------------------------------------------------------------------------


def _theta0_rank(rank: int, world: int, port: int, hidden: int, layers: int, out: str) -> None:
    import torch
    import torch.distributed as dist
    from transformers import LlamaConfig, LlamaForCausalLM

    from axolotl_selfplay.scoring.starting_model import StartingModel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=32000, hidden_size=hidden, intermediate_size=4 * hidden,
                                         num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=8))
    before = sum(p.numel() * p.element_size() for p in model.parameters())  # the old full CPU copy per rank
    starting = StartingModel({})
    starting.snapshot(model)
    after = sum(t.numel() * t.element_size() for t in starting._weights.values())
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5)
    moved = [p.detach().clone() for p in model.parameters()]
    with starting.active(model):
        pass
    exact = all(torch.equal(a, b) for a, b in zip(moved, model.parameters()))
    Path(out, f"rank{rank}.json").write_text(json.dumps({"before": before, "after": after, "exact": exact}))
    dist.destroy_process_group()


def theta0(world: int, hidden: int, layers: int, workdir: Path) -> list[dict]:
    import torch.multiprocessing as mp

    port = free_port()
    out = workdir / "theta0"
    out.mkdir(parents=True, exist_ok=True)
    mp.start_processes(_theta0_rank, args=(world, port, hidden, layers, str(out)), nprocs=world, start_method="fork")
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("outputs/bench/host_memory"))
    parser.add_argument("--examples", type=int, default=50000)
    parser.add_argument("--world", type=int, default=8)
    parser.add_argument("--baseline-checkout", default=None, help="a checkout of the version to compare with (e.g. main)")
    parser.add_argument("--baseline-examples", type=int, default=10000,
                        help="examples in the baseline's store (its bytes per token do not depend on it; 50k take ~5 GB)")
    parser.add_argument("--theta0-hidden", type=int, default=512)
    parser.add_argument("--theta0-layers", type=int, default=4)
    add_results_argument(parser)
    args = parser.parse_args()

    def per_token(run):
        return run["store_bytes"] / run["held_tokens"]

    def gib(n_bytes):
        return f"{n_bytes / 2**30:.3f}"

    one = measure("after", args.examples, 0, 1, "")
    ranks = [measure("after", args.examples, r, args.world, "") for r in range(args.world)]
    node = sum(r["store_bytes"] for r in ranks)
    rows = []
    if args.baseline_checkout:
        before = measure("before", args.baseline_examples, 0, 1, args.baseline_checkout)
        scale = args.examples / args.baseline_examples
        rows.append([f"before ({Path(args.baseline_checkout).name}), 1 rank", f"{per_token(before):.1f}",
                     f"{gib(before['store_bytes'] * scale)} (×{scale:g} of {args.baseline_examples} examples)",
                     f"{before['peak_kib'] / 2**20:.2f} ({args.baseline_examples} examples)",
                     f"{args.world} copies: {gib(args.world * before['store_bytes'] * scale)}"])
    rows.append(["after, 1 rank", f"{per_token(one):.1f}", gib(one["store_bytes"]), f"{one['peak_kib'] / 2**20:.2f}", "—"])
    worst = max(ranks, key=lambda r: r["store_bytes"])
    rows.append([f"after, each rank of {args.world} (largest shown)", f"{per_token(worst):.1f}", gib(worst["store_bytes"]),
                 f"{max(r['peak_kib'] for r in ranks) / 2**20:.2f}",
                 f"{gib(node)}: **{node / one['store_bytes']:.2f}×** one rank's"])
    store_table = markdown_table(
        ["opponent store", "bytes / stored token", "store (GiB)", "peak RSS of the process (GiB)",
         f"all {args.world} ranks of one node"],
        rows,
    )

    parts = theta0(args.world, args.theta0_hidden, args.theta0_layers, args.workdir)
    full = parts[0]["before"]
    theta_rows = [
        ["before: a full CPU copy per rank", f"{full / 2**20:.0f}", f"{args.world * full / 2**20:.0f}"],
        ["after: each rank its part of every tensor", f"{max(p['after'] for p in parts) / 2**20:.0f}",
         f"{sum(p['after'] for p in parts) / 2**20:.0f}"],
    ]
    theta_table = markdown_table(["θ_0 snapshot", "per rank (MiB)", f"all {args.world} ranks (MiB)"], theta_rows)
    exact = all(p["exact"] for p in parts)
    text = (
        f"{args.examples} examples: prompts 128–384 tokens, real responses and {HISTORY} opponents (history {HISTORY}) "
        f"256–768 tokens each ({one['held_tokens'] / 1e6:.0f}M tokens in all). Store: the bytes of every object the "
        f"store holds (token arrays, per-example metadata, opponent records), per token the rank holds; peak RSS: the "
        f"whole process building it (imports, ~0.3 GiB, included). Measured on {machine()}.\n\n{store_table}\n\n"
        f"θ_0 of a {full / 4 / 1e6:.0f}M-parameter fp32 Llama on {args.world} forked ranks (gloo); swapping θ_0 in and "
        f"out restored every rank's weights bit for bit: {exact}.\n\n{theta_table}\n"
    )
    write_results(args.results, "host_memory", text)


if __name__ == "__main__":
    main()
