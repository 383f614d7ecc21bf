"""The model zoo: `rl: spin` end to end on tiny models of real families (CPU).

Each family (axolotl_selfplay/tiny_models.py) has its real chat template, special
tokens, EOS/pad conventions and shipped generation_config.json, the places where
self-play code fails silently: Gemma ends a turn with <end_of_turn>, not its EOS
token; Phi-3 renders its EOS after the turn's <|end|> and a newline; Llama-3.2
injects a dated system prompt and a BOS; Qwen2.5 a default system prompt and
top_k / repetition_penalty sampling defaults; Mistral and Gemma-2 reject a system
turn; Llama-3.2, Qwen2.5 and Gemma share input and output embeddings; zephyr (the SPIN
paper's model) has a SentencePiece-style tokenizer that prefixes text with "▁", so a
reply tokenized alone is not the reply inside its conversation.

One in-process run per family, two at a time: 2 iterations of 1-2 steps. Four runs
also carry the cases no other test covered: `gradient_accumulation_steps: 2`
(llama3.2), `loss_type: hinge` (qwen2.5), `bf16: true` (gemma2) and released opponents
in the SPIN authors' layout, half of them equal to the real reply (zephyr). Axolotl cannot
train bf16 on a CPU: transformers refuses `bf16` without its `use_cpu` argument,
which Axolotl never sets (`bfloat16: true` maps to the same flag). That run lifts
only this check (tests/scripts/run_train.py --cpu-bf16); torch then autocasts to
bf16 on the CPU as it would on a GPU.
"""

from __future__ import annotations

import json
import math

import pytest
from conftest import (
    DEMO_DATA,
    DEMO_ROWS,
    base_config,
    fresh_dir,
    prepare_data,
    read_jsonl,
    spin_release_file,
    train_in_process_all,
    write_config,
)

pytestmark = pytest.mark.e2e
LN2 = math.log(2)

# family: what its run checks beyond the common ones
ZOO = {
    # accumulation: 2 micro-batches of 32 = the whole dataset = one step per iteration
    "llama3.2": {"overrides": {"gradient_accumulation_steps": 2}, "generation_prompt": "<|start_header_id|>assistant<|end_header_id|>\n\n", "end": "<|eot_id|>"},
    "qwen2.5": {"loss_type": "hinge", "generation_prompt": "<|im_start|>assistant\n", "end": "<|im_end|>"},
    "mistral": {"no_system": True, "generation_prompt": " [/INST]", "end": "</s>"},
    # bf16 (autocast, bf16 weights): softcapping and a tied embedding in half precision
    "gemma2": {"no_system": True, "bf16": True, "generation_prompt": "<start_of_turn>model\n", "end": "<end_of_turn>"},
    "gemma3": {"generation_prompt": "<start_of_turn>model\n", "end": "<end_of_turn>"},
    "phi3": {"generation_prompt": "<|assistant|>\n", "end": "<|end|>"},
    # iteration 0's opponents from the SPIN authors' layout, y' = y on the even rows
    "zephyr": {"released_half": True, "generation_prompt": "<|assistant|>\n", "end": "</s>"},
}
MICRO_BATCH = 32
RELEASED_REPLY = "I do not know."


def _no_system_data(path):
    """The demo data without its system-prompt rows (Mistral's and Gemma-2's templates reject them)."""
    rows = [json.loads(line) for line in DEMO_DATA.read_text().splitlines()]
    kept = [row for row in rows if row["messages"][0]["role"] != "system"]
    path.write_text("".join(json.dumps(row) + "\n" for row in kept))
    return path, len(kept)


@pytest.fixture(scope="module")
def zoo_runs(tmp_path_factory, zoo):
    jobs, meta = [], {}
    for family, spec in ZOO.items():
        out = tmp_path_factory.mktemp(f"zoo-run-{family}")
        overrides = {"micro_batch_size": MICRO_BATCH, **spec.get("overrides", {})}
        cfg = base_config(zoo(family), out, **overrides)
        rows = 64
        if spec.get("no_system"):
            data, rows = _no_system_data(out / "chat.jsonl")
            cfg["datasets"][0]["path"] = str(data)
        if "loss_type" in spec:
            cfg["selfplay"]["loss_type"] = spec["loss_type"]
        if spec.get("released_half"):
            released = spin_release_file(out / "SPIN_iter0.parquet", DEMO_ROWS, RELEASED_REPLY, real_on=range(0, 64, 2))
            cfg["selfplay"]["opponents_from"] = str(released)
        probes = ["--param-report", str(out / "moved.json")]
        if spec.get("bf16"):
            cfg["bf16"] = True
            probes.append("--cpu-bf16")
        batches = math.ceil(rows / MICRO_BATCH)
        steps = math.ceil(batches / cfg["gradient_accumulation_steps"])
        meta[family] = {"steps_per_iteration": steps, "moved": out / "moved.json", "cfg": cfg}
        jobs.append((cfg, out / "spin.yml", tuple(probes)))
    runs = train_in_process_all(jobs, parallel=2)
    return {family: (run, meta[family]) for family, run in zip(ZOO, runs)}


