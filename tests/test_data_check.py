"""Data reaches self-play exactly as Axolotl loads it, every data error comes before any
model weights load, and `axolotl-selfplay check` gives the same verdict as `axolotl train`.

Everything runs in-process on Axolotl's own config loading and data preparation (no
`axolotl train` subprocess): a probe on `from_pretrained` proves no weights were loaded.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import DEMO_DATA, base_config, lsp_config, spin_release_file, with_reward_module

from axolotl_selfplay.cli import main

DEMO_ROWS = [json.loads(line) for line in DEMO_DATA.read_text().splitlines()]


@pytest.fixture
def fresh_axolotl(monkeypatch):
    """Axolotl's plugin registry and the environment `load_cfg` touches, reset around each test."""
    from axolotl.integrations.base import PluginManager

    monkeypatch.setattr("sys.argv", ["axolotl"])  # Axolotl's CLI entry points parse it
    saved_env = dict(os.environ)
    PluginManager._instance = None
    if isinstance(getattr(PluginManager, "plugins", None), dict):
        monkeypatch.setattr(PluginManager, "plugins", {})
    yield
    os.environ.clear()
    os.environ.update(saved_env)
    PluginManager._instance = None


@pytest.fixture
def no_weights(monkeypatch):
    """Fails the test if any model weights are loaded (Axolotl loads models through
    `from_pretrained`; config-only reads such as `AutoConfig` stay allowed)."""
    from transformers.modeling_utils import PreTrainedModel

    def refuse(cls, *args, **kwargs):
        raise AssertionError(f"model weights were loaded: {cls.__name__}.from_pretrained{args}")

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(refuse))


@pytest.fixture
def warnings_of_selfplay():
    """WARNING records of the plugin's loggers (Axolotl's logging setup does not propagate to pytest)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger("axolotl.integrations.selfplay")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _chat_entry(path, **keys) -> dict:
    return {
        "path": str(path),
        "type": "chat_template",
        "field_messages": "messages",
        "roles_to_train": ["assistant"],
        "train_on_eos": "turn",
        **keys,
    }


def _write(tmp_path, tiny_model_dir, name="config.yml", **overrides) -> Path:
    cfg = base_config(tiny_model_dir, tmp_path, **overrides)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _prepare(config_path: Path):
    """What `axolotl train` does up to the model: Axolotl's config loading, then the plugins'
    `load_datasets` hook."""
    from axolotl.cli.config import load_cfg
    from axolotl.integrations.base import PluginManager

    cfg = load_cfg(str(config_path))
    return cfg, PluginManager.get_instance().load_datasets(cfg, preprocess=False)


def _train(config_path: Path):
    """Axolotl's own `axolotl train` entry point (what each rank runs), in-process."""
    from axolotl.cli.train import do_cli

    do_cli(config=str(config_path))


# -- 1. datasets that load as a DatasetDict --------------------------------------------


def _local_directory(tmp_path):
    folder = tmp_path / "chat_dir"
    folder.mkdir()
    shutil.copy(DEMO_DATA, folder / "train.jsonl")
    return {"path": str(folder)}


def _saved_to_disk(tmp_path):
    from datasets import Dataset, DatasetDict

    folder = tmp_path / "saved"
    DatasetDict({"train": Dataset.from_list(DEMO_ROWS)}).save_to_disk(str(folder))
    return {"path": str(folder)}


def _data_files(tmp_path):
    folder = tmp_path / "files"
    folder.mkdir()
    shutil.copy(DEMO_DATA, folder / "part-0.jsonl")
    return {"path": str(folder), "ds_type": "json", "data_files": [str(folder / "part-0.jsonl")]}


@pytest.mark.parametrize(
    "source", [_local_directory, _saved_to_disk, _data_files], ids=["directory", "save_to_disk", "data_files"]
)
def test_datasets_that_load_as_a_dataset_dict_train_like_sft(
    source, tmp_path, tiny_model_dir, fresh_axolotl, no_weights
):
    """No `split:`: Axolotl takes the DatasetDict's `train` split, and so does self-play."""
    entry = {**_chat_entry("unused"), **source(tmp_path)}
    _, meta = _prepare(_write(tmp_path, tiny_model_dir, datasets=[entry]))
    assert len(meta.train_dataset) == len(DEMO_ROWS)
    assert {"input_ids", "labels"} <= set(meta.train_dataset.column_names)


