"""Config rewrite, defaults, and every bad-input error (no model is loaded here)."""

from __future__ import annotations

import json
import os

import pytest
import yaml
from conftest import (
    ARITHMETIC_DATA,
    DEMO_DATA,
    NEEDS_PLUGINS_LINE,
    PLUGIN,
    REPO,
    axolotl_train,
    base_config,
    base_config_file,
    lsp_config,
    prepare_data,
    with_reward_module,
)

from axolotl_selfplay.config import SelfPlayArgs, SelfPlayConfig


@pytest.fixture
def load(tmp_path, tiny_model_dir, monkeypatch):
    """Run Axolotl's own `load_cfg` (plugins -> register -> validate) on a dict."""
    from axolotl.cli.config import load_cfg
    from axolotl.integrations.base import PluginManager

    saved_env = dict(os.environ)

    def _load(raw: dict | None = None, **overrides):
        """Load `raw` (default: the tests' base config) with `overrides` applied."""
        PluginManager._instance = None
        if hasattr(PluginManager, "plugins"):
            PluginManager.plugins = type(PluginManager.plugins)() if isinstance(PluginManager.plugins, dict) else {}
        cfg = base_config(tiny_model_dir, tmp_path, **overrides) if raw is None else {**raw, **overrides}
        path = tmp_path / "config.yml"
        path.write_text(yaml.safe_dump(cfg))
        return load_cfg(str(path))

    yield _load
    os.environ.clear()
    os.environ.update(saved_env)
    PluginManager._instance = None


def test_rl_spin_becomes_selfplay_block_with_defaults(load):
    cfg = load(selfplay=None)
    assert cfg.rl is None
    sp = cfg.selfplay
    assert sp["type"] == "spin"
    assert (sp["iterations"], sp["epochs_per_iteration"], sp["beta"], sp["loss_type"], sp["history"]) == (3, 1, 0.1, "sigmoid", 1)
    assert sp["generation"] == {
        "max_new_tokens": 256, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0,
        "do_sample": True, "batch_size": 16, "ds3_gather_for_generation": True, "backend": "hf",
        "vllm_weight_transfer": "nccl", "vllm_gpu_memory_utilization": 0.3, "vllm_enable_sleep_mode": False,
        "vllm_server_timeout": 240.0,  # keys whose default is None are left out
    }
    assert sp["disable_dropout"] is True
    # the official recipe: a fresh schedule and optimizer every iteration, no SFT term
    assert (sp["restart_schedule"], sp["reset_optimizer"], sp["learning_rates"]) == (True, True, None)
    assert (sp["sft_weight"], sp["opponents_from"]) == (0.0, None)
    assert cfg.num_epochs == 3  # K·E


def test_rl_spin_chi2_with_regularisers(load):
    cfg = load(rl="spin_chi2", selfplay={"chi2_coef": 1.0, "reward_clip": 2.0, "kl_to_base": 0.3, "opponent_mixture": "uniform", "history": 3})
    sp = cfg.selfplay
    assert cfg.rl is None and sp["type"] == "spin_chi2"
    assert (sp["chi2_alpha"], sp["chi2_coef"], sp["reward_clip"]) == (0.5, 1.0, 2.0)
    assert (sp["kl_to_base"], sp["opponent_mixture"], sp["history"]) == (0.3, "uniform", 3)


def test_num_epochs_follows_iterations_times_epochs(load):
    cfg = load(selfplay={"iterations": 2, "epochs_per_iteration": 3})
    assert cfg.num_epochs == 6
    cfg = load(selfplay={"iterations": 2, "epochs_per_iteration": 3}, num_epochs=6)
    assert cfg.num_epochs == 6


def test_before_validator_remaps_without_register():
    """Callers that validate without `prepare_plugins` still get the rewrite."""
    args = SelfPlayArgs.model_validate({"rl": "spin", "selfplay": {"beta": 0.5}})
    assert args.selfplay.type == "spin" and args.selfplay.beta == 0.5


def test_lora_kernels_pinned_off_unless_set(load):
    lora = {"adapter": "lora", "lora_r": 4, "lora_alpha": 8, "lora_target_linear": True}
    cfg = load(**lora)
    assert cfg.lora_mlp_kernel is False and cfg.lora_qkv_kernel is False and cfg.lora_o_kernel is False


