"""The data/ package: data reaches self-play exactly as Axolotl loads it (the prompt/response
split, `opponents_from`, LSP seed prompts), and every data error comes before any model
weights load, naming the source row.

Everything runs in-process on Axolotl's own config loading and data preparation (no
`axolotl train` subprocess): a probe on `from_pretrained` proves no weights were loaded.
The same checks behind `axolotl-selfplay check`: tests/test_check.py.
"""

from __future__ import annotations

import json
import logging
import os
import shutil

import pytest
import yaml
from conftest import (
    DEMO_DATA,
    DEMO_ROWS,
    base_config_file,
    broken_chat_config,
    chat_entry,
    lsp_config,
    prepare_data,
    spin_release_file,
    train_in_this_process,
    with_reward_module,
    write_jsonl,
)

from axolotl_selfplay.data.collator import SelfPlayCollator
from axolotl_selfplay.data.columns import INDEX_COLUMN
from axolotl_selfplay.data.split import NoAssistantTurnError, build_examples, split_prompt_response

M = -100  # masked label
EOS = 2


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


# -- the prompt/response split and the collator, on literal tokens ----------------------


def test_split_takes_last_labelled_span_and_drops_unlabelled_tail():
    # user turn (masked), assistant turn 1 (labelled), user turn 2 (masked), assistant turn 2, "\n" tail
    input_ids = [1, 10, 11, 20, 21, EOS, 12, 13, 30, 31, EOS, 99]
    labels = [M, M, M, 20, 21, EOS, M, M, 30, 31, EOS, M]
    prompt, response = split_prompt_response(input_ids, labels, {EOS})
    assert prompt == [1, 10, 11, 20, 21, EOS, 12, 13]  # earlier assistant turn stays in the prompt
    assert response == [30, 31, EOS]


def test_split_extends_the_response_to_an_unlabelled_end_of_turn():
    # Gemma without `eot_tokens`: <end_of_turn> (7) follows the labelled content unlabelled
    # (Axolotl only labels the EOS token, which the template never renders); "\n" (99) after it
    END_OF_TURN = 7
    input_ids = [1, 10, END_OF_TURN, 99, 20, 21, END_OF_TURN, 99]
    labels = [M, M, M, M, 20, 21, M, M]
    assert split_prompt_response(input_ids, labels, ()) == ([1, 10, END_OF_TURN, 99], [20, 21])  # not aligned
    prompt, response = split_prompt_response(input_ids, labels, {EOS, END_OF_TURN})
    assert (prompt, response) == ([1, 10, END_OF_TURN, 99], [20, 21, END_OF_TURN])


def test_split_joins_a_conversation_final_eos_to_its_turn():
    # Phi-3: "<|assistant|>\n{answer}<|end|>\n<|endoftext|>" with `train_on_eos: turn` labels the
    # answer and the final EOS, not <|end|> (8) nor "\n" (99); the lone EOS span must not
    # become y (the whole answer would then be part of the prompt)
    END = 8
    input_ids = [1, 10, END, 99, 20, 21, END, 99, EOS]
    labels = [M, M, M, M, 20, 21, M, M, EOS]
    assert split_prompt_response(input_ids, labels, ())[1] == [EOS]  # not aligned
    prompt, response = split_prompt_response(input_ids, labels, {EOS, END})
    assert (prompt, response) == ([1, 10, END, 99], [20, 21, END])  # y ends where generation stops
    # with `eot_tokens: [<|end|>]` the turn's <|end|> is labelled too: same split
    labels_eot = [M, M, M, M, 20, 21, END, M, EOS]
    assert split_prompt_response(input_ids, labels_eot, {EOS, END}) == (prompt, response)
    # an earlier assistant turn far before a lone EOS is not joined
    far = [1, 20, END, 99, 11, 12, 13, 14, EOS]
    assert split_prompt_response(far, [M, 20, END, M, M, M, M, M, EOS], {EOS, END})[1] == [EOS]


def test_split_without_labels_raises():
    with pytest.raises(NoAssistantTurnError):
        split_prompt_response([1, 2, 3], [M, M, M], {EOS})