def test_lsp_seed_prompts_from_a_directory(tmp_path, tiny_model_dir, fresh_axolotl, monkeypatch):
    folder = tmp_path / "topics"
    _jsonl(folder / "train.jsonl", [{"topic": t} for t in ["sums", "carries", "zeros"]])
    monkeypatch.chdir(with_reward_module(tmp_path))
    cfg = lsp_config(tiny_model_dir, tmp_path, datasets=[{"path": str(folder), "field": "topic"}])
    cfg["selfplay"]["lsp"]["challenger_prompt"] = "Write an addition problem about {seed}."
    (tmp_path / "lsp.yml").write_text(yaml.safe_dump(cfg))
    _, meta = _prepare(tmp_path / "lsp.yml")
    assert meta.train_dataset["selfplay_seed"][:4] == ["sums", "carries", "zeros", "sums"]


# -- 2. every data error before any weights load, naming the source row ------------------


def _broken_chat(tmp_path, tiny_model_dir, case):
    rows = [json.loads(json.dumps(r)) for r in DEMO_ROWS[:16]]
    overrides = {}
    entry_keys = {}
    if case == "empty reply":
        rows[3]["messages"][-1]["content"] = ""
    elif case == "empty reply, multi-turn, end of turn untrained":
        rows[3]["messages"] += [{"role": "user", "content": "And then?"}, {"role": "assistant", "content": "  "}]
        entry_keys["train_on_eos"] = "none"
    elif case == "truncated away":
        rows[5]["messages"][0]["content"] = "long " * 80
        overrides = {"excess_length_strategy": "truncate", "sequence_len": 64}
    path = _jsonl(tmp_path / "chat.jsonl", rows)
    return _write(tmp_path, tiny_model_dir, datasets=[_chat_entry(path, **entry_keys)], **overrides)


@pytest.mark.parametrize(
    "case, message",
    [
        ("empty reply", "`datasets[0]` ({path}) row 3 (line 4 of chat.jsonl): empty assistant reply. "),
        ("empty reply, multi-turn, end of turn untrained", "row 3 (line 4 of chat.jsonl): empty assistant reply."),
        (
            "truncated away",
            (
                "row 5 (line 6 of chat.jsonl): the response was truncated away at sequence_len 64 (the prompt alone is "
                "longer). Raise `sequence_len`"
            ),
        ),
    ],
)
def test_data_errors_come_before_the_model_and_name_the_source_row(
    case, message, tmp_path, tiny_model_dir, fresh_axolotl, no_weights
):
    config = _broken_chat(tmp_path, tiny_model_dir, case)
    with pytest.raises(ValueError) as error:
        _train(config)
    assert message.format(path=tmp_path / "chat.jsonl") in str(error.value)


@pytest.mark.parametrize(
    "entry, overrides, message",
    [
        (
            {"type": "completion"},
            {},
            "`datasets[0]` ({path}): `type: completion` has no prompt/response split — use chat_template or alpaca.",
        ),
        (
            {"type": "alpaca"},
            {"train_on_inputs": True},
            "row 0 (line 1 of rows.jsonl): every token is trained (`train_on_inputs: true`), so there is no prompt/response split. Set `train_on_inputs: false`.",
        ),
        ({"type": "alpaca", "empty_output_row": 2}, {}, "row 2 (line 3 of rows.jsonl): empty reply"),
    ],
    ids=["completion", "train_on_inputs", "alpaca empty output"],
)
def test_types_without_a_prompt_response_split_are_refused_before_the_model(
    entry, overrides, message, tmp_path, tiny_model_dir, fresh_axolotl, no_weights
):
    empty_row = entry.pop("empty_output_row", None)
    rows = [
        {
            "text": "What is 2 plus 2? 4.",
            "instruction": "What is 2 plus 2?",
            "input": "",
            "output": "" if i == empty_row else "4.",
        }
        for i in range(8)
    ]
    path = _jsonl(tmp_path / "rows.jsonl", rows)
    config = _write(tmp_path, tiny_model_dir, datasets=[{"path": str(path), **entry}], **overrides)
    with pytest.raises(ValueError) as error:
        _train(config)
    assert message.format(path=path) in str(error.value)


