"""`generation.vllm_mode: server` with `vllm_weight_transfer: files` against a REAL vLLM server:
vLLM's OpenAI-compatible server (vLLM's CPU build, fp32, dev mode, bound to 127.0.0.1), one
for this file.

The client's sampling equals HF's on the same weights (greedy, token for token) before and
after a weight load through `/collective_rpc reload_weights`; seeded samples reproduce; then
`axolotl train` with the server: SPIN's iteration-1 opponents are the greedy continuations of
the weights after iteration 0, and LSP with LoRA plays through it (the adapter merged into
the files the server loads).

`vllm_weight_transfer: nccl` talks to the server Axolotl ships (`axolotl vllm-serve`, TRL's
protocol): that real server starts here too, and TRL's client generates through it as HF
does. Its NCCL weight push needs GPUs: tests/test_e2e_vllm.py covers the push's client side
against a stand-in.
"""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
import torch
from conftest import (
    LORA,
    axolotl_train,
    base_config,
    free_port,
    write_config,
    lsp_config,
    read_jsonl,
    vllm_or_skip,
    vllm_test_prompts,
    with_reward_module,
)

vllm_or_skip()

from axolotl_selfplay.data.split import end_of_turn_ids  # noqa: E402
from axolotl_selfplay.sampling.hf import generate_responses  # noqa: E402
from axolotl_selfplay.sampling.spec import SamplingSpec  # noqa: E402
from axolotl_selfplay.sampling.vllm import VLLMServer  # noqa: E402
from axolotl_selfplay.sampling.vllm_files import FilesVLLMServer, server_command  # noqa: E402

pytestmark = pytest.mark.vllm
CPU = SimpleNamespace(device=torch.device("cpu"), is_main_process=True, process_index=0, wait_for_everyone=lambda: None)


