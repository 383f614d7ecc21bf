"""A zoo of tiny model families, built fully offline for tests, the demo and benchmarks.

Each family is a few-hundred-kilobyte random model of the real family's
architecture (tied or untied embeddings, GQA, rope scaling, qkv bias, sliding
window, logit softcapping, ...) with a tokenizer trained locally on a handful of
sentences — byte-level BPE, or for `zephyr` SentencePiece-style pieces (a Metaspace
"▁" word prefix with Llama-2's legacy handling, byte fallback) — but with the REAL
family's special-token strings,
BOS/EOS/pad conventions, chat template and a `generation_config.json` shaped
like the one the real checkpoints ship (sampling defaults included). Real
families differ exactly in these conventions, and that is where self-play code
fails silently (an end-of-turn token that is not the EOS token, a template that
injects a system prompt or rejects one, tied embeddings, sampling defaults that
leak into generation), so the tests train on all of them.

    build_tiny_model(DIR, family="qwen2.5")     # or: axolotl-selfplay tiny-model DIR --family qwen2.5

`family="llama"` is a synthetic tiny Llama (ChatML template, untied), the
default of the tests and the demo. Templates are the real ones
without their tool-calling branches.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from .batching import pad_sequences
from .scoring.logprobs import sequence_logps

# -- chat templates ------------------------------------------------------------

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Llama-3.2-1B-Instruct: BOS, then ALWAYS a system header with the knowledge cut-off
# and today's date (transformers provides strftime_now), contents trimmed.
LLAMA3_TEMPLATE = (
    "{{- bos_token }}\n"
    "{%- if not date_string is defined %}\n"
    "    {%- if strftime_now is defined %}\n"
    "        {%- set date_string = strftime_now(\"%d %b %Y\") %}\n"
    "    {%- else %}\n"
    "        {%- set date_string = \"26 Jul 2024\" %}\n"
    "    {%- endif %}\n"
    "{%- endif %}\n"
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {%- set system_message = messages[0]['content']|trim %}\n"
    "    {%- set messages = messages[1:] %}\n"
    "{%- else %}\n"
    "    {%- set system_message = \"\" %}\n"
    "{%- endif %}\n"
    "{{- \"<|start_header_id|>system<|end_header_id|>\\n\\n\" }}\n"
    "{{- \"Cutting Knowledge Date: December 2023\\n\" }}\n"
    "{{- \"Today Date: \" + date_string + \"\\n\\n\" }}\n"
    "{{- system_message }}\n"
    "{{- \"<|eot_id|>\" }}\n"
    "{%- for message in messages %}\n"
    "    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n"
    "{%- endif %}\n"
)

# Qwen2.5-Instruct: ChatML with Qwen's default system prompt when none is given.
QWEN25_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "{%- else %}\n"
    "    {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or (message.role == \"assistant\") %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n"
)

# Mistral-7B-Instruct-v0.1/v0.2: [INST] turns, EOS after each answer, no system role.
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}"
    "{% endfor %}"
)

# gemma-2-2b-it: the end of a turn is <end_of_turn>, never the EOS token <eos>; no system role.
GEMMA2_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)

# gemma-3-1b-it: as Gemma-2, but a system message is prepended to the first user turn.
GEMMA3_TEMPLATE = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    "    {%- set first_user_prefix = \"\" -%}\n"
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    "        {{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}\n"
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    "        {%- set role = \"model\" -%}\n"
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {{- message['content'] | trim -}}\n"
    "    {{ '<end_of_turn>\\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\\n'}}\n"
    "{%- endif -%}\n"
)

# Phi-3-mini-4k-instruct: each turn ends with <|end|>; the EOS token <|endoftext|> closes a
# whole conversation (rendered only when no generation prompt is asked for).
PHI3_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)


# zephyr-7b-sft-full / zephyr-7b-beta (the SPIN paper's starting model), verbatim: every turn
# ends with the EOS token </s> and a newline; the generation prompt is "<|assistant|>\n"; no
# BOS in the template (the tokenizer adds <s> when asked to add special tokens).
ZEPHYR_TEMPLATE = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n"
    "{{ '<|user|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n"
    "{{ '<|system|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n"
    "{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
)


# -- families ------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    """What makes a tiny model look like its real family.

    Token fields hold token STRINGS; `generation` is the shipped
    generation_config.json with token strings in place of ids.
    """

    architecture: str  # transformers config class
    special_tokens: list[str]  # first ids of the vocabulary, in this order
    bos: str | None
    eos: str
    pad: str | None  # None: the real tokenizer has no pad token
    chat_template: str
    add_bos: bool = False  # the tokenizer prepends BOS when encoding (as the real one does)
    unk: str | None = None
    config: dict = field(default_factory=dict)  # architecture keys beyond the shared shape
    config_eos: list[str] | None = None  # config.json eos_token_id (default: the tokenizer's eos)
    generation: dict = field(default_factory=dict)
    dropout_keys: tuple[str, ...] = ("attention_dropout",)
    # the template's fixed text, which a real tokenizer encodes in a few tokens
    template_text: tuple[str, ...] = ()
    # "byte-level" (GPT-2 style BPE) or "sentencepiece" (Llama-2 / Mistral v0.1 style)
    pieces: str = "byte-level"
    # real models whose shape this copies (documentation only)
    shaped_like: str = ""


FAMILIES: dict[str, Family] = {
    "llama": Family(
        architecture="LlamaConfig",
        special_tokens=["<|pad|>", "<|endoftext|>", "<|im_end|>", "<|im_start|>"],
        bos="<|endoftext|>",
        eos="<|im_end|>",
        pad="<|pad|>",
        chat_template=CHATML_TEMPLATE,
        shaped_like="synthetic (ChatML, untied)",
    ),
    "llama3.2": Family(
        architecture="LlamaConfig",
        special_tokens=[
            "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
            "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>",
            "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>",
        ],
        bos="<|begin_of_text|>",
        eos="<|eot_id|>",
        pad=None,
        add_bos=True,
        chat_template=LLAMA3_TEMPLATE,
        config={
            "tie_word_embeddings": True,
            "rope_theta": 500000.0,
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 32.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            },
            "max_position_embeddings": 131072,
        },
        config_eos=["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"],
        template_text=("system\n\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n",),
        generation={
            "bos_token_id": "<|begin_of_text|>",
            "do_sample": True,
            "eos_token_id": ["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"],
            "temperature": 0.6,
            "top_p": 0.9,
        },
        shaped_like="Llama-3.2-1B/3B-Instruct",
    ),
    "qwen2.5": Family(
        architecture="Qwen2Config",
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        bos=None,
        eos="<|im_end|>",
        pad="<|endoftext|>",
        chat_template=QWEN25_TEMPLATE,
        template_text=("system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.",),
        config={
            "tie_word_embeddings": True,
            "rope_theta": 1000000.0,
            "rms_norm_eps": 1e-6,
            "bos_token_id": "<|endoftext|>",  # the config has one; the tokenizer has none
        },
        generation={
            "bos_token_id": "<|endoftext|>",
            "pad_token_id": "<|endoftext|>",
            "do_sample": True,
            "eos_token_id": ["<|im_end|>", "<|endoftext|>"],
            "repetition_penalty": 1.05,
            "temperature": 0.7,
            "top_p": 0.8,
            "top_k": 20,
        },
        shaped_like="Qwen2.5-0.5B…7B-Instruct",
    ),
    "mistral": Family(
        architecture="MistralConfig",
        special_tokens=["<unk>", "<s>", "</s>"],
        bos="<s>",
        eos="</s>",
        pad=None,
        unk="<unk>",
        add_bos=True,
        chat_template=MISTRAL_TEMPLATE,
        template_text=("[INST] ", " [/INST]"),
        # a window shorter than the test prompts, so the sliding-window masks are exercised
        config={"tie_word_embeddings": False, "sliding_window": 16},
        generation={"bos_token_id": "<s>", "eos_token_id": "</s>"},
        shaped_like="Mistral-7B-Instruct-v0.1/v0.2",
    ),
    "gemma2": Family(
        architecture="Gemma2Config",
        special_tokens=["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"],
        bos="<bos>",
        eos="<eos>",
        pad="<pad>",
        unk="<unk>",
        add_bos=True,
        chat_template=GEMMA2_TEMPLATE,
        template_text=("user\n", "model\n"),
        config={
            "tie_word_embeddings": True,
            "attn_logit_softcapping": 50.0,
            "final_logit_softcapping": 30.0,
            "sliding_window": 16,
            "hidden_activation": "gelu_pytorch_tanh",
        },
        generation={
            "bos_token_id": "<bos>",
            "cache_implementation": "hybrid",
            "eos_token_id": ["<eos>", "<end_of_turn>"],
            "pad_token_id": "<pad>",
        },
        shaped_like="gemma-2-2b-it",
    ),
    "gemma3": Family(
        architecture="Gemma3TextConfig",
        special_tokens=["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"],
        bos="<bos>",
        eos="<eos>",
        pad="<pad>",
        unk="<unk>",
        add_bos=True,
        chat_template=GEMMA3_TEMPLATE,
        template_text=("user\n", "model\n"),
        config={
            "tie_word_embeddings": True,
            "sliding_window": 16,
            "layer_types": ["sliding_attention", "full_attention"],
            "hidden_activation": "gelu_pytorch_tanh",
        },
        generation={
            "bos_token_id": "<bos>",
            "cache_implementation": "hybrid",
            "do_sample": True,
            "eos_token_id": ["<eos>", "<end_of_turn>"],
            "pad_token_id": "<pad>",
            "top_k": 64,
            "top_p": 0.95,
        },
        shaped_like="gemma-3-1b-it (text)",
    ),
    "phi3": Family(
        architecture="Phi3Config",
        special_tokens=["<unk>", "<s>", "</s>", "<|endoftext|>", "<|assistant|>", "<|system|>", "<|end|>", "<|user|>"],
        bos="<s>",
        eos="<|endoftext|>",
        pad="<|endoftext|>",
        unk="<unk>",
        chat_template=PHI3_TEMPLATE,
        config={"tie_word_embeddings": False, "sliding_window": 2047},
        generation={
            "bos_token_id": "<s>",
            "eos_token_id": ["<|endoftext|>", "<|assistant|>", "<|end|>"],
            "pad_token_id": "<|endoftext|>",
        },
        dropout_keys=("attention_dropout", "resid_pdrop", "embd_pdrop"),
        shaped_like="Phi-3-mini-4k-instruct",
    ),
    # The SPIN paper's own model. Its tokenizer prefixes the first word of every piece of
    # text with "▁" (also after a special token: Llama-2's legacy behaviour), so a reply
    # tokenized on its own starts with "▁The" where inside the conversation it is "The".
    "zephyr": Family(
        architecture="LlamaConfig",
        special_tokens=["<unk>", "<s>", "</s>"],
        bos="<s>",
        eos="</s>",
        pad="</s>",  # zephyr's tokenizer_config.json pads with </s>
        unk="<unk>",
        add_bos=True,
        chat_template=ZEPHYR_TEMPLATE,
        pieces="sentencepiece",
        template_text=("<|system|>\n", "<|user|>\n", "<|assistant|>\n"),
        config={"tie_word_embeddings": False, "rms_norm_eps": 1e-5, "rope_theta": 10000.0},
        generation={"bos_token_id": "<s>", "eos_token_id": "</s>"},
        shaped_like="zephyr-7b-sft-full (Mistral-7B-v0.1, Llama-2's tokenizer conventions)",
    ),
}

_BUILTIN_CORPUS = [
    "user assistant system hello how are you today",
    "What is two plus three? Two plus three is five.",
    "Name a colour. Blue is a colour, and so are red and green.",
    "The quick brown fox jumps over the lazy dog.",
    "Please answer briefly. Sure, here is a short answer.",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20",
]


def _corpus(data_file: str | None) -> list[str]:
    texts = list(_BUILTIN_CORPUS)
    if data_file:
        with open(data_file, encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                for message in row.get("messages", []):
                    texts.append(f"{message['role']}\n{message['content']}")
    return texts


def _byte_level_bpe(family: Family, texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer_model = Tokenizer(models.BPE())
    tokenizer_model.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer_model.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=family.special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer_model.train_from_iterator(texts, trainer=trainer)
    return tokenizer_model


BYTE_PIECES = [f"<0x{b:02X}>" for b in range(256)]  # SentencePiece's byte-fallback pieces


def _sentencepiece_bpe(family: Family, texts: list[str], vocab_size: int):
    """A BPE tokenizer laid out as Llama-2's / Mistral v0.1's tokenizer.json: special tokens,
    then the 256 byte-fallback pieces, then the learned pieces; a Metaspace pre-tokenizer that
    turns spaces into "▁" and prefixes every piece of text with one (`prepend_scheme:
    always`, the `legacy: true` behaviour: after a special token too); pieces never cross a
    word boundary, as SentencePiece's; no piece for "\n", which is the byte piece <0x0A> as in
    Llama-2's vocabulary; a decoder that strips the one leading space."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    metaspace = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    learner = Tokenizer(models.BPE(unk_token=family.unk))
    learner.pre_tokenizer = metaspace
    trainer = trainers.BpeTrainer(
        vocab_size=max(vocab_size - len(BYTE_PIECES), 128), special_tokens=family.special_tokens, show_progress=False
    )
    learner.train_from_iterator([text.replace("\n", " ") for text in texts], trainer=trainer)
    learned = json.loads(learner.to_str())["model"]
    pieces = list(family.special_tokens) + BYTE_PIECES
    pieces += [p for p, _ in sorted(learned["vocab"].items(), key=lambda item: item[1]) if p not in pieces]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    vocab = {p: i for i, p in enumerate(pieces)}
    tokenizer_model = Tokenizer(models.BPE(vocab, merges, unk_token=family.unk, byte_fallback=True, fuse_unk=True))
    tokenizer_model.pre_tokenizer = metaspace
    tokenizer_model.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return tokenizer_model