def test_rows_axolotl_drops_or_cuts_are_reported_once(tmp_path, tiny_model_dir, fresh_axolotl, warnings_of_selfplay):
    rows = [json.loads(json.dumps(r)) for r in DEMO_ROWS[:16]]
    rows[5]["messages"][0]["content"] = "long " * 80  # too long: Axolotl drops it
    _jsonl(tmp_path / "drop.jsonl", rows)
    _prepare(_write(tmp_path, tiny_model_dir, datasets=[_chat_entry(tmp_path / "drop.jsonl")], sequence_len=64))
    messages = [r.getMessage() for r in warnings_of_selfplay]
    assert [m for m in messages if "drops" in m] == [
        (
            f"Axolotl drops 1 of 16 training rows before self-play sees them: 1 longer than sequence_len 64 "
            f"(`datasets[0]` ({tmp_path / 'drop.jsonl'}) row 5). Raise `sequence_len` to keep long rows."
        )
    ]

    warnings_of_selfplay.clear()
    rows[5] = DEMO_ROWS[5]
    rows[6]["messages"][-1]["content"] = "long " * 80  # the reply is cut at sequence_len
    _jsonl(tmp_path / "cut.jsonl", rows)
    _, meta = _prepare(
        _write(
            tmp_path,
            tiny_model_dir,
            datasets=[_chat_entry(tmp_path / "cut.jsonl")],
            sequence_len=64,
            excess_length_strategy="truncate",
        )
    )
    assert len(meta.train_dataset) == 16
    cut = [r.getMessage() for r in warnings_of_selfplay if "cut at sequence_len" in r.getMessage()]
    assert len(cut) == 1 and cut[0].startswith("1 real replies are cut at sequence_len 64") and "row 6" in cut[0]


def test_chat_field_mappings_and_roles_come_from_axolotl(tmp_path, tiny_model_dir, fresh_axolotl):
    """ShareGPT-style `from`/`value` with human/gpt and a custom `roles:` map are read by
    Axolotl's own chat strategy; a conversation without a prompt is refused."""
    sharegpt = [
        {
            "conversations": [
                {"from": "human", "value": r["messages"][-2]["content"]},
                {"from": "gpt", "value": r["messages"][-1]["content"]},
            ]
        }
        for r in DEMO_ROWS[:8]
    ]
    mapping = {"field_messages": "conversations", "message_property_mappings": {"role": "from", "content": "value"}}
    path = _jsonl(tmp_path / "sharegpt.jsonl", sharegpt)
    _, meta = _prepare(
        _write(tmp_path, tiny_model_dir, datasets=[{"path": str(path), "type": "chat_template", **mapping}])
    )
    assert len(meta.train_dataset) == 8

    custom = _jsonl(
        tmp_path / "custom.jsonl", [{"messages": [{"role": "q", "content": "hi"}, {"role": "a", "content": "yo"}]}] * 4
    )
    roles = {"roles": {"user": ["q"], "assistant": ["a"]}}
    _, meta = _prepare(
        _write(tmp_path, tiny_model_dir, datasets=[{"path": str(custom), "type": "chat_template", **roles}])
    )
    assert len(meta.train_dataset) == 4
    with pytest.raises(
        ValueError,
        match=r"row 0 \(line 1 of custom.jsonl\): the conversation does not end with an assistant turn \(its last message has role 'a'\)",
    ):
        _prepare(_write(tmp_path, tiny_model_dir, datasets=[{"path": str(custom), "type": "chat_template"}]))

    sharegpt[1]["conversations"] = sharegpt[1]["conversations"][1:]
    path = _jsonl(tmp_path / "no_prompt.jsonl", sharegpt)  # a new file: Axolotl's cache is keyed by path
    with pytest.raises(ValueError, match=r"row 1 \(line 2 of no_prompt.jsonl\): no prompt before the assistant reply"):
        _prepare(_write(tmp_path, tiny_model_dir, datasets=[{"path": str(path), "type": "chat_template", **mapping}]))