def test_plain_dpo_config_is_untouched(load):
    cfg = load(rl="dpo", selfplay=None, datasets=[{"path": str(DEMO_DATA), "type": "chat_template.default"}])
    assert cfg.rl == "dpo" and cfg.selfplay is None


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"sample_packing": True}, "`sample_packing: true` cannot be used with `rl: spin`"),
        ({"batch_flattening": True}, "`batch_flattening: true` cannot be used with `rl: spin`"),
        ({"selfplay": {"iterations": 0}}, "`selfplay.iterations` must be an integer >= 1"),
        ({"selfplay": {"epochs_per_iteration": 0}}, "`selfplay.epochs_per_iteration` must be an integer >= 1"),
        ({"selfplay": {"itertions": 2}}, "unknown key `selfplay.itertions`. Did you mean `selfplay.iterations`?"),
        ({"selfplay": {"generation": {"max_new_token": 8}}}, "Did you mean `selfplay.generation.max_new_tokens`?"),
        ({"selfplay": {"loss_type": "ipo"}}, "invalid `selfplay.loss_type`: Input should be 'sigmoid' or 'hinge'"),
        ({"selfplay": {"iterations": 2}, "num_epochs": 3}, "`num_epochs: 3` disagrees with `selfplay.iterations`"),
        ({"selfplay": {"beta": 0}}, "invalid `selfplay.beta`: Input should be greater than 0"),
        ({"selfplay": {"type": "lsp"}}, "contradicts"),
        ({"rl": "spin_chi2", "selfplay": {"chi2_alpha": 1.0}}, "invalid `selfplay.chi2_alpha`: Input should be less than 1"),
        ({"rl": "spin_chi2", "selfplay": {"chi2_alpha": 0}}, "invalid `selfplay.chi2_alpha`: Input should be greater than 0"),
        ({"rl": "spin_chi2", "selfplay": {"chi2_coef": -1}}, "invalid `selfplay.chi2_coef`: Input should be greater than 0"),
        ({"rl": "spin_chi2", "selfplay": {"reward_clip": 0}}, "invalid `selfplay.reward_clip`: Input should be greater than 0"),
        ({"selfplay": {"chi2_coef": 1.0}}, "`selfplay.chi2_coef` only applies to `rl: spin_chi2`"),
        ({"rl": "spin_chi2", "selfplay": {"loss_type": "hinge"}}, "`selfplay.loss_type` only applies to `rl: spin`"),
        ({"selfplay": {"kl_to_base": 1.5}}, "invalid `selfplay.kl_to_base`: Input should be less than or equal to 1"),
        ({"selfplay": {"opponent_mixture": "average"}}, "invalid `selfplay.opponent_mixture`: Input should be 'latest' or 'uniform'"),
        ({"selfplay": {"generation": {"backend": "vlm"}}}, "invalid `selfplay.generation.backend`: Input should be 'hf' or 'vllm'"),
        ({"selfplay": {"generation": {"top_k": -1}}}, "invalid `selfplay.generation.top_k`: Input should be greater than or equal to 0"),
        ({"selfplay": {"generation": {"min_p": 1.0}}}, "invalid `selfplay.generation.min_p`: Input should be less than 1"),
        ({"selfplay": {"generation": {"repetition_penalty": 0}}}, "invalid `selfplay.generation.repetition_penalty`: Input should be greater than 0"),
        (
            {"selfplay": {"iterations": 4, "learning_rates": [5e-7, 5e-7, 1e-7]}},
            "`selfplay.learning_rates` has 3 entries but `selfplay.iterations` is 4: give one learning rate per iteration",
        ),
        ({"selfplay": {"iterations": 2, "learning_rates": [5e-7, 0]}}, "`selfplay.learning_rates` must all be > 0, got 0"),
        ({"selfplay": {"sft_weight": -1}}, "invalid `selfplay.sft_weight`: Input should be greater than or equal to 0"),
        (
            {"lr_scheduler": "reduce_lr_on_plateau"},
            "`lr_scheduler: reduce_lr_on_plateau` follows evaluation metrics and cannot restart with every self-play "
            "iteration: choose another `lr_scheduler` (the official recipe: `linear`), or set `selfplay.restart_schedule: false`.",
        ),
        (
            {"deepspeed": {"zero_optimization": {"stage": 2}, "scheduler": {"type": "WarmupLR"}}},
            "has a `scheduler` section: DeepSpeed would then own the learning-rate schedule",
        ),
        (
            {"optimizer": "galore_adamw_layerwise", "optim_target_modules": ["q_proj"]},
            "`optimizer: galore_adamw_layerwise` keeps one optimizer per parameter behind the Trainer's",
        ),
        ({"optimizer": "adalomo"}, "Set `selfplay.reset_optimizer: false`"),
        (
            # one process or several: outside a gather ZeRO-3's parameters hold no data to swap θ_0 into
            {"deepspeed": {"zero_optimization": {"stage": 3}},
             "selfplay": {"kl_to_base": 0.5, "generation": {"ds3_gather_for_generation": False}}},
            "`selfplay.kl_to_base` with full fine-tuning or a LoRA from `lora_model_dir` cannot be used under "
            "DeepSpeed ZeRO-3 with `selfplay.generation.ds3_gather_for_generation: false`",
        ),
    ],
)
def test_bad_input_errors_name_the_key(load, overrides, message):
    with pytest.raises(Exception) as error:
        load(**overrides)
    assert message in str(error.value)


