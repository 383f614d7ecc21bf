"""LSP pieces without a model: advantages, the policy loss, judge parsing, reward loading."""

from __future__ import annotations

import math
import sys
import textwrap

import pytest
import torch

from axolotl_selfplay.losses import k3_kl, lsp_advantages, lsp_policy_loss
from axolotl_selfplay.lsp.rewards import (
    call_reward_func,
    judge_request,
    load_reward_funcs,
    parse_judge_score,
    task_rewards,
)


def test_advantages_match_the_hand_computed_game():
    """rewards R = [[0.2, 0.8, 0.5, 0.5], [−1.0, −0.6, −0.8, −1.0]], no self-reward:
    V = [0.5, −0.85]; challenger rewards c = −V = [−0.5, 0.85], mean 0.175,
    A_Ch = [−0.675, +0.675]; A_Sol row 0 = R − 0.5 = [−0.3, 0.3, 0, 0],
    row 1 = R + 0.85 = [−0.15, 0.25, 0.05, −0.15]."""
    rewards = torch.tensor([[0.2, 0.8, 0.5, 0.5], [-1.0, -0.6, -0.8, -1.0]])
    solver, challenger, c = lsp_advantages(rewards, torch.zeros_like(rewards), torch.tensor([True, True]))
    assert torch.allclose(challenger, torch.tensor([-0.675, 0.675]))
    assert torch.allclose(c, torch.tensor([-0.5, 0.85]))
    assert torch.allclose(solver[0], torch.tensor([-0.3, 0.3, 0.0, 0.0]), atol=1e-6)
    assert torch.allclose(solver[1], torch.tensor([-0.15, 0.25, 0.05, -0.15]), atol=1e-6)


def test_self_reward_enters_both_roles():
    """R = [[1, 0], [0, 0]], R_Q = [[2, 4], [6, 6]] (weighted judge scores):
    solver R' = R + R_Q = [[3, 4], [6, 6]] → A_Sol = [[−0.5, 0.5], [0, 0]];
    challenger c = −mean R + mean R_Q = [−0.5 + 3, 0 + 6] = [2.5, 6], mean 4.25,
    A_Ch = [−1.75, 1.75]."""
    rewards = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    quality = torch.tensor([[2.0, 4.0], [6.0, 6.0]])
    solver, challenger, c = lsp_advantages(rewards, quality, torch.tensor([True, True]))
    assert torch.allclose(solver, torch.tensor([[-0.5, 0.5], [0.0, 0.0]]))
    assert torch.allclose(c, torch.tensor([2.5, 6.0]))
    assert torch.allclose(challenger, torch.tensor([-1.75, 1.75]))


def test_degenerate_query_gets_the_lowest_challenger_reward():
    """Queries 0, 1 valid with c = [−0.5, −0.2]; query 2 degenerate → c = −0.5 − 1 = −1.5;
    mean c = −2.2/3, so A_Ch(2) = −1.5 + 2.2/3 = −0.7667; its solver row is all zero."""
    rewards = torch.tensor([[0.5, 0.5], [0.0, 0.4], [1.0, 1.0]])
    solver, challenger, c = lsp_advantages(rewards, torch.zeros_like(rewards), torch.tensor([True, True, False]))
    assert torch.allclose(c, torch.tensor([-0.5, -0.2, -1.5]))
    assert challenger[2] == pytest.approx(-1.5 + 2.2 / 3, abs=1e-6)
    assert torch.equal(solver[2], torch.zeros(2))
    assert challenger.sum() == pytest.approx(0.0, abs=1e-6)
    # a game without any valid query carries no signal
    _, none_valid, _ = lsp_advantages(rewards, torch.zeros_like(rewards), torch.tensor([False] * 3))
    assert torch.equal(none_valid, torch.zeros(3))


def test_k3_is_the_kl_estimator():
    """k3 = exp(r) − r − 1 with r = ref − logp: 0 when equal; r = ln 2 → 2 − ln 2 − 1 = 0.30685."""
    logp = torch.tensor([-1.0, -1.0])
    ref = torch.tensor([-1.0, -1.0 + math.log(2)])
    assert torch.allclose(k3_kl(logp, ref), torch.tensor([0.0, 1.0 - math.log(2)]))