@pytest.mark.parametrize("family", list(ZOO))
def test_spin_on_every_family(family, zoo_runs):
    run, meta = zoo_runs[family]
    assert run.returncode == 0, run.output[-6000:]
    spec = ZOO[family]
    steps = meta["steps_per_iteration"]

    # the first loss of every iteration: the policy is the reference, every margin is 0
    losses = dict(run.scalars("train/loss"))
    assert len(losses) == 2 * steps
    first = 1.0 if spec.get("loss_type") == "hinge" else LN2
    for step in (1, 1 + steps):
        assert losses[step] == pytest.approx(first, abs=1e-4), (family, losses)

    # every logged value is finite (HF's logging_nan_inf_filter would hide a NaN loss)
    logs = run.logs()
    assert len(logs) == 2 * steps
    for row in logs:
        bad = {k: v for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)}
        assert not bad, (family, row)

    # full fine-tuning moved every parameter (a tied embedding is one parameter)
    moved = json.loads(meta["moved"].read_text())
    assert moved and all(moved.values()), [n for n, m in moved.items() if not m]
    if spec.get("bf16"):
        assert "torch_dtype: torch.bfloat16" in run.output or '"torch_dtype": "torch.bfloat16"' in run.output

    # y is the last assistant turn through its end-of-turn token, as y' ends when generated;
    # x ends with the family's generation prompt and never contains y
    for iteration in (0, 1):
        rows = read_jsonl(run.output_dir / "selfplay" / f"iter_{iteration}.jsonl")
        assert rows
        for row in rows:
            assert row["real"].endswith(spec["end"]) and row["real"].count(spec["end"]) == 1, row["real"]
            assert row["prompt"].endswith(spec["generation_prompt"]), row["prompt"]
            assert row["real"][: -len(spec["end"])].strip() not in row["prompt"], row
            assert math.isfinite(row["ref_logp_real"]) and row["ref_logp_real"] < 0
    if spec.get("released_half"):
        _released_half_is_identical(run)


def _released_half_is_identical(run):
    """The released rows with y' = y (32 of the 64 training rows: the even rows, and one of
    the two copies of the conversation rows 6 and 45 share) are y' token-identical to y: the
    export marks them `identical` and they are half of iteration 0's pairs."""
    rows = read_jsonl(run.output_dir / "selfplay" / "iter_0.jsonl")
    identical = [r for r in rows if r["status"] == "identical"]
    assert len(identical) == 32, [(r["real"], r["generated"]) for r in rows[:4]]
    assert all(r["generated"] == r["real"] for r in identical)
    assert all(r["generated"] == RELEASED_REPLY + "</s>" for r in rows if r["status"] != "identical")
    fractions = dict(run.scalars("train/opponent/identical_frac"))  # iteration 0: steps 1 and 2, 32 pairs each
    assert (fractions[1] + fractions[2]) / 2 == pytest.approx(0.5)


def test_accumulated_step_metrics_cover_every_micro_batch(zoo_runs):
    """gradient_accumulation_steps 2 (llama3.2): one step = both micro-batches = all 64
    examples, all scored under θ_t, so the step's logps/* must be the means over every kept
    pair of the whole step of the exported reference log-probs: not one micro-batch's, and
    not a mean of the two micro-batches' means (they hold different numbers of kept pairs
    when an opponent is dropped)."""
    run, meta = zoo_runs["llama3.2"]
    assert run.returncode == 0, run.output[-6000:]
    assert meta["steps_per_iteration"] == 1
    real = dict(run.scalars("train/logps/real"))
    generated = dict(run.scalars("train/logps/generated"))
    for iteration, step in ((0, 1), (1, 2)):
        rows = read_jsonl(run.output_dir / "selfplay" / f"iter_{iteration}.jsonl")
        kept = [r for r in rows if r["status"] == "ok"]
        assert len(rows) == 64 and kept
        assert real[step] == pytest.approx(sum(r["ref_logp_real"] for r in kept) / len(kept), abs=1e-3)
        assert generated[step] == pytest.approx(sum(r["ref_logp_generated"] for r in kept) / len(kept), abs=1e-3)