def test_misspelt_block_name_is_an_error(load):
    with pytest.raises(ValueError, match="did you mean `selfplay:`"):
        load(selfpaly={"iterations": 2})


def test_generation_config_rejects_out_of_range():
    with pytest.raises(Exception, match="top_p"):
        SelfPlayConfig.model_validate({"type": "spin", "generation": {"top_p": 1.5}})


def test_dataset_without_final_assistant_turn_is_rejected(load, tmp_path):
    from axolotl_selfplay.plugin import SelfPlayPlugin

    bad = tmp_path / "bad.jsonl"
    rows = [json.loads(line) for line in DEMO_DATA.read_text().splitlines()[:4]]
    rows[2]["messages"].append({"role": "user", "content": "and?"})
    bad.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cfg = load(datasets=[{"path": str(bad), "type": "chat_template", "field_messages": "messages"}])
    with pytest.raises(ValueError, match=r"row 2 \(line 3 of bad.jsonl\): the conversation does not end with an assistant turn"):
        SelfPlayPlugin().load_datasets(cfg)


def test_cli_error_before_model_load_leaves_no_output(tmp_path, tiny_model_dir):
    """`axolotl train` with a typo fails fast, names the key, writes nothing to output_dir."""
    cfg = base_config(tiny_model_dir, tmp_path, selfplay={"iterations": 2, "beta_": 0.1})
    run = axolotl_train(cfg, tmp_path / "typo.yml", timeout=300)
    assert run.returncode != 0
    assert "unknown key `selfplay.beta_`. Did you mean `selfplay.beta`?" in run.output
    assert not run.output_dir.exists()
    assert "Loading model" not in run.output


@pytest.mark.parametrize(
    "name",
    ["tiny-spin-cpu.yml", "spin.yml", "spin_zero2.yml", "spin_chi2.yml", "spin_chi2_lora.yml", "tiny-lsp-cpu.yml", "lsp.yml"],
)
def test_example_configs_validate(load, name, tiny_model_dir, tmp_path, monkeypatch):
    """The shipped examples pass Axolotl's validation (model and data paths pointed at
    local files; the GPU example keeps its ZeRO-3 / FlashAttention / paper settings)."""
    raw = yaml.safe_load((REPO / "example_configs" / name).read_text())
    overrides = {"base_model": str(tiny_model_dir), "output_dir": str(tmp_path / "out")}
    if raw.get("deepspeed"):
        # A ZeRO-3 config makes load_cfg initialise torch.distributed; check the JSON
        # it names here and validate everything else.
        zero = json.loads((REPO / raw.pop("deepspeed")).read_text())
        assert zero["zero_optimization"]["stage"] in (2, 3)
    if NEEDS_PLUGINS_LINE:
        overrides["plugins"] = [PLUGIN]
    raw.pop("revision_of_model", None)
    monkeypatch.chdir(REPO)  # reward modules are imported from the working directory
    cfg = load(raw, **overrides)
    assert cfg.rl is None and cfg.selfplay["type"] == raw["rl"]
    if raw["rl"] == "lsp":
        assert cfg.max_steps == raw["max_steps"] and cfg.selfplay["lsp"]["num_answers"] >= 2
    else:
        assert cfg.num_epochs == cfg.selfplay["iterations"] * cfg.selfplay["epochs_per_iteration"]


# -- rl: lsp ---------------------------------------------------------------------


@pytest.fixture
def load_lsp(load, tiny_model_dir, tmp_path, monkeypatch):
    """Load an `rl: lsp` config from a directory holding the arithmetic reward module.
    `lsp` updates `selfplay.lsp`, `block` updates the rest of `selfplay:`."""
    monkeypatch.chdir(with_reward_module(tmp_path))

    def _load(lsp=None, block=None, **overrides):
        cfg = lsp_config(tiny_model_dir, tmp_path, **overrides)
        cfg["selfplay"]["lsp"].update(lsp or {})
        for key, value in (block or {}).items():
            if isinstance(value, dict):
                cfg["selfplay"].setdefault(key, {}).update(value)
            else:
                cfg["selfplay"][key] = value
        return load(cfg)

    return _load