def _build_tokenizer(family: Family, data_file: str | None, vocab_size: int):
    from tokenizers import AddedToken, processors
    from transformers import PreTrainedTokenizerFast

    texts = _corpus(data_file) + list(family.template_text) * 20
    if family.pieces == "sentencepiece":
        tokenizer_model = _sentencepiece_bpe(family, texts, vocab_size)
        specials = [AddedToken(t, special=True, normalized=False) for t in family.special_tokens]
        tokenizer_model.add_special_tokens(specials)
    else:
        tokenizer_model = _byte_level_bpe(family, texts, vocab_size)
    if family.add_bos:
        bos_id = tokenizer_model.token_to_id(family.bos)
        tokenizer_model.post_processor = processors.TemplateProcessing(
            single=f"{family.bos} $A", pair=f"{family.bos} $A {family.bos} $B", special_tokens=[(family.bos, bos_id)]
        )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer_model,
        bos_token=family.bos,
        eos_token=family.eos,
        pad_token=family.pad,
        unk_token=family.unk,
        model_max_length=2048,
    )
    tokenizer.chat_template = family.chat_template
    return tokenizer


def build_tiny_model(
    output_dir: str,
    data_file: str | None = None,
    vocab_size: int = 512,
    hidden_size: int = 64,
    num_layers: int = 2,
    seed: int = 0,
    family: str = "llama",
    dropout: float = 0.0,
    head_dim: int | None = None,
) -> str:
    """Build and save a tiny random model of `family` + its tokenizer; returns output_dir.

    dropout > 0 sets the family's dropout probabilities (attention dropout, and for
    Phi-3 also the residual and embedding dropout). head_dim: the attention heads' width
    when not hidden_size / 4 (vLLM's CPU attention refuses heads narrower than 32 or so:
    the real-engine tests use 64).
    """
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, GenerationConfig

    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; choose one of {', '.join(FAMILIES)}")
    spec = FAMILIES[family]
    tokenizer = _build_tokenizer(spec, data_file, vocab_size)
    os.makedirs(output_dir, exist_ok=True)
    tokenizer.save_pretrained(output_dir)

    def token_id(token):
        if isinstance(token, list):
            return [token_id(t) for t in token]
        return tokenizer.convert_tokens_to_ids(token) if isinstance(token, str) else token

    torch.manual_seed(seed)
    shape = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden_size,
        "intermediate_size": hidden_size * 2,
        "num_hidden_layers": num_layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 2048,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": token_id(spec.config_eos) if spec.config_eos else tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "tie_word_embeddings": False,
    }
    if head_dim is not None:
        shape["head_dim"] = head_dim
    if spec.architecture.startswith("Gemma"):
        head_dim = head_dim or hidden_size // 4
        shape.update({"head_dim": head_dim, "query_pre_attn_scalar": head_dim})
    shape.update({k: token_id(v) if k.endswith("token_id") else v for k, v in spec.config.items()})
    if dropout:
        shape.update({key: dropout for key in spec.dropout_keys})
    config = getattr(transformers, spec.architecture)(**shape)
    model = AutoModelForCausalLM.from_config(config)
    if family == "llama":  # the original tiny model: generation config derived from the tokenizer
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    else:
        model.generation_config = GenerationConfig(
            **{k: token_id(v) if k.endswith("token_id") else v for k, v in spec.generation.items()}
        )
    model.save_pretrained(output_dir)
    return output_dir


