"""The hidden-state route (scoring/head.py) equals the full-logits route, and is taken only where it is exact."""

from __future__ import annotations

import pytest
import torch
from conftest import fully_sharded

from axolotl_selfplay.batching import IGNORE_INDEX
from axolotl_selfplay.scoring import head as scoring_head
from axolotl_selfplay.scoring.head import POST_PROCESSING, head_for
from axolotl_selfplay.scoring.logprobs import model_token_logps, token_logps

VOCAB = 97
SMALL = {
    "vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 8, "max_position_embeddings": 64, "pad_token_id": 0, "bos_token_id": 1,
    "eos_token_id": 2,
}
MOE = {"num_local_experts": 4, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 16,
       "shared_expert_intermediate_size": 16}
# Post-processing strong enough that leaving it out would move every log-prob by far more than 1e-5.
POST = {"gemma2": {"final_logit_softcapping": 0.5}, "gemma3_text": {"final_logit_softcapping": 0.5},
        "cohere": {"logit_scale": 0.25}, "granite": {"logits_scaling": 4.0}}


def tiny(model_type: str, **overrides):
    from transformers import AutoConfig, AutoModelForCausalLM

    extra = MOE if "moe" in model_type or model_type == "mixtral" else {}
    config = AutoConfig.for_model(model_type, **{**SMALL, **extra, **POST.get(model_type, {}), **overrides})
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation="eager").float().train()


def batch():
    """Right-padded rows with prompts of different lengths; labels on the responses."""
    torch.manual_seed(1)
    input_ids = torch.randint(3, VOCAB, (3, 11))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[2, 8:] = 0
    labels = input_ids.clone()
    labels[0, :4] = labels[1, :6] = labels[2, :3] = IGNORE_INDEX
    labels[2, 8:] = IGNORE_INDEX
    return input_ids, attention_mask, labels


def logps_and_grads(model, route):
    input_ids, attention_mask, labels = batch()
    if route == "full":
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        logps, mask = token_logps(logits, labels)
    else:
        logps, mask = model_token_logps(model, input_ids, attention_mask, labels)
    weights = torch.linspace(-1.0, 2.0, logps.numel()).view_as(logps)  # any upstream gradient
    model.zero_grad()
    (logps * weights).sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return logps.detach(), mask, grads


def assert_same(model):
    ref, ref_mask, ref_grads = logps_and_grads(model, "full")
    got, mask, grads = logps_and_grads(model, "hidden")
    assert torch.equal(mask, ref_mask)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    assert grads.keys() == ref_grads.keys()
    for name in ref_grads:
        scale = ref_grads[name].abs().max().clamp_min(1e-6)
        torch.testing.assert_close(grads[name] / scale, ref_grads[name] / scale, atol=1e-5, rtol=0, msg=name)


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(scoring_head, "CHUNK_BYTES", 4 * VOCAB * 3)  # 3 positions per chunk: several chunks per batch


@pytest.mark.parametrize("model_type", sorted(POST_PROCESSING))
def test_hidden_state_route_equals_full_logits_with_gradients(model_type, small_chunks):
    model = tiny(model_type)
    assert head_for(model)[0] is not None
    assert_same(model)


def test_tied_embeddings_and_a_lora_policy(small_chunks):
    from peft import LoraConfig, get_peft_model

    model = tiny("llama", tie_word_embeddings=True)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert_same(model)
    lora = get_peft_model(tiny("qwen2"), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    for name, param in lora.named_parameters():  # a trained adapter, so B ≠ 0 and the adapter matters
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)
    assert head_for(lora)[0] is not None
    assert_same(lora)


def test_no_logits_sized_tensor_is_kept_for_the_backward(small_chunks):
    """The full route keeps (N, T, V) float32 logits for the backward; ours keeps only the
    inputs of the head (hidden states of the labelled positions, the weight)."""
    model = tiny("llama")
    input_ids, attention_mask, labels = batch()

    def saved_shapes(route):
        shapes = []

        def pack(tensor):
            shapes.append(tuple(tensor.shape))
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            if route == "full":
                token_logps(model(input_ids=input_ids, attention_mask=attention_mask).logits, labels)
            else:
                model_token_logps(model, input_ids, attention_mask, labels)
        return [s for s in shapes if VOCAB in s and s not in {(VOCAB, 32), (VOCAB,)}]

    assert saved_shapes("full")  # the logits (rows × V) are saved
    assert saved_shapes("hidden") == []


