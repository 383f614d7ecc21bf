"""Log-probs of the labelled tokens straight from the last hidden states, lm_head in chunks.

The plain route — `model(...).logits`, then a float32 log-softmax — materialises
(N, T, V) logits for every position, prompt included, and autograd keeps a float32
copy of them for the backward. With a 128k–152k vocabulary and long rows that is
most of a training step's memory. Self-play only needs log p(label) at the labelled
(response) positions, so `LabelledHead` computes exactly that:

1. While the model runs its own forward — through every wrapper it has (PEFT, the
   DeepSpeed engine, FSDP2, DDP, accelerate's autocast) — its lm_head's `forward` is
   swapped for ours. lm_head therefore receives the last hidden states (N, T, H)
   exactly as the model would project them, inside the model's forward, where
   ZeRO-3 has gathered its weight and arms the re-gather for the backward (FSDP2
   likewise, at the root module).
2. Ours keeps the H-vectors of the labelled positions only, and `_ChunkedLogps`
   projects them a chunk of positions at a time: logits of one chunk, float32,
   logsumexp, the label's entry. Nothing of size (·, V) is kept for the backward:
   it recomputes each chunk's logits from the saved hidden states, so the peak is
   one chunk's logits (`CHUNK_BYTES` of float32) in both passes.
3. It returns the (N, T−1) float32 log-probs (0 where unlabelled) in place of the
   logits, so `model(...).logits` *is* `scoring.logprobs.token_logps`'s first output.

The numbers equal the plain route's: the same matmul of the same hidden state in the
same dtype, the model's logit post-processing (Gemma-2/3's final soft-capping,
Cohere's and Granite's logit scales) applied in that dtype, then float32. The
gradients are those autograd computes for the plain route (tested to 1e-5 in fp32),
except that the weight gradient of a 16-bit lm_head is summed over chunks in float32
(one V×H float32 buffer during the lm_head backward).

The route is taken only where it is known to be exact (`head_for`): a model type in
`POST_PROCESSING` (each tested against the plain route in tests/test_scoring_head.py),
its forward as transformers ships it (not patched by a kernel plugin; FSDP2's sharded
subclass of the model class is the model class), not compiled,
and an lm_head that is a plain `nn.Linear` (not a LoRA layer or `modules_to_save`
copy, not quantized). Anything else — other architectures, vision-language models,
remote code — takes the plain full-logits route, logged once per model.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch.distributed.fsdp import FSDPModule
from transformers import PreTrainedModel

from .. import get_logger
from ..batching import IGNORE_INDEX
from ..modeling import transformers_model

LOG = get_logger(__name__)

# float32 logits of one chunk of positions: 64 MiB, e.g. 128 positions of a 131072 vocabulary, 512 of 32000.
CHUNK_BYTES = 64 * 2**20


# What each supported CausalLM does to `lm_head(hidden)` before returning it as logits,
# as (attribute to neutralise while our head runs, function applying it to logits).
def _softcap(inner):
    cap = inner.config.final_logit_softcapping
    if cap is None:
        return None
    return _Post(("config", "final_logit_softcapping", None), lambda z: torch.tanh(z / cap) * cap)


def _cohere_scale(inner):
    scale = inner.logit_scale
    return _Post(("model", "logit_scale", 1.0), lambda z: z * scale)


def _granite_scale(inner):
    scaling = inner.config.logits_scaling
    return _Post(("config", "logits_scaling", 1.0), lambda z: z / scaling)


def _none(inner):
    return None


POST_PROCESSING: dict[str, Callable] = {
    "llama": _none,
    "mistral": _none,
    "mixtral": _none,
    "qwen2": _none,
    "qwen2_moe": _none,
    "qwen3": _none,
    "qwen3_moe": _none,
    "phi3": _none,
    "olmo2": _none,
    "starcoder2": _none,
    "smollm3": _none,
    "gemma": _none,
    "gemma2": _softcap,
    "gemma3_text": _softcap,
    "cohere": _cohere_scale,
    "granite": _granite_scale,
}


@dataclass
class _Post:
    # (where: "config" or "model", attribute, neutral value): the model applies
    # `apply` itself after lm_head; while our head runs it must apply nothing, since
    # our head returns log-probs and applies `apply` to the logits before the softmax.
    neutralise: tuple[str, str, object]
    apply: Callable[[torch.Tensor], torch.Tensor]


def unwrap(model):
    """The transformers model inside DDP / a DeepSpeed engine / torch.compile / PEFT."""
    while not isinstance(model, PreTrainedModel):
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            break
        model = inner
    return transformers_model(model)


def head_for(model) -> tuple[LabelledHead | None, str]:
    """(`LabelledHead`, "") when the hidden-state route is exact for `model`, else
    (None, why not)."""
    if _compiled(model):
        return None, "the model is compiled (torch.compile): swapping its lm_head's forward would recompile it"
    inner = unwrap(model)
    model_type = getattr(getattr(inner, "config", None), "model_type", None)
    if model_type not in POST_PROCESSING:
        return None, f"model type `{model_type}` is not one whose logits the hidden-state route is tested against"
    forward = type(inner).forward  # what runs
    defined = model_class(inner)
    if getattr(forward, "__module__", None) != defined.__module__:
        return None, f"`{defined.__name__}.forward` is patched (by {getattr(forward, '__module__', '?')})"
    head = inner.get_output_embeddings()
    if type(head) is not torch.nn.Linear or "forward" in vars(head):
        return None, f"its lm_head is a `{type(head).__name__}`, not a plain nn.Linear (LoRA, modules_to_save, quantized)"
    return LabelledHead(inner, head, POST_PROCESSING[model_type](inner)), ""


def model_class(module) -> type:
    """The class of `module` as its library defines it. FSDP2's `fully_shard` swaps a sharded
    module's class for `FSDP<Name>`, a subclass of (FSDPModule, <Name>) made at run time in
    torch's module, which adds no `forward`: the class it derived from is the model's."""
    cls = type(module)
    if issubclass(cls, FSDPModule) and "forward" not in vars(cls):
        return next(base for base in cls.__bases__ if not issubclass(base, FSDPModule))
    return cls


def _compiled(model) -> bool:
    while isinstance(model, torch.nn.Module):
        if hasattr(model, "_orig_mod"):
            return True
        model = getattr(model, "module", None)
    return False


_reported: set[int] = set()


def report_route(inner, head: LabelledHead | None, why: str) -> None:
    if id(inner) in _reported:
        return
    _reported.add(id(inner))
    if head is None:
        LOG.info("self-play: log-probs from the full logits (%s)", why)
    else:
        LOG.info(
            "self-play: log-probs from the last hidden states at labelled positions, lm_head in chunks of %d positions",
            head.chunk_tokens,
        )


class LabelledHead:
    def __init__(self, inner, head: torch.nn.Linear, post: _Post | None):
        self.inner = inner
        self.head = head
        self.post = post
        self.chunk_tokens = max(1, CHUNK_BYTES // (4 * head.out_features))

    @contextmanager
    def returning_logps(self, labels: torch.Tensor):
        """Within the block, the model's forward returns (N, T−1) float32 log-probs of
        `labels` as its `logits` (labels (N, T) as in `logprobs.token_logps`)."""
        head, post = self.head, self.post
        chunk = self.chunk_tokens

        def forward(hidden: torch.Tensor) -> torch.Tensor:
            if hidden.shape[:2] != labels.shape:
                raise RuntimeError(
                    f"lm_head received hidden states of shape {tuple(hidden.shape)} for labels of shape "
                    f"{tuple(labels.shape)}: this model's forward does not project every position"
                )
            targets = labels[:, 1:]
            mask = targets != IGNORE_INDEX
            picked = _ChunkedLogps.apply(
                hidden[:, :-1][mask], head.weight, head.bias, targets[mask], post.apply if post else None, chunk
            )
            logps = torch.zeros(targets.shape, dtype=torch.float32, device=hidden.device)
            return logps.masked_scatter(mask, picked)

        restore = None
        if post is not None:
            where, name, neutral = post.neutralise
            owner = self.inner.config if where == "config" else self.inner
            restore = (owner, name, getattr(owner, name))
            setattr(owner, name, neutral)
        head.forward = forward
        try:
            yield
        finally:
            del head.forward
            if restore is not None:
                setattr(*restore)


class _ChunkedLogps(torch.autograd.Function):
    """log softmax(post(hidden @ weightᵀ + bias))[target] for (M, H) hidden states, computed
    `chunk` rows at a time in both passes; only the inputs are saved for the backward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, post, chunk):
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        compute_dtype = None
        for start in range(0, hidden.shape[0], chunk):
            rows = slice(start, start + chunk)
            logits = torch.nn.functional.linear(hidden[rows], weight, bias)  # as lm_head (autocast included)
            compute_dtype = logits.dtype
            out[rows] = _label_logps(logits, targets[rows], post)
        ctx.save_for_backward(hidden, weight, bias, targets)
        ctx.post, ctx.chunk = post, chunk
        ctx.compute_dtype = compute_dtype or weight.dtype
        return out

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, bias, targets = ctx.saved_tensors
        dtype = ctx.compute_dtype  # the logits' dtype in the forward (autocast's choice, or the weight's)
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
        grad_bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_bias else None
        w = weight.to(dtype)
        b = bias.to(dtype) if bias is not None else None
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, hidden.shape[0], ctx.chunk):
                rows = slice(start, start + ctx.chunk)
                h = hidden[rows].to(dtype)
                # d logp / d logits of this chunk, through the post-processing and the float32
                # log-softmax, as autograd differentiates the plain route.
                with torch.enable_grad():
                    logits = torch.nn.functional.linear(h, w, b).detach().requires_grad_()
                    (grad_logits,) = torch.autograd.grad(
                        _label_logps(logits, targets[rows], ctx.post), logits, grad_out[rows]
                    )
                if need_hidden:
                    grad_hidden[rows] = (grad_logits @ w).to(hidden.dtype)
                if need_weight and dtype == torch.float32:
                    grad_weight.addmm_(grad_logits.t(), h)
                elif need_weight:
                    grad_weight += grad_logits.t() @ h  # a 16-bit product, summed in float32
                if need_bias:
                    grad_bias += grad_logits.sum(0)
                del logits, grad_logits
        return (
            grad_hidden,
            grad_weight.to(weight.dtype) if need_weight else None,
            grad_bias.to(bias.dtype) if need_bias else None,
            None,
            None,
            None,
        )


def _label_logps(logits: torch.Tensor, targets: torch.Tensor, post) -> torch.Tensor:
    """float32 log p(target) of each row of `logits` (rows × V), as `logprobs.token_logps`."""
    if post is not None:
        logits = post(logits)  # in the logits' dtype, as the model's forward does
    logits = logits.float()
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
