"""The model zoo: `rl: spin` end to end on tiny models of real families (CPU).

Each family (axolotl_selfplay/tiny_models.py) has its real chat template, special
tokens, EOS/pad conventions and shipped generation_config.json, the places where
self-play code fails silently: Gemma ends a turn with <end_of_turn>, not its EOS
token; Phi-3 renders its EOS after the turn's <|end|> and a newline; Llama-3.2
injects a dated system prompt and a BOS; Qwen2.5 a default system prompt and
top_k / repetition_penalty sampling defaults; Mistral and Gemma-2 reject a system
turn; Llama-3.2, Qwen2.5 and Gemma share input and output embeddings.

One in-process run per family, two at a time: 2 iterations of 1-2 steps. Three runs
also carry the cases no other test covered: `gradient_accumulation_steps: 2`
(llama3.2), `loss_type: hinge` (qwen2.5) and `bf16: true` (gemma2). Axolotl cannot
train bf16 on a CPU: transformers refuses `bf16` without its `use_cpu` argument,
which Axolotl never sets (`bfloat16: true` maps to the same flag). That run lifts
only this check (tests/scripts/run_train.py --cpu-bf16); torch then autocasts to
bf16 on the CPU as it would on a GPU.
"""

from __future__ import annotations

import json
import math

import pytest
from conftest import DEMO_DATA, base_config, read_jsonl, train_in_process_all

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
}
MICRO_BATCH = 32


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
        probes = ["--param-report", str(out / "moved.json")]
        if spec.get("bf16"):
            cfg["bf16"] = True
            probes.append("--cpu-bf16")
        batches = math.ceil(rows / MICRO_BATCH)
        steps = math.ceil(batches / cfg["gradient_accumulation_steps"])
        meta[family] = {"steps_per_iteration": steps, "moved": out / "moved.json"}
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

    from axolotl_selfplay.generation import cut_at_eos, end_of_turn_ids, generate_responses
    from axolotl_selfplay.sampling import SamplingSpec

    path = zoo("qwen2.5")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    model.generation_config.top_k = 1
    model.generation_config.repetition_penalty = 100.0
    text = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2 plus 3?"}], tokenize=False, add_generation_prompt=True)
    prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
    ends = end_of_turn_ids(tokenizer, model)
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