def test_prepared_dataset_cache_is_used_and_still_checked(tmp_path, tiny_model_dir, fresh_axolotl, monkeypatch):
    """`axolotl preprocess` then `axolotl train`: the second run loads Axolotl's prepared
    dataset without tokenizing; rows prepared by a plain SFT config are still checked."""
    from axolotl.utils.data import sft

    rows = [json.loads(json.dumps(r)) for r in DEMO_ROWS[:16]]
    rows[2]["messages"].append({"role": "user", "content": "and?"})
    path = _jsonl(tmp_path / "chat.jsonl", rows)
    sft_config = _write(tmp_path, tiny_model_dir, "sft.yml", rl=None, selfplay=None, datasets=[_chat_entry(path)])
    from axolotl.cli.config import load_cfg
    from axolotl.common.datasets import load_datasets

    load_datasets(cfg=load_cfg(str(sft_config)))  # plain SFT prepares (and caches) the rows
    tokenized = []
    original = sft.get_dataset_wrapper
    monkeypatch.setattr(sft, "get_dataset_wrapper", lambda **kw: tokenized.append(1) or original(**kw))
    with pytest.raises(
        ValueError, match=r"row 2 \(line 3 of chat.jsonl\): the conversation does not end with an assistant turn"
    ):
        _prepare(_write(tmp_path, tiny_model_dir, datasets=[_chat_entry(path)]))

    rows[2] = DEMO_ROWS[2]
    _jsonl(tmp_path / "chat.jsonl", rows)
    config = _write(tmp_path, tiny_model_dir, datasets=[_chat_entry(path)])
    from axolotl.cli.preprocess import do_cli as preprocess

    tokenized.clear()
    preprocess(config=str(config))  # `axolotl preprocess`: the plugin prepares, checks and caches
    assert tokenized == [1]
    os.environ.pop("AXOLOTL_IS_PREPROCESS")
    tokenized.clear()
    _, meta = _prepare(config)
    assert tokenized == [] and len(meta.train_dataset) == 16  # from the cache, untokenized


# -- evaluation rows and `selfplay.opponents_from` ------------------------------------------


def test_test_datasets_rows_are_checked_too(tmp_path, tiny_model_dir, fresh_axolotl, no_weights):
    """Self-play evaluation splits `test_datasets` rows into prompt and reply as well."""
    rows = [json.loads(json.dumps(r)) for r in DEMO_ROWS[:8]]
    rows[1]["messages"][-1]["content"] = ""
    path = _jsonl(tmp_path / "heldout.jsonl", rows)
    config = _write(tmp_path, tiny_model_dir, test_datasets=[_chat_entry(path, split="train")])
    with pytest.raises(ValueError, match=r"`test_datasets\[0\]` \(.*heldout.jsonl\) row 1 \(line 2 of heldout.jsonl\): empty"):
        _train(config)


def test_opponents_from_released_layout_matches_by_prompt(tmp_path, tiny_model_dir, tiny_tokenizer, fresh_axolotl):
    """The first 40 demo conversations (and 3 unknown prompts) in the authors' parquet layout:
    every training row whose prompt is among them (duplicates included) carries the file's
    reply as the template renders an assistant turn; the others carry none."""
    from axolotl_selfplay.opponent_data import SUPPLIED_COLUMN

    unknown = [{"messages": [{"role": "user", "content": f"What is {i} cubed?"}, {"role": "assistant", "content": "?"}]} for i in range(3)]
    source = spin_release_file(tmp_path / "SPIN_iter0" / "train.parquet", DEMO_ROWS[:40] + unknown, "I do not know.")
    _, meta = _prepare(_write(tmp_path, tiny_model_dir, selfplay={"iterations": 2, "opponents_from": str(source)}))
    from axolotl_selfplay.data import build_examples

    def rendered(messages):
        return tiny_tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)

    in_file = {rendered(row["messages"]) for row in DEMO_ROWS[:40]}
    prompts, _ = build_examples(meta.train_dataset)
    matched = 0
    for tokens, prompt in zip(meta.train_dataset[SUPPLIED_COLUMN], prompts):
        assert (tokens is not None) == (tiny_tokenizer.decode(prompt) in in_file)
        if tokens is not None:
            matched += 1
            assert tiny_tokenizer.decode(tokens).startswith("I do not know.<|im_end|>")
    assert matched == 41  # 40 conversations, one of them twice in the data