def test_scoring_without_grad_equals_full_logits():
    model = tiny("gemma2").eval()
    input_ids, attention_mask, labels = batch()
    with torch.no_grad():
        ref, _ = token_logps(model(input_ids=input_ids, attention_mask=attention_mask).logits, labels)
        got, _ = model_token_logps(model, input_ids, attention_mask, labels)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    # the model is left as it was: its own forward returns logits again, soft-capped
    assert model(input_ids=input_ids).logits.shape[-1] == VOCAB
    assert model.config.final_logit_softcapping == 0.5


def test_fallback_to_full_logits_where_the_route_is_not_proven():
    from peft import LoraConfig, get_peft_model

    gpt2 = tiny("gpt2", n_embd=32, n_layer=1, n_head=4).eval()  # eval: GPT-2 has dropout
    head, why = head_for(gpt2)
    assert head is None and "`gpt2`" in why
    # the fallback still gives the right numbers
    input_ids, attention_mask, labels = batch()
    ref, _ = token_logps(gpt2(input_ids=input_ids, attention_mask=attention_mask).logits, labels)
    got, _ = model_token_logps(gpt2, input_ids, attention_mask, labels)
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)

    lora_on_head = get_peft_model(tiny("llama"), LoraConfig(r=4, target_modules=["q_proj", "lm_head"]))
    head, why = head_for(lora_on_head)
    assert head is None and "lm_head" in why
    saved_head = get_peft_model(tiny("llama"), LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["lm_head"]))
    assert head_for(saved_head)[0] is None


def test_fallback_when_a_plugin_patched_the_forward(monkeypatch):
    from transformers import LlamaForCausalLM

    model = tiny("llama")
    original = LlamaForCausalLM.forward

    def patched_forward(self, *args, **kwargs):  # e.g. a fused-loss kernel plugin's forward
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LlamaForCausalLM, "forward", patched_forward)
    head, why = head_for(model)
    assert head is None and "patched" in why
    monkeypatch.undo()
    assert head_for(model)[0] is not None
    assert head_for(torch.compile(model))[1].startswith("the model is compiled")


def test_fsdp2_sharded_model_takes_the_hidden_state_route(one_process_group, small_chunks, monkeypatch):
    """`fully_shard` makes the model an `FSDPLlamaForCausalLM` defined in torch's module; its
    forward is still transformers' own, so the chunked route applies, with the same numbers and
    gradients as the full logits. A forward patched on the model class is still refused."""
    from transformers import LlamaForCausalLM

    model = fully_sharded(tiny("llama"))
    assert type(model).__name__ == "FSDPLlamaForCausalLM" and type(model).__module__.startswith("torch.")
    assert head_for(model)[0] is not None

    def full(p):
        return p.full_tensor() if hasattr(p, "full_tensor") else p

    # one model per route: between forward and backward FSDP2 registers the root's unsharded
    # parameters, so `logps_and_grads`'s zero_grad would not reach the sharded gradients
    ref, ref_mask, ref_grads = logps_and_grads(fully_sharded(tiny("llama")), "full")
    got, mask, grads = logps_and_grads(model, "hidden")
    assert torch.equal(mask, ref_mask)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    assert grads.keys() == ref_grads.keys()
    for name in ref_grads:
        expected, actual = full(ref_grads[name]), full(grads[name])
        scale = expected.abs().max().clamp_min(1e-6)
        torch.testing.assert_close(actual / scale, expected / scale, atol=1e-5, rtol=0, msg=name)

    original = LlamaForCausalLM.forward

    def patched_forward(self, *args, **kwargs):
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LlamaForCausalLM, "forward", patched_forward)
    head, why = head_for(model)
    assert head is None and "`LlamaForCausalLM.forward` is patched" in why