def test_build_examples_names_the_row():
    from datasets import Dataset

    good = {"input_ids": [[1, 5, EOS]], "labels": [[M, 5, EOS]]}
    assert build_examples(Dataset.from_dict(good), {EOS}) == ([[1]], [[5, EOS]])
    bad = {"input_ids": [[1, 5, EOS], [1, 5]], "labels": [[M, 5, EOS], [M, M]]}
    with pytest.raises(NoAssistantTurnError, match="training row 1"):
        build_examples(Dataset.from_dict(bad), {EOS})
    with pytest.raises(NoAssistantTurnError, match="no prompt"):
        build_examples({"input_ids": [[5, EOS]], "labels": [[5, EOS]]}, {EOS})


def test_collator_passes_only_indices():
    batch = SelfPlayCollator(tokenizer=None, padding=True, pad_to_multiple_of=64)(
        [{"input_ids": [1, 2], "labels": [M, 2], INDEX_COLUMN: 5}, {"input_ids": [3], "labels": [3], INDEX_COLUMN: 0}]
    )
    assert set(batch) == {INDEX_COLUMN}
    assert batch[INDEX_COLUMN].tolist() == [5, 0]
    with pytest.raises(KeyError, match=INDEX_COLUMN):
        SelfPlayCollator()([{"input_ids": [1]}])


# -- datasets that load as a DatasetDict ------------------------------------------------


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
    entry = {**chat_entry("unused"), **source(tmp_path)}
    _, meta = prepare_data(base_config_file(tmp_path, tiny_model_dir, datasets=[entry]))
    assert len(meta.train_dataset) == len(DEMO_ROWS)
    assert {"input_ids", "labels"} <= set(meta.train_dataset.column_names)


def test_lsp_seed_prompts_from_a_directory(tmp_path, tiny_model_dir, fresh_axolotl, monkeypatch):
    folder = tmp_path / "topics"
    write_jsonl(folder / "train.jsonl", [{"topic": t} for t in ["sums", "carries", "zeros"]])
    monkeypatch.chdir(with_reward_module(tmp_path))
    cfg = lsp_config(tiny_model_dir, tmp_path, datasets=[{"path": str(folder), "field": "topic"}])
    cfg["selfplay"]["lsp"]["challenger_prompt"] = "Write an addition problem about {seed}."
    (tmp_path / "lsp.yml").write_text(yaml.safe_dump(cfg))
    _, meta = prepare_data(tmp_path / "lsp.yml")
    assert meta.train_dataset["selfplay_seed"][:4] == ["sums", "carries", "zeros", "sums"]


# -- every data error before any weights load, naming the source row ---------------------


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
    config = broken_chat_config(tmp_path, tiny_model_dir, case)
    with pytest.raises(ValueError) as error:
        train_in_this_process(config)
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
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    config = base_config_file(tmp_path, tiny_model_dir, datasets=[{"path": str(path), **entry}], **overrides)
    with pytest.raises(ValueError) as error:
        train_in_this_process(config)
    assert message.format(path=path) in str(error.value)