@pytest.mark.parametrize(
    "source, message",
    [
        ("missing.parquet", "`selfplay.opponents_from` ({tmp}/missing.parquet): no such file or directory."),
        (
            "messages.jsonl",
            "`selfplay.opponents_from` ({tmp}/messages.jsonl) has columns messages: expected the SPIN authors' "
            "released data (`real` and `generated` message lists) or an `output_dir/selfplay/iter_{{t}}.jsonl` export",
        ),
        ("unrelated.parquet", "`selfplay.opponents_from` ({tmp}/unrelated.parquet): none of its 2 prompts matches a training prompt."),
    ],
    ids=["missing file", "bad columns", "no matching rows"],
)
def test_opponents_from_errors_come_before_the_model(source, message, tmp_path, tiny_model_dir, fresh_axolotl, no_weights):
    _jsonl(tmp_path / "messages.jsonl", DEMO_ROWS[:4])
    unrelated = [{"messages": [{"role": "user", "content": f"Spell {w}."}, {"role": "assistant", "content": w}]} for w in ("a", "b")]
    spin_release_file(tmp_path / "unrelated.parquet", unrelated, "no")
    config = _write(tmp_path, tiny_model_dir, selfplay={"iterations": 2, "opponents_from": str(tmp_path / source)})
    with pytest.raises(ValueError) as error:
        _train(config)
    assert message.format(tmp=tmp_path) in str(error.value)


# -- 3., 4., 5. ----------------------------------------------------------------------------


def test_misspelt_rl_type_is_named(tmp_path, tiny_model_dir, fresh_axolotl):
    with pytest.raises(ValueError) as error:
        _prepare(_write(tmp_path, tiny_model_dir, rl="spn"))
    assert "unknown rl type `spn`: did you mean `spin`? (spin, spin_chi2, lsp, or one of Axolotl's: dpo" in str(
        error.value
    )
    assert "selfplay.type" not in str(error.value)


def test_axolotl_rl_types_pass_through():
    from axolotl.utils.schemas.enums import RLType

    from axolotl_selfplay.plugin import _check_rl_name

    for member in RLType:
        cfg = {"rl": member.value, "selfplay": {"beta": 0.1}}
        _check_rl_name(cfg)  # Axolotl's values are Axolotl's business, even beside a `selfplay:` block
        assert cfg["rl"] == member.value
    _check_rl_name({"rl": "dpoo"})  # no self-play in sight: Axolotl's own enum error will speak


def test_max_steps_shorter_than_the_iterations_is_announced(
    tmp_path, tiny_model_dir, fresh_axolotl, warnings_of_selfplay
):
    config = _write(tmp_path, tiny_model_dir, selfplay={"iterations": 3}, max_steps=5)
    _prepare(config)
    schedule = [r.getMessage() for r in warnings_of_selfplay if "max_steps" in r.getMessage()]
    assert schedule == [
        (
            "`max_steps: 5` stops the run before the end of the self-play schedule (3 iterations × 4 steps = 12 "
            "steps): only 2 of 3 iterations will run, and the last one generates opponents for all 64 prompts to "
            "train 1 of its 4 steps. Set `selfplay.iterations: 1` and remove `max_steps`, or set `max_steps` to a "
            "multiple of 4."
        )
    ]


def test_schedule_with_a_longer_max_steps():
    from axolotl_selfplay.data_check import Schedule

    longer = Schedule(examples=64, iterations=2, epochs_per_iteration=1, steps_per_epoch=4, max_steps=12)
    assert longer.iterations_run == 2
    assert "the last 4 steps train again on iteration 1's opponents" in longer.warning()
    assert Schedule(64, 2, 1, 4, 8).warning() is None and Schedule(64, 2, 1, 4, None).warning() is None
    assert Schedule(64, 3, 2, 4, 16).iterations_run == 2  # 8 steps per iteration


