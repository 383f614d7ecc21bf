"""LSP reward functions called the TRL way: reward files written for Axolotl's GRPO (TRL's
GRPOTrainer) work unchanged, `None` means "no reward for this row", and a function the keyword
call cannot reach is an error before any model loads."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from axolotl_selfplay.lsp import rewards
from axolotl_selfplay.lsp.rewards import call_reward_func, load_reward_funcs, task_rewards

ARITHMETIC_DIR = Path(__file__).resolve().parent.parent / "example_configs" / "rewards"

# Copied in the style of TRL's GRPOTrainer documentation ("Using a custom reward function") and
# Axolotl's GRPO docs (`def reward_fn(completions, **kwargs)`), unchanged but for the names.
GRPO_REWARDS = '''
import re

def reward_len(completions, **kwargs):
    return [-abs(20 - len(completion[0]["content"])) for completion in completions]

def format_reward_func(completions, **kwargs):
    pattern = r"^<think>.*?</think><answer>.*?</answer>$"
    completion_contents = [completion[0]["content"] for completion in completions]
    matches = [re.match(pattern, content) for content in completion_contents]
    return [1.0 if match else 0.0 for match in matches]

def axolotl_style(completions, **kwargs) -> list[float]:
    return [float(len(c[0]["content"].split())) for c in completions]

def prompts_and_completions(prompts, completions):
    return [float(p[-1]["content"] in c[0]["content"]) for p, c in zip(prompts, completions)]

def prompts_optional(completions, prompts=None, **kw):
    return [float(prompts is not None and "completion_ids" in kw) for _ in completions]

def keyword_only(*, completions, completion_ids):
    return [float(len(ids)) for ids in completion_ids]

def with_state(completions, trainer_state, **kwargs):
    return [float(trainer_state.global_step) for _ in completions]

def math_only(completions, queries, **kwargs):
    # None: this function does not score answers to queries that are not sums
    return [float(c[0]["content"] == "4") if "+" in q else None for q, c in zip(queries, completions)]

def never(completions, **kwargs):
    return [None for _ in completions]

async def async_judge(completions, **kwargs):
    return [0.5 for _ in completions]

def returns_text(completions, **kwargs):
    return ["good" for _ in completions]

def no_completions(prompts):
    return [0.0 for _ in prompts]

def only_args(*args):
    return []

def positional_only(completions, /, **kwargs):
    return [0.0 for _ in completions]

def needs_dataset_column(prompts, completions, answer, **kwargs):
    return [float(c[0]["content"] == a) for c, a in zip(completions, answer)]
'''


@pytest.fixture
def grpo_rewards(tmp_path, monkeypatch):
    (tmp_path / "grpo_rewards.py").write_text(textwrap.dedent(GRPO_REWARDS))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.setattr(rewards, "_warned_unscored", False)
    sys.modules.pop("grpo_rewards", None)
    yield
    sys.modules.pop("grpo_rewards", None)


def load(name: str):
    (fn,) = load_reward_funcs([f"grpo_rewards.{name}"])
    return fn


def test_trl_documentation_rewards_work_unchanged(grpo_rewards):
    """reward_len: −|20 − len| → "short" (5 chars) = −15, 20 chars = 0; the format regex; word count."""
    answers = ["short", "x" * 20, "<think>hm</think><answer>4</answer>"]
    assert call_reward_func(load("reward_len"), ["q"] * 3, answers) == [-15.0, 0.0, -15.0]
    assert call_reward_func(load("format_reward_func"), ["q"] * 3, answers) == [0.0, 0.0, 1.0]
    assert call_reward_func(load("axolotl_style"), ["q", "q"], ["one two", "three"]) == [2.0, 1.0]


def test_functions_receive_the_keywords_they_name(grpo_rewards):
    assert call_reward_func(load("prompts_and_completions"), ["hi", "no"], ["hi there", "yes"]) == [1.0, 0.0]
    # with **kwargs: every keyword, completion_ids included
    assert call_reward_func(load("prompts_optional"), ["q"], ["a"], completion_ids=[[5, 6]]) == [1.0]
    assert call_reward_func(load("keyword_only"), ["q", "q"], ["a", "b"], completion_ids=[[1, 2, 3], [4]]) == [3.0, 1.0]
    state = SimpleNamespace(global_step=7)
    assert call_reward_func(load("with_state"), ["q"], ["a"], trainer_state=state) == [7.0]
    assert call_reward_func(load("async_judge"), ["q", "q"], ["a", "b"]) == [0.5, 0.5]


def test_none_leaves_a_source_out_of_the_weighted_sum(grpo_rewards, monkeypatch):
    """Weights [2, 0.5]: math_only (None off sums) and reward_len.
    "2+2" / "4": 2·1 + 0.5·(−19) = −7.5; "hello" / "4": math_only None → 0.5·(−19) = −9.5."""
    funcs = [load("math_only"), load("reward_len")]
    warnings = []
    monkeypatch.setattr(rewards.LOG, "warning", lambda *args: warnings.append(args))
    totals = task_rewards(funcs, None, [2.0, 0.5], ["2+2", "hello"], ["4", "4"], [True, True])
    assert totals == [-7.5, -9.5]
    assert not warnings


def test_a_row_no_source_scores_gets_zero_and_one_warning(grpo_rewards, monkeypatch):
    warnings = []
    monkeypatch.setattr(rewards.LOG, "warning", lambda *args: warnings.append(args))
    funcs = [load("math_only"), load("never")]
    assert task_rewards(funcs, None, [1.0, 1.0], ["2+2", "hello", "x"], ["4", "4", "4"], [True, True, False]) == [
        1.0,
        0.0,
        0.0,  # not kept: never passed to the functions, not counted as unscored
    ]
    assert len(warnings) == 1 and warnings[0][1:3] == (1, 2) and "hello" in warnings[0]
    task_rewards(funcs, None, [1.0, 1.0], ["hello"], ["4"], [True])
    assert len(warnings) == 1  # once per process


def test_a_reward_model_column_combines_with_none(grpo_rewards, monkeypatch):
    """A reward model always scores: row 1's math_only None leaves 3·(the model's 0.25)."""
    monkeypatch.setattr(rewards.LOG, "warning", lambda *args: None)
    model = lambda queries, answers: [0.25 for _ in queries]  # noqa: E731
    assert task_rewards([load("math_only")], model, [1.0, 3.0], ["2+2", "hi"], ["4", "4"], [True, True]) == [1.75, 0.75]


@pytest.mark.parametrize(
    "name, message",
    [
        ("no_completions", "cannot receive `completions` by keyword"),
        ("only_args", "cannot receive `completions` by keyword"),
        ("positional_only", "positional-only parameter `completions`"),
        ("needs_dataset_column", "requires `answer`, which `rl: lsp` does not pass"),
    ],
)
def test_a_function_the_keyword_call_cannot_reach_is_an_error(grpo_rewards, name, message):
    with pytest.raises(ValueError, match=r"selfplay\.lsp\.reward_funcs\[1\]` = `grpo_rewards\." + name) as error:
        load_reward_funcs(["grpo_rewards.reward_len", f"grpo_rewards.{name}"])
    assert message in str(error.value)
    assert "def reward(completions, **kwargs)" in str(error.value)  # the fix


def test_non_numbers_are_an_error(grpo_rewards):
    with pytest.raises(ValueError, match="returned non-numbers: \\['good'\\]; return a float per completion"):
        call_reward_func(load("returns_text"), ["q"], ["a"])


def test_the_example_arithmetic_reward_still_works(monkeypatch):
    monkeypatch.chdir(ARITHMETIC_DIR)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(ARITHMETIC_DIR))])
    sys.modules.pop("arithmetic", None)
    try:
        (exact_sum,) = load_reward_funcs(["arithmetic.exact_sum"])
        queries = ["What is 2+3?", "What is 2+3?", "Tell me a joke"]
        assert call_reward_func(exact_sum, queries, ["5", "6", "no"], completion_ids=[[1], [2], [3]]) == [1.0, 0.0, 1.0]
    finally:
        sys.modules.pop("arithmetic", None)