def test_rows_axolotl_drops_or_cuts_are_reported_once(tmp_path, tiny_model_dir, fresh_axolotl, warnings_of_selfplay):
    rows = [json.loads(json.dumps(r)) for r in DEMO_ROWS[:16]]
    rows[5]["messages"][0]["content"] = "long " * 80  # too long: Axolotl drops it
    write_jsonl(tmp_path / "drop.jsonl", rows)
    prepare_data(base_config_file(tmp_path, tiny_model_dir, datasets=[chat_entry(tmp_path / "drop.jsonl")], sequence_len=64))
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
    write_jsonl(tmp_path / "cut.jsonl", rows)
    _, meta = prepare_data(
        base_config_file(
            tmp_path,
            tiny_model_dir,
            datasets=[chat_entry(tmp_path / "cut.jsonl")],
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
    path = write_jsonl(tmp_path / "sharegpt.jsonl", sharegpt)
    _, meta = prepare_data(
        base_config_file(tmp_path, tiny_model_dir, datasets=[{"path": str(path), "type": "chat_template", **mapping}])
    )
    assert len(meta.train_dataset) == 8

    custom = write_jsonl(
        tmp_path / "custom.jsonl", [{"messages": [{"role": "q", "content": "hi"}, {"role": "a", "content": "yo"}]}] * 4
    )
    roles = {"roles": {"user": ["q"], "assistant": ["a"]}}
    _, meta = prepare_data(
        base_config_file(tmp_path, tiny_model_dir, datasets=[{"path": str(custom), "type": "chat_template", **roles}])
    )
    assert len(meta.train_dataset) == 4
    with pytest.raises(
        ValueError,
        match=r"row 0 \(line 1 of custom.jsonl\): the conversation does not end with an assistant turn \(its last message has role 'a'\)",
    ):
        prepare_data(base_config_file(tmp_path, tiny_model_dir, datasets=[{"path": str(custom), "type": "chat_template"}]))

    sharegpt[1]["conversations"] = sharegpt[1]["conversations"][1:]
    path = write_jsonl(tmp_path / "no_prompt.jsonl", sharegpt)  # a new file: Axolotl's cache is keyed by path
    with pytest.raises(ValueError, match=r"row 1 \(line 2 of no_prompt.jsonl\): no prompt before the assistant reply"):
        prepare_data(base_config_file(tmp_path, tiny_model_dir, datasets=[{"path": str(path), "type": "chat_template", **mapping}]))


def test_prepared_dataset_cache_is_used_and_still_checked(tmp_path, tiny_model_dir, fresh_axolotl, monkeypatch):
    """`axolotl preprocess` then `axolotl train`: the second run loads Axolotl's prepared
    dataset without tokenizing; rows prepared by a plain SFT config are still checked."""
    from axolotl.utils.data import sft

    rows = [json.loads(json.dumps(r)) for r in DEMO_ROWS[:16]]
    rows[2]["messages"].append({"role": "user", "content": "and?"})
    path = write_jsonl(tmp_path / "chat.jsonl", rows)
    sft_config = base_config_file(tmp_path, tiny_model_dir, "sft.yml", rl=None, selfplay=None, datasets=[chat_entry(path)])
    from axolotl.cli.config import load_cfg
    from axolotl.common.datasets import load_datasets

    load_datasets(cfg=load_cfg(str(sft_config)))  # plain SFT prepares (and caches) the rows
    tokenized = []
    original = sft.get_dataset_wrapper
    monkeypatch.setattr(sft, "get_dataset_wrapper", lambda **kw: tokenized.append(1) or original(**kw))
    with pytest.raises(
        ValueError, match=r"row 2 \(line 3 of chat.jsonl\): the conversation does not end with an assistant turn"
    ):
        prepare_data(base_config_file(tmp_path, tiny_model_dir, datasets=[chat_entry(path)]))

    rows[2] = DEMO_ROWS[2]
    write_jsonl(tmp_path / "chat.jsonl", rows)
    config = base_config_file(tmp_path, tiny_model_dir, datasets=[chat_entry(path)])
    from axolotl.cli.preprocess import do_cli as preprocess

    tokenized.clear()
    preprocess(config=str(config))  # `axolotl preprocess`: the plugin prepares, checks and caches
    assert tokenized == [1]
    os.environ.pop("AXOLOTL_IS_PREPROCESS")
    tokenized.clear()
    _, meta = prepare_data(config)
    assert tokenized == [] and len(meta.train_dataset) == 16  # from the cache, untokenized


# -- evaluation rows and `selfplay.opponents_from` ------------------------------------------


def test_test_datasets_rows_are_checked_too(tmp_path, tiny_model_dir, fresh_axolotl, no_weights):
    """Self-play evaluation splits `test_datasets` rows into prompt and reply as well."""
    rows = [json.loads(json.dumps(r)) for r in DEMO_ROWS[:8]]
    rows[1]["messages"][-1]["content"] = ""
    path = write_jsonl(tmp_path / "heldout.jsonl", rows)
    config = base_config_file(tmp_path, tiny_model_dir, test_datasets=[chat_entry(path, split="train")])
    with pytest.raises(ValueError, match=r"`test_datasets\[0\]` \(.*heldout.jsonl\) row 1 \(line 2 of heldout.jsonl\): empty"):
        train_in_this_process(config)


def test_opponents_from_released_layout_matches_by_prompt(tmp_path, tiny_model_dir, tiny_tokenizer, fresh_axolotl):
    """The first 40 demo conversations (and 3 unknown prompts) in the authors' parquet layout:
    every training row whose prompt is among them (duplicates included) carries the file's
    reply as the template renders an assistant turn; the others carry none."""
    from axolotl_selfplay.data.columns import SUPPLIED_COLUMN

    unknown = [{"messages": [{"role": "user", "content": f"What is {i} cubed?"}, {"role": "assistant", "content": "?"}]} for i in range(3)]
    source = spin_release_file(tmp_path / "SPIN_iter0" / "train.parquet", DEMO_ROWS[:40] + unknown, "I do not know.")
    _, meta = prepare_data(base_config_file(tmp_path, tiny_model_dir, selfplay={"iterations": 2, "opponents_from": str(source)}))
    def rendered(messages):
        return tiny_tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)

    in_file = {rendered(row["messages"]) for row in DEMO_ROWS[:40]}
    prompts, _ = build_examples(meta.train_dataset, {tiny_tokenizer.eos_token_id})
    matched = 0
    for tokens, prompt in zip(meta.train_dataset[SUPPLIED_COLUMN], prompts):
        assert (tokens is not None) == (tiny_tokenizer.decode(prompt) in in_file)
        if tokens is not None:
            matched += 1
            assert tiny_tokenizer.decode(tokens).startswith("I do not know.<|im_end|>")
    assert matched == 41  # 40 conversations, one of them twice in the data


def _training_rows(cfg, meta):
    """(tokenizer, prompts, real responses) of the prepared training rows, split as the trainer splits them."""
    from axolotl.loaders import load_tokenizer

    from axolotl_selfplay.data.split import generation_end_ids

    tokenizer = load_tokenizer(cfg)
    prompts, reals = build_examples(meta.train_dataset, generation_end_ids(cfg, tokenizer))
    return tokenizer, prompts, reals


def test_released_opponents_equal_to_y_are_ys_tokens_on_sentencepiece(tmp_path, zoo, fresh_axolotl, no_weights):
    """The issue's experiment, before any model loads: zephyr's SentencePiece-style tokenizer, 32
    chats, the SPIN authors' layout with `generated` = `real` on 16 rows. Those 16 rows' y' must
    be token-identical to y (tokenized on its own, the reply starts with "▁T" where y has "T",
    and the run would train on 16 pairs of y against y itself re-tokenized), the other 16 the
    released reply as it reads inside the conversation."""
    from axolotl_selfplay.data.columns import SUPPLIED_COLUMN

    released = spin_release_file(
        tmp_path / "SPIN_iter0.parquet", DEMO_ROWS[:32], "I do not know.", real_on=range(0, 32, 2)
    )
    chats = write_jsonl(tmp_path / "chat.jsonl", DEMO_ROWS[:32])
    selfplay = {"iterations": 2, "opponents_from": str(released)}
    config = base_config_file(tmp_path, zoo("zephyr"), datasets=[chat_entry(chats)], selfplay=selfplay)
    cfg, meta = prepare_data(config)
    tokenizer, prompts, reals = _training_rows(cfg, meta)
    supplied = meta.train_dataset[SUPPLIED_COLUMN]
    assert sum(y_prime == y for y_prime, y in zip(supplied, reals)) == 16
    for prompt, y_prime, y in zip(prompts, supplied, reals):
        if y_prime != y:  # the released reply, as the whole conversation tokenizes it
            whole = tokenizer(tokenizer.decode(prompt) + "I do not know.</s>", add_special_tokens=False)["input_ids"]
            assert y_prime == whole[len(prompt) :]
            assert not tokenizer.convert_ids_to_tokens(y_prime)[0].startswith("▁")


def test_a_released_conversation_the_template_rejects_names_the_row(tmp_path, zoo, fresh_axolotl, no_weights):
    """Released conversations are tokenized by Axolotl's chat template strategy, as the training
    rows: Mistral's template rejects a system turn, and the error names the source's row."""
    plain = [row for row in DEMO_ROWS if row["messages"][0]["role"] != "system"][:8]
    with_system = [row for row in DEMO_ROWS if row["messages"][0]["role"] == "system"][:1]
    released = spin_release_file(tmp_path / "SPIN_iter0.parquet", plain[:3] + with_system, "No idea.")
    chats = write_jsonl(tmp_path / "chat.jsonl", plain)
    selfplay = {"iterations": 2, "opponents_from": str(released)}
    with pytest.raises(ValueError, match=r"SPIN_iter0.parquet\) row 3: the chat template rejects this conversation"):
        prepare_data(base_config_file(tmp_path, zoo("mistral"), datasets=[chat_entry(chats)], selfplay=selfplay))


def _export(path, tokenizer, prompts, generated, with_ids=True):
    """Rows in the layout of the plugin's `output_dir/selfplay/iter_{t}.jsonl` (spin/store.py)."""
    rows = []
    for prompt, tokens in zip(prompts, generated):
        row = {"prompt": tokenizer.decode(prompt), "real": "", "generated": tokenizer.decode(tokens), "status": "ok"}
        rows.append({**row, "generated_ids": tokens} if with_ids else row)
    return write_jsonl(path, rows)


def test_an_export_without_generated_ids_is_cut_from_the_whole_conversation(tmp_path, zoo, fresh_axolotl, no_weights):
    """An export whose `generated_ids` are gone (or were written by another tokenizer): the text
    prompt + generated is tokenized whole and y' cut at the prompt's length, so y' = y when the
    text is y's. A row whose prompt does not tokenize as a prefix of the whole is an error naming
    the row and the fix."""
    from axolotl_selfplay.data.columns import SUPPLIED_COLUMN

    chats = write_jsonl(tmp_path / "chat.jsonl", DEMO_ROWS[:16])
    config = base_config_file(tmp_path, zoo("zephyr"), datasets=[chat_entry(chats)])
    cfg, meta = prepare_data(config)
    tokenizer, prompts, reals = _training_rows(cfg, meta)
    export = _export(tmp_path / "iter_0.jsonl", tokenizer, prompts, reals, with_ids=False)
    selfplay = {"iterations": 2, "opponents_from": str(export)}
    _, meta = prepare_data(base_config_file(tmp_path, zoo("zephyr"), datasets=[chat_entry(chats)], selfplay=selfplay))
    assert meta.train_dataset[SUPPLIED_COLUMN] == reals

    broken = write_jsonl(tmp_path / "broken.jsonl", [{"prompt": "What is 2 plus 3?</", "generated": "s>"}])
    selfplay = {"iterations": 2, "opponents_from": str(broken)}
    with pytest.raises(ValueError) as error:
        prepare_data(base_config_file(tmp_path, zoo("zephyr"), datasets=[chat_entry(chats)], selfplay=selfplay))
    assert f"`selfplay.opponents_from` ({broken}) row 0: " in str(error.value)
    assert "`generated_ids`" in str(error.value)


def test_opponents_from_matches_phi3_rows(tmp_path, zoo, fresh_axolotl, no_weights):
    """Phi-3 ends a conversation with a lone labelled EOS after <|end|>\\n: split without the
    end-of-turn tokens, the answer lands in the prompt and no row ever matches, its own export
    included. With the trainer's split every row matches and takes its exported tokens."""
    from axolotl_selfplay.data.columns import SUPPLIED_COLUMN

    cfg, meta = prepare_data(base_config_file(tmp_path, zoo("phi3")))
    tokenizer, prompts, reals = _training_rows(cfg, meta)
    assert all(tokenizer.decode(p).endswith("<|assistant|>\n") for p in prompts)
    export = _export(tmp_path / "iter_0.jsonl", tokenizer, prompts, reals)
    selfplay = {"iterations": 2, "opponents_from": str(export)}
    _, meta = prepare_data(base_config_file(tmp_path, zoo("phi3"), selfplay=selfplay))
    assert meta.train_dataset[SUPPLIED_COLUMN] == reals


def test_end_of_turn_ids_are_the_same_before_and_after_the_model_loads(tmp_path, zoo):
    """The rows are checked and `opponents_from` matched before the model loads
    (`generation_end_ids`), the trainer splits them after (`end_of_turn_ids` of the loaded model):
    one split needs one set of end-of-turn tokens. A checkpoint without generation_config.json
    takes the EOS ids of its config.json, as transformers does when it loads the model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from axolotl_selfplay.data.split import end_of_turn_ids, generation_end_ids

    no_generation_config = shutil.copytree(zoo("llama3.2"), tmp_path / "llama3.2")
    (no_generation_config / "generation_config.json").unlink()
    for path in [zoo(f) for f in ("llama3.2", "qwen2.5", "gemma2", "phi3", "zephyr")] + [no_generation_config]:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path)
        loaded = end_of_turn_ids(tokenizer, model.generation_config)
        assert generation_end_ids({"base_model": str(path)}, tokenizer) == loaded, path
    assert len(loaded) == 3  # <|end_of_text|>, <|eom_id|>, <|eot_id|> from config.json


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
    write_jsonl(tmp_path / "messages.jsonl", DEMO_ROWS[:4])
    unrelated = [{"messages": [{"role": "user", "content": f"Spell {w}."}, {"role": "assistant", "content": w}]} for w in ("a", "b")]
    spin_release_file(tmp_path / "unrelated.parquet", unrelated, "no")
    config = base_config_file(tmp_path, tiny_model_dir, selfplay={"iterations": 2, "opponents_from": str(tmp_path / source)})
    with pytest.raises(ValueError) as error:
        train_in_this_process(config)
    assert message.format(tmp=tmp_path) in str(error.value)


# -- warnings: a short max_steps, real replies without their end of turn -----------------


def test_max_steps_shorter_than_the_iterations_is_announced(
    tmp_path, tiny_model_dir, fresh_axolotl, warnings_of_selfplay
):
    config = base_config_file(tmp_path, tiny_model_dir, selfplay={"iterations": 3}, max_steps=5)
    prepare_data(config)
    schedule = [r.getMessage() for r in warnings_of_selfplay if "max_steps" in r.getMessage()]
    assert schedule == [
        (
            "`max_steps: 5` stops the run before the end of the self-play schedule (3 iterations × 4 steps = 12 "
            "steps): only 2 of 3 iterations will run, and the last one generates opponents for all 64 prompts to "
            "train 1 of its 4 steps. Set `selfplay.iterations: 1` and remove `max_steps`, or set `max_steps` to a "
            "multiple of 4."
        )
    ]


def test_end_of_turn_warning_names_truncation(tiny_tokenizer):
    """Real replies cut at sequence_len lack the end of turn because of the cut, not `train_on_eos`."""
    from axolotl_selfplay.data.split import missing_end_of_turn_warning
    from axolotl_selfplay.spin.store import OpponentStore

    eos = tiny_tokenizer.eos_token_id
    prompts = [[5] * 50, [5] * 10, [5] * 10]
    reals = [[7] * 14, [7, eos], [7, 8]]  # row 0 fills sequence_len 64; row 2 ends without its end of turn
    message = missing_end_of_turn_warning(OpponentStore(prompts, reals), {eos}, 64)
    assert message.startswith("1 real responses were cut at sequence_len 64 by `excess_length_strategy: truncate`")
    assert "; 1 real responses do not end with an end-of-turn token" in message  # row 2: train_on_eos

    only_cut = missing_end_of_turn_warning(OpponentStore(prompts[:1], reals[:1]), {eos}, 64)
    assert "train_on_eos" not in only_cut
    assert missing_end_of_turn_warning(OpponentStore(prompts[1:2], reals[1:2]), {eos}, 64) is None


# -- Axolotl's own errors --------------------------------------------------------------------


def test_a_tokenization_error_the_template_does_not_explain_passes_through(monkeypatch):
    """`watch_entries(on_error=...)`: the explanation replaces Axolotl's error only when it finds
    the row; otherwise Axolotl's own error propagates unchanged."""
    from axolotl.utils.data import sft

    from axolotl_selfplay.data.axolotl_loading import watch_entries
    from axolotl_selfplay.data.rows import SelfPlayDataError

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