def test_end_of_turn_warning_names_truncation(tiny_tokenizer, caplog):
    """Real replies cut at sequence_len lack the end of turn because of the cut, not `train_on_eos`."""
    from types import SimpleNamespace

    from axolotl_selfplay.opponent import OpponentStore
    from axolotl_selfplay.trainers.spin import LOG, SelfPlayTrainer

    eos = tiny_tokenizer.eos_token_id
    prompts = [[5] * 50, [5] * 10, [5] * 10]
    reals = [[7] * 14, [7, eos], [7, 8]]  # row 0 fills sequence_len 64; row 2 ends without its end of turn
    trainer = SimpleNamespace(
        processing_class=tiny_tokenizer,
        accelerator=SimpleNamespace(unwrap_model=lambda m: m),
        model=SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=eos)),
        opponents=OpponentStore(prompts, reals),
        args=SimpleNamespace(max_seq_length=64),
    )
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    LOG.addHandler(handler)
    try:
        SelfPlayTrainer._check_end_of_turn(trainer, {eos})
    finally:
        LOG.removeHandler(handler)
    (message,) = [r.getMessage() for r in records]
    assert message.startswith("1 real responses were cut at sequence_len 64 by `excess_length_strategy: truncate`")
    assert "; 1 real responses do not end with an end-of-turn token" in message  # row 2: train_on_eos

    records.clear()
    trainer.opponents = OpponentStore(prompts[:1], reals[:1])
    LOG.addHandler(handler)
    try:
        SelfPlayTrainer._check_end_of_turn(trainer, {eos})
    finally:
        LOG.removeHandler(handler)
    assert "train_on_eos" not in records[0].getMessage()


# -- 6. axolotl-selfplay check -------------------------------------------------------------


def _check(config: Path, capsys) -> tuple[int, str, str]:
    code = main(["check", str(config)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("rl", ["spin", "spin_chi2"])
def test_check_good_spin_config(rl, tmp_path, tiny_model_dir, fresh_axolotl, no_weights, capsys):
    source = spin_release_file(tmp_path / "iter0.parquet", DEMO_ROWS[:10], "No idea.")
    selfplay = {"iterations": 2, "opponents_from": str(source), "generation": {"max_new_tokens": 12}}
    code, out, err = _check(_write(tmp_path, tiny_model_dir, rl=rl, selfplay=selfplay), capsys)
    assert code == 0, err
    assert f"OK (rl: {rl}," in out and "no model weights loaded" in out
    assert "data       64 rows in 1 entry: 64 usable, 0 dropped by Axolotl" in out
    assert "64 training rows, 0 evaluation rows" in out
    assert "tokens     prompt p50 " in out and "(sequence_len 128)" in out
    assert "prompts    end with '…" in out and "<|im_start|>assistant\\n'" in out
    assert "schedule   2 iterations × 1 epoch × 4 steps = 8 optimizer steps" in out
    assert "opponents  64 per iteration (12 new tokens at most" in out and "128 in all" in out
    assert (
        f"iteration 0: 11 of 64 training rows take iteration 0's opponent from `selfplay.opponents_from` ({source}) "
        "(spin layout, 10 rows); 53 without a match are generated"
    ) in out, out
    # A second check finds Axolotl's prepared dataset in the cache, and says the same
    code, again, _ = _check(_write(tmp_path, tiny_model_dir, rl=rl, selfplay=selfplay), capsys)
    assert code == 0 and "(from the dataset_prepared_path cache)" in again
    assert again.replace(" (from the dataset_prepared_path cache)", "") == out


def test_check_reports_drops_and_the_short_schedule(tmp_path, tiny_model_dir, fresh_axolotl, capsys):
    rows = [json.loads(json.dumps(r)) for r in DEMO_ROWS]
    rows[5]["messages"][0]["content"] = "long " * 80
    path = _jsonl(tmp_path / "chat.jsonl", rows)
    code, out, err = _check(
        _write(
            tmp_path,
            tiny_model_dir,
            datasets=[_chat_entry(path)],
            sequence_len=64,
            selfplay={"iterations": 3},
            max_steps=5,
        ),
        capsys,
    )
    assert code == 0, err
    assert "64 rows in 1 entry: 63 usable, 1 dropped by Axolotl (1 longer than sequence_len 64)" in out
    assert "max_steps 5: only 2 of 3 iterations run" in out and "126 in all" in out


def test_check_bad_spin_config_gives_the_train_error(tmp_path, tiny_model_dir, fresh_axolotl, no_weights, capsys):
    config = _broken_chat(tmp_path, tiny_model_dir, "empty reply")
    code, out, err = _check(config, capsys)
    assert code == 1 and out == ""
    with pytest.raises(ValueError) as train_error:
        _train(config)
    assert str(train_error.value) in err
    assert "row 3 (line 4 of chat.jsonl): empty assistant reply" in err


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            {"rl": "spin_chi2", "selfplay": {"chi2_alpha": 1.5}},
            "invalid `selfplay.chi2_alpha`: Input should be less than 1",
        ),
        ({"rl": "spn"}, "unknown rl type `spn`: did you mean `spin`?"),
        ({"rl": None, "selfplay": None}, "this config does not ask for self-play"),
    ],
    ids=["spin_chi2", "misspelt rl", "not self-play"],
)
def test_check_bad_configs(overrides, message, tmp_path, tiny_model_dir, fresh_axolotl, capsys):
    code, out, err = _check(_write(tmp_path, tiny_model_dir, **overrides), capsys)
    assert code == 1 and out == "" and message in err


