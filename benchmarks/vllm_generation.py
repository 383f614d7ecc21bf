"""Opponent generation with vLLM (CPU build): official-style generator vs ours (HF) vs vLLM colocated
vs vLLM server, side by side on the same model and prompts, greedy so the outputs are comparable.

    python benchmarks/vllm_generation.py [--workdir outputs/bench/vllm] [--prompts 256] [--results FILE]

Needs the venv of scripts/setup_vllm.sh (vLLM's CPU build). The model is generation_throughput.py's
warmed-up tiny Llama (hidden 256, 4 layers: 64-wide heads, which vLLM's CPU attention needs),
responses of varied lengths (`--long-replies`). Reported separately: the engine's start-up (once
per run) and a weight load (once per SPIN iteration: the colocated engine's in-place reload; the
server's safetensors write + `/collective_rpc reload_weights`), then opponents per second of the
generation itself. `--repeats` runs per generator in alternating order, the median is used. Ratios
measured side by side are the result; absolute numbers on shared CPUs are noise.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")

import requests
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import CHAT_DATA as DATA
from bench_common import add_results_argument, free_port, machine, markdown_table, write_results
from generation_throughput import long_reply_chats, mixed_prompts, official_style, ours


def start_server(model_dir: Path, max_model_len: int, log: Path):
    from axolotl_selfplay.sampling.vllm_files import server_command

    port = free_port()
    env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1", "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    proc = subprocess.Popen(
        server_command(sys.executable, str(model_dir), port=port, dtype="float32", max_model_len=max_model_len),
        env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
    )
    while proc.poll() is None:
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc, port, time.perf_counter() - start
        except requests.RequestException:
            time.sleep(0.5)
    raise RuntimeError(f"the vLLM server did not start: {log.read_text()[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="outputs/bench/vllm")
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16, help="the HF generators' batch size")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--model-dir", help="use this model instead of building the warmed-up tiny one")
    add_results_argument(parser)
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from axolotl_selfplay.sampling.spec import SamplingSpec
    from axolotl_selfplay.sampling.vllm_colocate import ColocatedVLLM
    from axolotl_selfplay.sampling.vllm_files import FilesVLLMServer
    from axolotl_selfplay.tiny_models import build_tiny_model, warm_up

    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    model_dir = Path(args.model_dir) if args.model_dir else work / "model"
    if not args.model_dir and not (model_dir / "model.safetensors").exists():
        warm_data = work / "long_replies.jsonl"
        long_reply_chats(warm_data)
        torch.manual_seed(0)
        build_tiny_model(str(model_dir), data_file=str(DATA), hidden_size=256, num_layers=4, seed=0)
        warm_up(str(model_dir), str(warm_data), steps=300, seed=0)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), attn_implementation="sdpa",
                                                 dtype=torch.float32).eval()
    prompts = mixed_prompts(tokenizer, args.prompts, seed=0)
    eos = {tokenizer.eos_token_id}
    spec = SamplingSpec.greedy(args.max_new_tokens)
    max_model_len = max(len(p) for p in prompts) + args.max_new_tokens + 8
    cpu = SimpleNamespace(device=torch.device("cpu"), is_main_process=True, wait_for_everyone=lambda: None)

    start = time.perf_counter()
    colocated = ColocatedVLLM(model_dir=str(model_dir), dtype="float32", max_model_len=max_model_len,
                              gpu_memory_utilization=0.3, enable_sleep_mode=False, seed=0, accelerator=cpu)
    colocated._engine()
    colocated_start = time.perf_counter() - start
    proc, port, server_start = start_server(model_dir, max_model_len, work / "server.log")
    try:
        server = FilesVLLMServer(host="127.0.0.1", port=port, weights_dir=str(work / "weights"), timeout=60,
                                 accelerator=cpu)

        def load_time(backend) -> float:
            start = time.perf_counter()
            backend.push_weights(model)
            return time.perf_counter() - start

        loads = {"vLLM colocate": load_time(colocated), "vLLM server": load_time(server)}

        def by_vllm(backend):
            def run(model, tokenizer, prompts, batch_size, max_new_tokens):
                samples = backend.generate(prompts, n=1, spec=SamplingSpec.greedy(max_new_tokens), eos_token_ids=eos,
                                           seed=0)
                return [tokens for tokens, _ in samples], None
            return run

        runs = {"official-style": official_style, "ours (HF)": ours,
                "vLLM colocate": by_vllm(colocated), "vLLM server": by_vllm(server)}
        times = {name: [] for name in runs}
        outputs = {}
        for repeat in range(args.repeats):
            # the order alternates: whichever runs second would otherwise always find warmer caches
            order = list(runs.items()) if repeat % 2 == 0 else list(reversed(runs.items()))
            for name, generate in order:
                start = time.perf_counter()
                outputs[name] = generate(model, tokenizer, prompts, args.batch_size, args.max_new_tokens)[0]
                times[name].append(time.perf_counter() - start)
    finally:
        proc.terminate()
        proc.wait(timeout=60)

    starts = {"vLLM colocate": colocated_start, "vLLM server": server_start}
    base = len(prompts) / statistics.median(times["official-style"])
    rows = []
    for name in runs:
        seconds = statistics.median(times[name])
        tokens = sum(len(o) for o in outputs[name])
        same = sum(a == b for a, b in zip(outputs[name], outputs["ours (HF)"]))
        rows.append([name, f"{starts.get(name, 0):.1f}" if name in starts else "-",
                     f"{loads[name]:.2f}" if name in loads else "-", f"{seconds:.1f}",
                     f"{len(prompts) / seconds:.1f}", f"{tokens / seconds:.0f}",
                     f"**{len(prompts) / seconds / base:.2f}×**", f"{same}/{len(prompts)}"])
    lengths = [len(p) for p in prompts]
    text = (
        f"{len(prompts)} prompts of {min(lengths)}–{max(lengths)} tokens, max_new_tokens {args.max_new_tokens}, "
        f"greedy, fp32; HF batch {args.batch_size}; vLLM's CPU build (enforce_eager, VLLM_CPU_KVCACHE_SPACE "
        f"{os.environ['VLLM_CPU_KVCACHE_SPACE']} GiB). Engine start-up and a weight load are once per run and once "
        f"per SPIN iteration, not in the generation time. Measured on {machine()}.\n\n"
        + markdown_table(["generator", "engine start (s)", "weight load (s)", "generation (s)", "opponents/s",
                          "tokens/s", "vs official-style", "greedy outputs equal to ours (HF)"], rows)
        + "\n"
    )
    write_results(args.results, "vllm_generation", text)


if __name__ == "__main__":
    main()