@pytest.mark.parametrize("family", ["phi3", "zephyr"])
def test_an_export_as_opponents_from_reproduces_iteration_0(family, zoo_runs, tmp_path, fresh_axolotl):
    """The run's own iteration-0 export as `opponents_from` (an ablation rerun against the same
    opponents): every training row matches its exported row and takes exactly its y' tokens.
    Phi-3's rows end with a lone labelled EOS after <|end|>: the prompt is only found when the
    split aligns y to the end of turn. Zephyr's text does not tokenize back piece by piece:
    without `generated_ids`, prompt + y' is tokenized whole and cut at the prompt."""
    from axolotl_selfplay.data.columns import SUPPLIED_COLUMN

    run, meta = zoo_runs[family]
    assert run.returncode == 0, run.output[-6000:]
    export = run.output_dir / "selfplay" / "iter_0.jsonl"
    rows = read_jsonl(export)
    cfg = json.loads(json.dumps(meta["cfg"]))
    cfg["output_dir"] = str(fresh_dir(tmp_path / "run"))
    cfg["selfplay"]["opponents_from"] = str(export)
    _, data = prepare_data(write_config(cfg, tmp_path / "ablation.yml"))
    assert data.train_dataset[SUPPLIED_COLUMN] == [r["generated_ids"] for r in rows]
    if family == "zephyr":  # its iteration-0 y' are released text: they have one tokenization in context
        text_only = tmp_path / "text_only.jsonl"
        text_only.write_text("".join(json.dumps({**r, "generated_ids": None}) + "\n" for r in rows))
        cfg["selfplay"]["opponents_from"] = str(text_only)
        _, data = prepare_data(write_config(cfg, tmp_path / "text_only.yml"))
        assert data.train_dataset[SUPPLIED_COLUMN] == [r["generated_ids"] for r in rows]