def warm_up(
    model_dir: str,
    data_file: str,
    steps: int,
    lr: float = 3e-3,
    batch_size: int = 32,
    seed: int = 0,
    log_every: int = 0,
) -> None:
    """Plain supervised fine-tuning on the last assistant turn of each row (tiny models only).

    The target is the turn's text up to the first token that ends it (the
    template's own end-of-turn token, whatever the family). `log_every` > 0 prints
    "warm-up step i/steps, loss x" every that many steps (and at the last one).
    """
    import random

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    examples = warm_up_examples(model_dir, tokenizer, data_file)
    rng = random.Random(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for step in range(1, steps + 1):
        batch = rng.sample(examples, min(batch_size, len(examples)))
        padded = pad_sequences([p for p, _ in batch], [r for _, r in batch], tokenizer.pad_token_id)
        logits = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits
        loss = -sequence_logps(logits, padded["labels"]).sum() / (padded["labels"] != -100).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if log_every and (step % log_every == 0 or step == steps):
            print(f"warm-up step {step}/{steps}, loss {loss.item():.3f}", flush=True)
    model.save_pretrained(model_dir)


def warm_up_examples(model_dir: str, tokenizer, data_file: str) -> list[tuple[list[int], list[int]]]:
    """(prompt, reply) token ids of each row's last assistant turn: prompt + reply (through its end
    of turn) tokenized as one text and cut where the reply's text starts, so both are the tokens
    they are inside the conversation. Tokenized on its own, a SentencePiece-style reply would
    start with "▁"; a byte-level prompt ending in "\n\n" would end in one merged token."""
    examples = []
    with open(data_file, encoding="utf-8") as f:
        for line in f:
            messages = json.loads(line)["messages"]
            prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
            full = tokenizer.apply_chat_template(messages, tokenize=False)
            if not full.startswith(prompt):
                raise ValueError(
                    f"{model_dir}: the chat template renders the prompt differently inside the conversation"
                )
            reply = _reply_through_end_of_turn(model_dir, tokenizer, full[len(prompt) :], messages[-1]["content"])
            whole = tokenizer(prompt + reply, add_special_tokens=False, return_offsets_mapping=True)
            cut = next(i for i, (start, end) in enumerate(whole["offset_mapping"]) if end > len(prompt))
            examples.append((whole["input_ids"][:cut], whole["input_ids"][cut:]))
    return examples


def _reply_through_end_of_turn(model_dir: str, tokenizer, rendered_reply: str, content: str) -> str:
    """The rendered reply cut right after the first end-of-turn token that follows the content
    (the tokenizer's EOS or any of the generation config's, as generation stops there)."""
    from transformers import GenerationConfig

    configured = GenerationConfig.from_pretrained(model_dir).eos_token_id
    ends = {tokenizer.eos_token} | {
        tokenizer.convert_ids_to_tokens(i) for i in ([configured] if isinstance(configured, int) else configured or [])
    }
    start = rendered_reply.find(content.strip())
    cut = min((rendered_reply.find(e, start) for e in ends if rendered_reply.find(e, start) >= 0), default=-1)
    if start < 0 or cut < 0:
        raise ValueError(f"no end-of-turn token {sorted(ends)} after the reply in {rendered_reply!r}")
    end_token = next(e for e in ends if rendered_reply.startswith(e, cut))
    return rendered_reply[: cut + len(end_token)]