def test_rl_lsp_needs_no_dataset_and_fills_defaults(load_lsp):
    cfg = load_lsp()
    assert cfg.rl is None and cfg.selfplay["type"] == "lsp"
    lsp = cfg.selfplay["lsp"]
    assert (lsp["num_queries"], lsp["num_answers"], lsp["kl_beta"], lsp["challenger_weight"]) == (4, 3, 0.04, 1.0)
    assert lsp["self_reward"] is True and "{query}" in lsp["judge_prompt"]
    assert cfg.max_steps == 3
    # Axolotl requires `datasets:`; the plugin inserted its no-data marker
    from axolotl_selfplay.config import LSP_NO_DATA

    assert [d["path"] for d in cfg.datasets] == [LSP_NO_DATA]


def test_lsp_games_dataset_cycles_seed_prompts(load_lsp, tmp_path):
    from axolotl_selfplay.data.columns import GAME_SEED_COLUMN
    from axolotl_selfplay.plugin import SelfPlayPlugin

    seeds = tmp_path / "topics.jsonl"
    seeds.write_text("\n".join(json.dumps({"topic": t}) for t in ["sums", "carries", "zeros"]) + "\n")
    cfg = load_lsp(
        lsp={"challenger_prompt": "Write an addition problem about {seed}."},
        datasets=[{"path": str(seeds), "field": "topic"}],
        gradient_accumulation_steps=2,
    )
    games = SelfPlayPlugin().load_datasets(cfg).train_dataset
    assert len(games) == 3 * 2 * 2  # max_steps × micro_batch_size × accumulation
    assert games[GAME_SEED_COLUMN][:4] == ["sums", "carries", "zeros", "sums"]


@pytest.mark.parametrize(
    "lsp, block, overrides, message",
    [
        ({"self_reward": False, "reward_funcs": []}, {}, {}, "has no reward: set `selfplay.lsp.reward_funcs`"),
        ({"reward_weights": [1.0, 2.0]}, {}, {}, "`selfplay.lsp.reward_weights` has 2 entries but there are 1 task rewards"),
        ({"num_answers": 1}, {}, {}, "invalid `selfplay.lsp.num_answers`: Input should be greater than or equal to 2"),
        ({"num_querys": 4}, {}, {}, "Did you mean `selfplay.lsp.num_queries`?"),
        ({"judge_prompt": "Rate this."}, {}, {}, "`selfplay.lsp.judge_prompt` must contain `{query}`"),
        ({"reward_funcs": ["arithmetic.nope"]}, {}, {}, "`selfplay.lsp.reward_funcs[0]` = `arithmetic.nope`: module `arithmetic` has no function `nope`"),
        ({"reward_funcs": ["no_such_module.fn"]}, {}, {}, "cannot import module `no_such_module`"),
        ({}, {}, {"max_steps": None}, "`rl: lsp` needs `max_steps`"),
        ({}, {}, {"val_set_size": 0.1}, "`rl: lsp` has no held-out data"),
        ({}, {"iterations": 2}, {}, "`selfplay.iterations` belongs to SPIN"),
        ({}, {"beta": 0.5}, {}, "`selfplay.beta` belongs to SPIN"),
        ({}, {"sft_weight": 1.0}, {}, "`selfplay.sft_weight` belongs to SPIN"),
        ({}, {"reset_optimizer": False}, {}, "`selfplay.reset_optimizer` belongs to SPIN"),
        ({}, {"generation": {"do_sample": False}}, {}, "`selfplay.generation.do_sample: false` cannot be used with `rl: lsp`"),
        ({"challenger_prompt": "Write about {seed}."}, {}, {}, "contains `{seed}` but there is no seed data"),
        ({}, {}, {"datasets": [{"path": str(ARITHMETIC_DATA)}]}, "has no `{seed}` slot"),
    ],
)
def test_lsp_bad_input_errors_name_the_key(load_lsp, lsp, block, overrides, message):
    with pytest.raises(Exception) as error:
        load_lsp(lsp, block, **overrides)
    assert message in str(error.value)