def test_check_lsp(tmp_path, tiny_model_dir, fresh_axolotl, no_weights, monkeypatch, capsys):
    monkeypatch.chdir(with_reward_module(tmp_path))
    cfg = lsp_config(tiny_model_dir, tmp_path)
    (tmp_path / "lsp.yml").write_text(yaml.safe_dump(cfg))
    code, out, err = _check(tmp_path / "lsp.yml", capsys)
    assert code == 0, err
    assert "OK (rl: lsp," in out
    assert "games      3 steps × 2 games = 6 games of 4 queries × 3 answers" in out
    assert "rewards    arithmetic.exact_sum (weight 1.0); self-reward (judge) on" in out
    assert "per step   32 policy generations, 24 judge generations" in out

    cfg["selfplay"]["lsp"]["reward_funcs"] = ["arithmetic.nope"]
    (tmp_path / "lsp.yml").write_text(yaml.safe_dump(cfg))
    code, out, err = _check(tmp_path / "lsp.yml", capsys)
    assert (
        code == 1
        and "`selfplay.lsp.reward_funcs[0]` = `arithmetic.nope`: module `arithmetic` has no function `nope`" in err
    )

    cfg["selfplay"]["lsp"]["reward_funcs"] = ["arithmetic.exact_sum"]
    cfg["selfplay"]["lsp"]["reward_model"] = str(tmp_path / "no-such-reward-model")
    (tmp_path / "lsp.yml").write_text(yaml.safe_dump(cfg))
    code, out, err = _check(tmp_path / "lsp.yml", capsys)
    assert (
        code == 1
        and f"`selfplay.lsp.reward_model` = `{tmp_path / 'no-such-reward-model'}`: cannot read its config" in err
    )


def test_check_help_documents_its_options(capsys):
    with pytest.raises(SystemExit) as done:
        main(["check", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "without loading any model weights" in out and "--verbose" in out and "config" in out


def test_a_tokenization_error_the_template_does_not_explain_passes_through(monkeypatch):
    """`watch_entries(on_error=...)`: the explanation replaces Axolotl's error only when it finds
    the row; otherwise Axolotl's own error propagates unchanged."""
    from axolotl.utils.data import sft

    from axolotl_selfplay.axolotl_data import watch_entries
    from axolotl_selfplay.data_check import SelfPlayDataError

    def failing_wrapper(**kwargs):
        raise RuntimeError("Axolotl's own error")

    monkeypatch.setattr(sft, "get_dataset_wrapper", failing_wrapper)
    kwargs = {"dataset_config": {}, "dataset": [], "tokenizer": None}
    with watch_entries(lambda *args: None, on_error=lambda *args: None):
        with pytest.raises(RuntimeError, match="Axolotl's own error"):
            sft.get_dataset_wrapper(**kwargs)

    def explain(*args):
        raise SelfPlayDataError("row 3: the chat template rejects this conversation")

    with watch_entries(lambda *args: None, on_error=explain):
        with pytest.raises(SelfPlayDataError, match="row 3"):
            sft.get_dataset_wrapper(**kwargs)