def test_policy_loss_value_and_gradient():
    """Two sequences, per-token log-probs x (all equal to ref, so k3 = 0):
    row 0: tokens [a, b] masked [1, 1], A = +1; row 1: tokens [c, pad] masked [1, 0], A = −2.
    Loss = mean over rows of the token mean of −A·ratio (ratio = 1):
    row 0: −1, row 1: +2 → loss = 0.5.
    ∂loss/∂x: row 0 tokens −A/(2 tokens)/2 rows = −0.25 each; row 1 token +2/1/2 = +1; pad 0."""
    logps = torch.tensor([[-0.5, -1.5], [-2.0, -9.0]], requires_grad=True)
    mask = torch.tensor([[True, True], [True, False]])
    loss, kl = lsp_policy_loss(logps, mask, torch.tensor([1.0, -2.0]), logps.detach().clone(), kl_beta=0.1)
    assert loss.item() == pytest.approx(0.5)
    loss.backward()
    assert torch.allclose(logps.grad, torch.tensor([[-0.25, -0.25], [1.0, 0.0]]))
    assert torch.equal(kl, torch.zeros(2))


def test_policy_loss_adds_beta_times_k3():
    """One token, A = 0, logp = −1, ref = −1 + ln 2: k3 = 1 − ln 2 = 0.30685; β = 0.5 → 0.15343.
    ∂/∂logp of β·(exp(ref − logp) − (ref − logp) − 1) = β·(1 − exp(ref − logp)) = 0.5·(1 − 2) = −0.5."""
    logps = torch.tensor([[-1.0]], requires_grad=True)
    ref = torch.tensor([[-1.0 + math.log(2)]])
    loss, kl = lsp_policy_loss(logps, torch.tensor([[True]]), torch.tensor([0.0]), ref, kl_beta=0.5)
    assert loss.item() == pytest.approx(0.5 * (1 - math.log(2)), abs=1e-6)
    loss.backward()
    assert logps.grad.item() == pytest.approx(-0.5, abs=1e-6)
    assert kl.item() == pytest.approx(1 - math.log(2), abs=1e-6)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The instruction is clear. Score: 5", 5),
        ("score: 2 ... on reflection, Score: 6", 6),  # the last one counts
        ("Score:**7**", 7),
        ("Score = 0", 0),
        ("Score: 9", None),  # out of range
        ("Score: -1", None),
        ("Score: 4.5", None),  # not an integer
        ("I would give it five points", None),
        ("", None),
    ],
)
def test_parse_judge_score(text, expected):
    assert parse_judge_score(text, max_score=7) == expected


def test_judge_request_fills_both_slots_once():
    template = "Q: {query}\nA: {answer}\nScore?"
    assert judge_request(template, "say {answer}", "42") == "Q: say {answer}\nA: 42\nScore?"