def test_zero3_sharded_scoring_refusals_name_the_keys_and_allow_what_works(load, load_lsp, tmp_path):
    """θ_0 is swapped into ZeRO-3's weights only inside a gather: refused without one (by
    `axolotl train`'s config loading), unless nothing is swapped (a fresh LoRA's θ_0 is its
    adapter switched off; LSP's full fine-tuning reference is a model of its own), or the
    gather is on."""
    from axolotl_selfplay.config import check_sharded_starting_model, parse_selfplay_block

    zero3 = {"zero_optimization": {"stage": 3}}
    sharded = {"ds3_gather_for_generation": False}
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    lora = {"adapter": "lora", "lora_r": 4, "lora_alpha": 8, "lora_target_linear": True}
    with pytest.raises(Exception, match="Set `selfplay.generation.ds3_gather_for_generation: true`, or set "
                                        "`selfplay.kl_to_base: 0`"):
        load(deepspeed=zero3, lora_model_dir=str(adapter), **lora, selfplay={"kl_to_base": 0.5, "generation": sharded})
    with pytest.raises(Exception, match="`rl: lsp`'s reference θ_0 .* from `lora_model_dir` cannot be used"):
        load_lsp(None, {"generation": sharded}, deepspeed=zero3, lora_model_dir=str(adapter), **lora)

    # accepted (a ZeRO-3 config cannot be loaded without a launcher: the check alone)
    spin = parse_selfplay_block({"type": "spin", "kl_to_base": 0.5, "generation": sharded})
    check_sharded_starting_model(spin, {"deepspeed": zero3, **lora}.get)  # a fresh LoRA
    check_sharded_starting_model(spin, {"deepspeed": {"zero_optimization": {"stage": 2}}}.get)
    gathered = parse_selfplay_block({"type": "spin", "kl_to_base": 0.5})
    check_sharded_starting_model(gathered, {"deepspeed": zero3}.get)
    lsp = parse_selfplay_block({"type": "lsp", "generation": sharded})
    check_sharded_starting_model(lsp, {"deepspeed": zero3}.get)  # full fine-tuning: its own reference model
    no_reference = parse_selfplay_block({"type": "lsp", "generation": sharded, "lsp": {
        "self_reward": False, "kl_beta": 0, "reward_funcs": ["arithmetic.exact_sum"]}})
    check_sharded_starting_model(no_reference, {"deepspeed": zero3, "lora_model_dir": str(adapter), **lora}.get)


def test_lsp_block_is_rejected_with_spin(load):
    with pytest.raises(Exception, match="`selfplay.lsp` only applies to `rl: lsp`"):
        load(selfplay={"lsp": {"num_queries": 4}})


def test_a_conversation_the_chat_template_rejects_is_named(load, zoo):
    """Mistral's template rejects a system turn: Axolotl would stop with the template's bare
    message; the plugin names the dataset, the row and the fix before any model loads."""
    from axolotl_selfplay.plugin import SelfPlayPlugin

    cfg = load(base_model=str(zoo("mistral")))
    with pytest.raises(ValueError, match=r"row 3 \(line 4 of tiny_chat.jsonl\): the chat template rejects this conversation \(roles \['system', 'user', 'assistant'\]\): Conversation roles must alternate.*no system role"):
        SelfPlayPlugin().load_datasets(cfg)
    SelfPlayPlugin().load_datasets(load(base_model=str(zoo("gemma3"))))  # Gemma-3 folds it into the user turn


# -- the `rl:` name ----------------------------------------------------------------


def test_misspelt_rl_type_is_named(tmp_path, tiny_model_dir, fresh_axolotl):
    with pytest.raises(ValueError) as error:
        prepare_data(base_config_file(tmp_path, tiny_model_dir, rl="spn"))
    assert "unknown rl type `spn`: did you mean `spin`? (spin, spin_chi2, lsp, or one of Axolotl's: dpo" in str(
        error.value
    )
    assert "selfplay.type" not in str(error.value)


def test_axolotl_rl_types_pass_through():
    from axolotl.utils.schemas.enums import RLType

    from axolotl_selfplay.config import check_rl_name

    axolotl_types = [member.value for member in RLType]
    for member in RLType:
        cfg = {"rl": member.value, "selfplay": {"beta": 0.1}}
        check_rl_name(cfg, axolotl_types)  # Axolotl's values are Axolotl's business, even beside a `selfplay:` block
        check_rl_name(cfg, None)  # also before Axolotl is imported (`check`'s first stage)
        assert cfg["rl"] == member.value
    check_rl_name({"rl": "dpoo"}, axolotl_types)  # no self-play in sight: Axolotl's own enum error will speak
