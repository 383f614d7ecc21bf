"""`generation.vllm_weight_transfer: nccl` (TRL's client, `axolotl vllm-serve`) against a CPU stand-in
of the vLLM server. NCCL needs GPUs, so this is the one part the real engine's tests
(test_vllm_colocate.py, test_vllm_server.py: vLLM's CPU build) cannot run; they cover the rest.

The stand-in (tests/vllm_standin/server.py) answers the HTTP protocol of the server
that the installed Axolotl ships, through TRL's real VLLMClient; only the NCCL
weight transfer is replaced by HTTP (tests/vllm_standin/sitecustomize.py). The
stand-in loads every pushed tensor into its own copy of the model and generates
with it, so these runs check the whole client side: when weights are pushed, under
which names (LoRA merged into base-model names), and that generation uses them.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from conftest import LORA, REPO, axolotl_train, base_config, free_port, lsp_config, read_jsonl, with_reward_module

pytestmark = pytest.mark.e2e
STANDIN = REPO / "tests" / "vllm_standin"


class StandIn:
    def __init__(self, model_dir: Path, eos: int | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, str(STANDIN / "server.py"), str(model_dir), str(self.port)]
            + ([] if eos is None else ["--eos", str(eos)]),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if requests.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                time.sleep(0.5)
        self.proc.kill()
        raise RuntimeError(f"stand-in server did not start: {self.proc.stderr.read()[-2000:]}")

    def log(self) -> dict:
        return requests.get(f"{self.url}/standin/log", timeout=10).json()

    def close(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


def weights_checksum(path: Path) -> float:
    from safetensors.torch import load_file

    return float(sum(t.double().abs().sum() for t in load_file(str(path)).values()))


def parameter_names(model_dir: Path) -> set[str]:
    from transformers import AutoModelForCausalLM

    return {name for name, _ in AutoModelForCausalLM.from_pretrained(str(model_dir)).named_parameters()}


def run_with_standin(cfg: dict, config_path: Path, server: StandIn):
    cfg["vllm"] = {"host": "127.0.0.1", "port": server.port}  # Axolotl's own `vllm:` block
    env = {"PYTHONPATH": os.pathsep.join([str(STANDIN), os.environ.get("PYTHONPATH", "")])}
    run = axolotl_train(cfg, config_path, env=env)
    assert run.returncode == 0, run.output[-5000:]
    return run


def test_spin_pushes_each_iterate_once_and_generates_on_the_server(tmp_path, tiny_model_dir):
    server = StandIn(tiny_model_dir)
    try:
        gen = {"backend": "vllm", "do_sample": False, "max_new_tokens": 12, "vllm_server_timeout": 60}
        cfg = base_config(
            tiny_model_dir, tmp_path, selfplay={"iterations": 2, "generation": gen}, save_strategy="steps", save_steps=4
        )
        run = run_with_standin(cfg, tmp_path / "spin.yml", server)
        log = server.log()
    finally:
        server.close()
    assert "generating through the vLLM server" in run.output
    assert log["errors"] == []
    # one push per iteration, every parameter under the model's own names
    assert len(log["pushes"]) == 2
    names = parameter_names(tiny_model_dir)
    for push in log["pushes"]:
        assert sorted(push["names"]) == sorted(names)
    # iteration 0 samples from θ_0; iteration 1 from the weights after iteration 0 (checkpoint-4)
    assert log["pushes"][0]["checksum"] == pytest.approx(weights_checksum(tiny_model_dir / "model.safetensors"), rel=1e-6)
    after_iteration_0 = weights_checksum(run.output_dir / "checkpoint-4" / "model.safetensors")
    assert log["pushes"][1]["checksum"] == pytest.approx(after_iteration_0, rel=1e-6)
    # one sample per training prompt and iteration (equal prompts merged into one asking for more)
    assert sum(r["prompts"] * r["n"] for r in log["requests"]) == 2 * 64
    # the opponents came from the server and the loss path is unchanged
    losses = dict(run.scalars("train/loss"))
    assert losses[1] == pytest.approx(math.log(2), abs=1e-4) and losses[5] == pytest.approx(math.log(2), abs=1e-4)
    assert len(read_jsonl(run.output_dir / "selfplay" / "iter_1.jsonl")) == 64


def test_lsp_lora_pushes_merged_weights_once_per_step(tmp_path, arithmetic_model_dir):
    """2 games per micro-step, 2 micro-steps per optimizer step, no seed data, and a server
    whose own EOS is not the chat template's end of turn."""
    server = StandIn(arithmetic_model_dir, eos=1)  # <|endoftext|>; turns end with <|im_end|>
    try:
        out = with_reward_module(tmp_path)
        cfg = lsp_config(arithmetic_model_dir, out, gradient_accumulation_steps=2, **LORA)
        cfg["selfplay"]["generation"].update({"backend": "vllm", "vllm_server_timeout": 60})
        cfg["selfplay"]["lsp"]["self_reward"] = False
        run = run_with_standin(cfg, out / "lsp.yml", server)
        log = server.log()
    finally:
        server.close()
    assert log["errors"] == []
    assert len(log["pushes"]) == 3  # once per optimizer step, not per micro-step
    names = parameter_names(arithmetic_model_dir)
    for push in log["pushes"]:
        # the adapter is merged: base-model names only, no lora_* / base_layer
        assert sorted(push["names"]) == sorted(names)
    base = weights_checksum(arithmetic_model_dir / "model.safetensors")
    assert log["pushes"][0]["checksum"] == pytest.approx(base, rel=1e-6)  # B = 0 at the start: merged = base
    assert log["pushes"][-1]["checksum"] != pytest.approx(base, rel=1e-9)  # the trained adapter reached the server
    # the 2 games' Challenger prompts are one prompt asking for 2 × 4 queries (vLLM would give
    # equal prompts in one request equal samples), with every sampling parameter and the stop tokens
    challengers = [r for r in log["requests"] if r["max_tokens"] == 16]
    assert len(challengers) == 6 and all((r["prompts"], r["n"]) == (1, 8) for r in challengers)
    for request in log["requests"]:
        assert request["stop_token_ids"] == [2]  # <|im_end|>
        assert (request["top_k"], request["min_p"], request["repetition_penalty"]) == (0, 0.0, 1.0)
    logs = run.logs()
    assert len(logs) == 3 and "lsp/solver_reward" in logs[0]
    # queries end at <|im_end|> although the server's EOS is another token
    assert all(row["lsp/degenerate_query_frac"] < 0.5 for row in logs), logs
    # the two games of a micro-step are different games
    samples = read_jsonl(run.output_dir / "selfplay" / "lsp_samples.jsonl")
    for step in (1, 2, 3):
        queries = [row["query"] for row in samples if row["step"] == step]
        assert len(queries) == 8 and queries[:4] != queries[4:], queries


def test_missing_server_is_one_clear_error(monkeypatch):
    """No server at the configured address: one error naming the address and the fix, raised
    when the trainer connects (before any generation), not TRL's bare connection error."""
    from types import SimpleNamespace

    try:
        from trl.generation import vllm_client
    except ImportError:  # older TRL layout
        from trl.extras import vllm_client

    from axolotl_selfplay.sampling.vllm import VLLMServer

    monkeypatch.setattr(vllm_client, "is_vllm_available", lambda *args, **kwargs: True)  # as the stand-in does
    port = free_port()
    with pytest.raises(ConnectionError) as error:
        VLLMServer({"vllm": {"host": "127.0.0.1", "port": port}}, SimpleNamespace(is_main_process=True), timeout=1)
    message = str(error.value)
    assert f"no vLLM server at 127.0.0.1:{port} after 1s" in message and "axolotl vllm-serve" in message
