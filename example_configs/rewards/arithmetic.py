"""A verifiable toy task for `rl: lsp` on CPU: two-number addition.

The Challenger is asked `CHALLENGER_PROMPT` and should write "What is A+B?";
the Solver answers with the number. `exact_sum` is the task reward, written
like an Axolotl GRPO reward function (`fn(prompts, completions, **kwargs)`):

- 1.0 if the answer is the correct sum, 0.0 otherwise;
- 1.0 for every answer to a query that is not an addition problem: such a
  query cannot be failed, so its Challenger reward (−mean reward) is the
  lowest possible and the Challenger learns to write real problems.

`python example_configs/rewards/arithmetic.py DATA.jsonl` writes the SFT data
the tiny demo model is warmed up on (both roles, ChatML conversations).
"""

from __future__ import annotations

import json
import random
import re
import sys

CHALLENGER_PROMPT = "Write an addition problem."
MAX_OPERAND = 49
_QUESTION = re.compile(r"^What is (\d+)\+(\d+)\?$")


def question(a: int, b: int) -> str:
    return f"What is {a}+{b}?"


def parse_question(text: str) -> tuple[int, int] | None:
    match = _QUESTION.match(text.strip())
    return (int(match.group(1)), int(match.group(2))) if match else None


def correct(query: str, answer: str) -> bool | None:
    """True/False for an addition problem, None when `query` is not one."""
    operands = parse_question(query)
    if operands is None:
        return None
    return answer.strip() == str(sum(operands))


def exact_sum(prompts, completions, **kwargs) -> list[float]:
    rewards = []
    for prompt, completion in zip(prompts, completions):
        verdict = correct(prompt[-1]["content"], completion[0]["content"])
        rewards.append(1.0 if verdict is None else float(verdict))
    return rewards


def sft_rows(count: int, seed: int) -> list[dict]:
    """Chat rows for both roles: half Challenger turns, half Solver turns."""
    rng = random.Random(seed)
    rows = []
    for index in range(count):
        a, b = rng.randint(0, MAX_OPERAND), rng.randint(0, MAX_OPERAND)
        if index % 2 == 0:
            turns = [("user", CHALLENGER_PROMPT), ("assistant", question(a, b))]
        else:
            turns = [("user", question(a, b)), ("assistant", str(a + b))]
        rows.append({"messages": [{"role": r, "content": c} for r, c in turns]})
    return rows


if __name__ == "__main__":
    with open(sys.argv[1], "w") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in sft_rows(int(sys.argv[2]) if len(sys.argv) > 2 else 512, seed=0))