def test_sentencepiece_family_tokenizes_as_llama2(zoo):
    """zephyr's tokenizer has Llama-2's conventions: <s> added when encoding (the template has
    none), "\n" as the byte piece <0x0A>, "▁" before the first word of every piece of text,
    also after a special token. So a reply tokenized on its own starts with "▁T", where inside
    its conversation it starts with "T": y' must be cut out of the whole conversation."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(zoo("zephyr"))
    assert tokenizer.convert_ids_to_tokens(tokenizer("Two")["input_ids"])[:2] == ["<s>", "▁T"]
    chat = [{"role": "user", "content": "What is 2 plus 3?"}, {"role": "assistant", "content": "The answer is 5."}]
    prompt = tokenizer.apply_chat_template(chat[:1], tokenize=False, add_generation_prompt=True)
    whole = tokenizer.apply_chat_template(chat, tokenize=False)
    assert prompt == "<|user|>\nWhat is 2 plus 3?</s>\n<|assistant|>\n"
    assert whole[len(prompt) :] == "The answer is 5.</s>\n"
    in_context = tokenizer(whole, add_special_tokens=False)["input_ids"]
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert in_context[: len(prompt_ids)] == prompt_ids
    reply = tokenizer.convert_ids_to_tokens(in_context[len(prompt_ids) :])
    alone = tokenizer.convert_ids_to_tokens(tokenizer(whole[len(prompt) :], add_special_tokens=False)["input_ids"])
    assert reply[0] == "T" and alone[0] == "▁T" and reply[1:] == alone[1:]
    assert reply[-3:] == ["</s>", "▁", "<0x0A>"]  # the legacy "▁" after a special token
    assert tokenizer.decode(in_context[len(prompt_ids) :]) == "The answer is 5.</s> \n"


def test_warm_up_trains_the_reply_as_it_stands_in_its_conversation(zoo):
    """`warm_up` (the LSP tests' arithmetic models, `tiny-model --sft-steps`) trains each reply's
    tokens as they stand after the prompt, not the reply's text tokenized alone ("▁"-prefixed)."""
    from transformers import AutoTokenizer

    from axolotl_selfplay.tiny_models import warm_up_examples

    path = zoo("zephyr")
    tokenizer = AutoTokenizer.from_pretrained(path)
    examples = warm_up_examples(str(path), tokenizer, str(DEMO_DATA))
    assert len(examples) == 64
    for row, (prompt, reply) in zip(DEMO_ROWS, examples):
        whole = tokenizer.apply_chat_template(row["messages"], tokenize=True, return_dict=False)
        assert whole[: len(prompt)] == prompt and whole[len(prompt) : len(prompt) + len(reply)] == reply
        assert reply[-1] == tokenizer.eos_token_id


def test_families_keep_their_real_conventions(zoo):
    """The zoo's point: each tiny model carries its family's conventions."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    expect = {
        # family: (tied, tokenizer eos, generation_config eos tokens)
        "llama3.2": (True, "<|eot_id|>", ["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"]),
        "qwen2.5": (True, "<|im_end|>", ["<|im_end|>", "<|endoftext|>"]),
        "mistral": (False, "</s>", ["</s>"]),
        "gemma2": (True, "<eos>", ["<eos>", "<end_of_turn>"]),
        "phi3": (False, "<|endoftext|>", ["<|endoftext|>", "<|assistant|>", "<|end|>"]),
        "zephyr": (False, "</s>", ["</s>"]),
    }
    for family, (tied, eos, generation_eos) in expect.items():
        path = zoo(family)
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path)
        assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) == tied, family
        assert tokenizer.eos_token == eos, family
        configured = GenerationConfig.from_pretrained(path).eos_token_id
        configured = [configured] if isinstance(configured, int) else configured
        assert tokenizer.convert_ids_to_tokens(configured) == generation_eos, family
    qwen = GenerationConfig.from_pretrained(zoo("qwen2.5"))
    assert (qwen.do_sample, qwen.temperature, qwen.top_p, qwen.top_k, qwen.repetition_penalty) == (True, 0.7, 0.8, 20, 1.05)
    llama = GenerationConfig.from_pretrained(zoo("llama3.2"))
    assert (llama.do_sample, llama.temperature, llama.top_p) == (True, 0.6, 0.9)
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    with pytest.raises(Exception, match="roles must alternate"):
        AutoTokenizer.from_pretrained(zoo("mistral")).apply_chat_template(chat, tokenize=False)
    qwen_tokenizer = AutoTokenizer.from_pretrained(zoo("qwen2.5"))
    assert "You are Qwen" in qwen_tokenizer.apply_chat_template(chat[1:], tokenize=False)
    assert qwen_tokenizer.bos_token is None


def test_generation_ignores_the_checkpoints_sampling_defaults(zoo):
    """Qwen2.5 ships top_k 20 and repetition_penalty 1.05 (exaggerated here to 1 and 100), and
    transformers itself samples top-k 50 unless told otherwise. Self-play's y' must come from
    the policy's own distribution, shaped only by the `generation` keys."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from axolotl_selfplay.data.split import end_of_turn_ids
    from axolotl_selfplay.sampling.hf import generate_responses
    from axolotl_selfplay.sampling.spec import SamplingSpec, cut_at_eos

    path = zoo("qwen2.5")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    model.generation_config.top_k = 1
    model.generation_config.repetition_penalty = 100.0
    text = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2 plus 3?"}], tokenize=False, add_generation_prompt=True)
    prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
    ends = end_of_turn_ids(tokenizer, model.generation_config)
    kwargs = {"pad_token_id": tokenizer.pad_token_id, "eos_token_ids": ends, "batch_size": 1}

    sampling = SamplingSpec(max_new_tokens=8)  # the `generation` defaults: temperature 1, every filter off
    sampled = {tuple(generate_responses(model, [prompt], spec=sampling, seed=seed, **kwargs)[0][0]) for seed in range(4)}
    assert len(sampled) > 1  # with the checkpoint's top_k 1 every sample would be the greedy one

    ids = list(prompt)
    with torch.no_grad():
        for _ in range(8):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    argmax, _ = cut_at_eos(ids[len(prompt) :], ends)
    assert len(set(argmax)) < len(argmax)  # it repeats a token: a repetition penalty would change it
    assert generate_responses(model, [prompt], spec=SamplingSpec.greedy(8), seed=0, **kwargs)[0][0] == argmax


def test_dropout_option_sets_the_familys_dropout(tmp_path):
    from transformers import AutoConfig

    from axolotl_selfplay.tiny_models import build_tiny_model

    llama = AutoConfig.from_pretrained(build_tiny_model(str(tmp_path / "llama"), dropout=0.1))
    assert llama.attention_dropout == 0.1
    phi3 = AutoConfig.from_pretrained(build_tiny_model(str(tmp_path / "phi3"), family="phi3", dropout=0.1))
    assert (phi3.attention_dropout, phi3.resid_pdrop, phi3.embd_pdrop) == (0.1, 0.1, 0.1)
    assert AutoConfig.from_pretrained(build_tiny_model(str(tmp_path / "plain"))).attention_dropout == 0.0