@pytest.mark.parametrize("family", ["zephyr", "mistral"])
def test_lsp_prompts_are_tokenized_as_axolotls_sft_rows(family, zoo):
    """The Challenger's, the Solver's and the judge's prompts are user turns rendered with the chat
    template and tokenized as Axolotl tokenizes an SFT conversation: token for token the prompt of
    the row Axolotl would make of that turn and a reply, split as the trainer splits it. So <s>
    stands exactly where the template puts it (zephyr's template has none, Mistral's one), and a
    query sampled with SentencePiece's "▁" prefix reads back as the same text in the Solver's prompt."""
    from axolotl.prompt_strategies import load as load_prompt_strategy
    from axolotl.utils.dict import DictDefault
    from transformers import AutoTokenizer

    from axolotl_selfplay.data.split import generation_end_ids, split_prompt_response
    from axolotl_selfplay.lsp.rollout import chat_prompt

    tokenizer = AutoTokenizer.from_pretrained(zoo(family))
    cfg = DictDefault({"base_model": str(zoo(family)), "sequence_len": 512, "chat_template": "tokenizer_default"})
    entry = DictDefault({"type": "chat_template", "roles_to_train": ["assistant"], "train_on_eos": "turn"})
    strategy = load_prompt_strategy("chat_template", tokenizer, cfg, entry)

    def sft_prompt(text):
        chat = [{"role": "user", "content": text}, {"role": "assistant", "content": "5"}]
        row = strategy.tokenize_prompt({"messages": chat})
        return split_prompt_response(row["input_ids"], row["labels"], generation_end_ids(cfg, tokenizer))[0]

    query = tokenizer("What is 2 plus 3?", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    query_text = tokenizer.decode(query, skip_special_tokens=True).strip()  # as LSPRollout.decode reads it
    assert query_text == "What is 2 plus 3?"
    judge = judge_request("Rate the answer.\nQ: {query}\nA: {answer}\nScore: 0-7", query_text, "5")
    for text in ("Write an addition problem.", query_text, judge):
        ids = chat_prompt(tokenizer, text)
        assert ids == sft_prompt(text)
        assert ids.count(tokenizer.bos_token_id) == (1 if family == "mistral" else 0)


def test_lsp_prompts_get_chat_template_kwargs(zoo):
    """Axolotl renders SFT rows with `chat_template_kwargs` (Qwen3's `enable_thinking: false`
    empties the thinking block); LSP's Challenger, Solver and judge prompts get them too."""
    from axolotl.prompt_strategies import load as load_prompt_strategy
    from axolotl.utils.dict import DictDefault
    from transformers import AutoTokenizer

    from axolotl_selfplay.data.split import generation_end_ids, split_prompt_response
    from axolotl_selfplay.lsp.rollout import chat_prompt

    tokenizer = AutoTokenizer.from_pretrained(zoo("qwen2.5"))
    # a template that reads a kwarg, in every rendering (as Qwen3's `enable_thinking`)
    tokenizer.chat_template = (
        "{%- if enable_thinking is defined and not enable_thinking %}{{- 'No thinking. ' }}{%- endif %}"
        + tokenizer.chat_template
    )
    kwargs = {"enable_thinking": False}
    assert tokenizer.decode(chat_prompt(tokenizer, "Hi", kwargs)).startswith("No thinking. ")
    assert "No thinking" not in tokenizer.decode(chat_prompt(tokenizer, "Hi"))
    cfg = DictDefault({"base_model": str(zoo("qwen2.5")), "sequence_len": 512, "chat_template": "tokenizer_default",
                       "chat_template_kwargs": kwargs})
    entry = DictDefault({"type": "chat_template", "roles_to_train": ["assistant"], "train_on_eos": "turn"})
    row = load_prompt_strategy("chat_template", tokenizer, cfg, entry).tokenize_prompt(
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "5"}]}
    )
    sft_prompt = split_prompt_response(row["input_ids"], row["labels"], generation_end_ids(cfg, tokenizer))[0]
    assert chat_prompt(tokenizer, "Hi", kwargs) == sft_prompt


@pytest.fixture
def reward_module(tmp_path, monkeypatch):
    (tmp_path / "toy_rewards.py").write_text(
        textwrap.dedent(
            """
            def length(prompts, completions, **kwargs):
                return [float(len(c[0]["content"])) for c in completions]

            def echo_query(prompts, completions, queries):
                return [float(q == "hi") for q in queries]

            def wrong_length(prompts, completions, **kwargs):
                return [1.0]

            def one_argument(prompts):
                return []

            NOT_A_FUNCTION = 3
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    sys.modules.pop("toy_rewards", None)
    yield
    sys.modules.pop("toy_rewards", None)


def test_reward_funcs_load_from_the_working_directory_and_combine(reward_module):
    length, echo = load_reward_funcs(["toy_rewards.length", "toy_rewards.echo_query"])
    assert call_reward_func(length, ["q"], ["abc"]) == [3.0]
    assert call_reward_func(echo, ["hi", "no"], ["a", "b"]) == [1.0, 0.0]  # only the kwargs it names
    # R = 0.5·length + 2·echo; pairs not kept score 0 and are never passed to the functions
    assert task_rewards([length, echo], None, [0.5, 2.0], ["hi", "no"], ["ab", "abcd"], [True, True]) == [3.0, 2.0]
    assert task_rewards([length, echo], None, [0.5, 2.0], ["hi", "no"], ["ab", "abcd"], [False, True]) == [0.0, 2.0]


@pytest.mark.parametrize(
    "name, message",
    [
        ("nodots", "is not `module.function`"),
        ("missing_module.fn", "cannot import module `missing_module`"),
        ("toy_rewards.nope", "has no function `nope`"),
        ("toy_rewards.NOT_A_FUNCTION", "has no function `NOT_A_FUNCTION`"),
        ("toy_rewards.one_argument", "cannot receive `completions` by keyword"),
    ],
)
def test_reward_func_loading_errors_name_the_entry(reward_module, name, message):
    with pytest.raises(ValueError, match=r"selfplay\.lsp\.reward_funcs\[1\]") as error:
        load_reward_funcs(["toy_rewards.length", name])
    assert message in str(error.value)


def test_reward_func_returning_the_wrong_count_is_an_error(reward_module):
    (fn,) = load_reward_funcs(["toy_rewards.wrong_length"])
    with pytest.raises(ValueError, match="expected a list of 2 numbers"):
        call_reward_func(fn, ["a", "b"], ["c", "d"])