@contextmanager
def running_server(command: list[str], port: int, log: Path, health: str, env: dict):
    """`command` started, and stopped after, once `health` on `port` answers."""
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "AXOLOTL_DO_NOT_TRACK": "1", **env}
    # A colocated engine started earlier in this pytest process (tests/test_vllm_colocate.py) set
    # VLLM_ENABLE_V1_MULTIPROCESSING=0 here; a server is started from a shell, in vLLM's own process
    # layout (in-process, `axolotl vllm-serve`'s worker dies in vLLM's CPU kernel registration).
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
    with open(log, "w") as handle:
        proc = subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if requests.get(f"http://127.0.0.1:{port}{health}", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(1)
        else:
            pytest.fail(f"the vLLM server did not start: {log.read_text()[-3000:]}")
        yield SimpleNamespace(port=port, log=log)
    finally:
        stop_group(proc)


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the whole group (`axolotl vllm-serve` starts engine processes), then SIGKILL to
    whatever is left once the leader is gone or after 60 s. The leader may have exited already (a
    server that failed to start) while its engine processes live on."""
    signal_group(proc, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pass
    signal_group(proc, signal.SIGKILL)
    proc.wait()


def signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass  # the group is empty


@pytest.fixture(scope="module")
def server(vllm_model_dir, tmp_path_factory):
    port = free_port()
    command = server_command(sys.executable, str(vllm_model_dir), port=port, dtype="float32", max_model_len=256)
    log = tmp_path_factory.mktemp("vllm-server") / "server.log"
    with running_server(command, port, log, "/health", {"VLLM_SERVER_DEV_MODE": "1"}) as running:
        yield running


@pytest.fixture(scope="module")
def setup(vllm_model_dir, server, tmp_path_factory):
    setup = vllm_test_prompts(vllm_model_dir, ["Write a problem.", "What is 3+4?", "What is 12+30?", "hi"])
    setup.client = FilesVLLMServer(host="127.0.0.1", port=server.port, accelerator=CPU, timeout=30,
                                   weights_dir=str(tmp_path_factory.mktemp("weights")))
    return setup


def hf_greedy(setup, model, spec):
    return generate_responses(model, setup.prompts, spec=spec, pad_token_id=setup.pad, eos_token_ids=setup.eos,
                              batch_size=8, seed=0)


def test_greedy_equals_hf_before_and_after_a_weight_load(setup):
    greedy = SamplingSpec.greedy(24)
    served = setup.client.generate(setup.prompts, n=1, spec=greedy, eos_token_ids=setup.eos, seed=0)
    assert served == hf_greedy(setup, setup.model, greedy)
    moved = copy.deepcopy(setup.model)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in moved.parameters():
            param.add_(0.02 * torch.randn(param.shape, generator=generator))
    setup.client.push_weights(moved)
    served = setup.client.generate(setup.prompts, n=1, spec=greedy, eos_token_ids=setup.eos, seed=0)
    assert served == hf_greedy(setup, moved, greedy)
    assert served != hf_greedy(setup, setup.model, greedy)
    setup.client.push_weights(setup.model)


def test_seeded_samples_reproduce(setup):
    spec = SamplingSpec(max_new_tokens=16, top_k=20, min_p=0.01)
    first = setup.client.generate(setup.prompts, n=2, spec=spec, eos_token_ids=setup.eos, seed=5)
    assert first == setup.client.generate(setup.prompts, n=2, spec=spec, eos_token_ids=setup.eos, seed=5)
    assert first != setup.client.generate(setup.prompts, n=2, spec=spec, eos_token_ids=setup.eos, seed=6)
    assert len(first) == 2 * len(setup.prompts) and first[0] != first[1]  # n samples per prompt, distinct


def test_spin_trains_through_the_server(tmp_path, vllm_model_dir, server):
    gen = {"backend": "vllm", "vllm_weight_transfer": "files", "do_sample": False, "max_new_tokens": 12,
           "vllm_server_timeout": 30}
    cfg = base_config(vllm_model_dir, tmp_path, selfplay={"iterations": 2, "generation": gen},
                      save_strategy="steps", save_steps=4, sequence_len=128)
    cfg["vllm"] = {"host": "127.0.0.1", "port": server.port}  # a server block: `vllm_mode: server` by default
    run = axolotl_train(cfg, tmp_path / "spin.yml")
    assert run.returncode == 0, run.output[-5000:]
    assert "generating through the vLLM server" in run.output
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # the last load (iteration 1) holds the weights saved after iteration 0
    pushed = load_file(str(run.output_dir / "vllm_weights" / "model.safetensors"))
    saved = load_file(str(run.output_dir / "checkpoint-4" / "model.safetensors"))
    assert sorted(pushed) == sorted(saved) and all(torch.equal(pushed[k], saved[k]) for k in saved)
    tokenizer = AutoTokenizer.from_pretrained(str(vllm_model_dir))
    theta_1 = AutoModelForCausalLM.from_pretrained(str(run.output_dir / "checkpoint-4"), dtype=torch.float32)
    rows = read_jsonl(run.output_dir / "selfplay" / "iter_1.jsonl")[:8]
    eos = end_of_turn_ids(tokenizer, theta_1.generation_config)
    prompts = [tokenizer(row["prompt"], add_special_tokens=False)["input_ids"] for row in rows]
    hf = generate_responses(theta_1, prompts, spec=SamplingSpec.greedy(12), pad_token_id=tokenizer.pad_token_id,
                            eos_token_ids=eos, batch_size=8, seed=0)
    assert [tokens for tokens, _ in hf] == [row["generated_ids"] for row in rows]


def test_lsp_with_lora_plays_through_the_server(tmp_path, vllm_model_dir, server):
    out = with_reward_module(tmp_path)
    cfg = lsp_config(vllm_model_dir, out, sequence_len=128, **LORA)
    cfg["selfplay"]["generation"].update(
        {"backend": "vllm", "vllm_mode": "server", "vllm_weight_transfer": "files", "vllm_server_timeout": 30}
    )
    cfg["selfplay"]["lsp"]["self_reward"] = False
    cfg["vllm"] = {"port": server.port}  # host: 127.0.0.1 by default
    run = axolotl_train(cfg, out / "lsp.yml")
    assert run.returncode == 0, run.output[-5000:]
    logs = run.logs()
    assert len(logs) == 3 and "lsp/solver_reward" in logs[0]
    assert all(row["lsp/degenerate_query_frac"] < 0.5 for row in logs), logs
    # the adapter was merged: the server loaded base-model names only
    from safetensors.torch import load_file

    names = set(load_file(str(run.output_dir / "vllm_weights" / "model.safetensors")))
    assert names and not any("lora" in name or "base_layer" in name for name in names)


def test_axolotl_vllm_serve_generates_as_hf(vllm_model_dir, tmp_path):
    """`vllm_weight_transfer: nccl`'s server is the one Axolotl ships: `axolotl vllm-serve` (Axolotl
    0.19: its LoRA-aware TRL server) on vLLM's CPU build, our client through TRL's `VLLMClient`.
    Greedy equals HF token for token; seeded samples reproduce. The weight push is NCCL: GPUs only."""
    port = free_port()
    cfg = base_config(vllm_model_dir, tmp_path, rl=None, selfplay=None, num_epochs=1, sequence_len=128)
    cfg["vllm"] = {"host": "127.0.0.1", "port": port, "dtype": "float32", "max_model_len": 256}
    config = write_config(cfg, tmp_path / "serve.yml")
    command = [str(Path(sys.executable).parent / "axolotl"), "vllm-serve", str(config)]
    with running_server(command, port, tmp_path / "server.log", "/health/", {}):
        setup = vllm_test_prompts(vllm_model_dir, ["Write a problem.", "What is 3+4?", "What is 12+30?", "hi"])
        client = VLLMServer({"vllm": {"host": "127.0.0.1", "port": port}}, CPU, timeout=30)
        greedy = SamplingSpec.greedy(24)
        served = client.generate(setup.prompts, n=1, spec=greedy, eos_token_ids=setup.eos, seed=0)
        assert served == hf_greedy(setup, setup.model, greedy)
        spec = SamplingSpec(max_new_tokens=16, top_k=20, min_p=0.01)
        first = client.generate(setup.prompts, n=2, spec=spec, eos_token_ids=setup.eos, seed=5)
        assert first == client.generate(setup.prompts, n=2, spec=spec, eos_token_ids=setup.eos, seed=5)
        assert first != client.generate(setup.prompts, n=2, spec=spec, eos_token_ids=setup.eos, seed=6)
