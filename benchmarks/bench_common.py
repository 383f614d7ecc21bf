"""What every benchmark shares: the CPU config skeleton, one `axolotl train` runner, one
TensorBoard reader, greedy evaluation, mean ± sd, and the results file.

Imports only the standard library and yaml at module level (torch and transformers
load inside the functions that need them), so tests/conftest.py can use the config
skeleton and the TensorBoard reader without pulling anything else in.

Results: each benchmark prints its markdown tables and writes them into a results
file (`--results`, default outputs/bench/RESULTS.md) between markers named after the
table, `<!-- bench:NAME -->` … `<!-- /bench:NAME -->`, replacing the previous block
of that name and leaving the rest of the file alone. `scripts/bench.sh` collects all
of them in one file; `--results benchmarks/RESULTS.md` updates the published tables
in place (the prose around them is written by hand).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
CHAT_DATA = REPO / "example_configs" / "data" / "tiny_chat.jsonl"
PLUGIN = "axolotl_selfplay.plugin.SelfPlayPlugin"
DEFAULT_RESULTS = Path("outputs/bench/RESULTS.md")


# -- configs ---------------------------------------------------------------------------


def needs_plugins_line() -> bool:
    """Axolotl < 0.20 has no `axolotl.plugins` entry-point group: configs must list the plugin."""
    from importlib.metadata import version

    return tuple(int(x) for x in version("axolotl").split(".")[:2]) < (0, 20)


def chat_dataset(path: Path | str) -> dict:
    """A `datasets:` entry for chat jsonl ({"messages": [...]}) that trains the last assistant turn."""
    return {
        "path": str(path),
        "type": "chat_template",
        "field_messages": "messages",
        "roles_to_train": ["assistant"],
        "train_on_eos": "turn",
    }


def axolotl_config(model_dir: Path | str, output_dir: Path | str, **overrides) -> dict:
    """The small fp32 CPU config every benchmark and test starts from (an override of None
    removes the key). Train on the bundled chat set unless `datasets` is overridden."""
    output_dir = Path(output_dir)
    cfg = {
        "base_model": str(model_dir),
        "tokenizer_type": "AutoTokenizer",
        "datasets": [chat_dataset(CHAT_DATA)],
        "chat_template": "tokenizer_default",
        "dataset_prepared_path": str(output_dir.parent / "prepared"),
        "val_set_size": 0,
        "sequence_len": 128,
        "output_dir": str(output_dir),
        "micro_batch_size": 16,
        "gradient_accumulation_steps": 1,
        "optimizer": "adamw_torch",
        "lr_scheduler": "constant",
        "bf16": False,
        "fp16": False,
        "tf32": False,
        "attn_implementation": "sdpa",
        "logging_steps": 1,
        "save_strategy": "no",
        "use_tensorboard": True,
        "dataloader_num_workers": 0,
    }
    if needs_plugins_line():
        cfg["plugins"] = [PLUGIN]
    return apply_overrides(cfg, overrides)


def apply_overrides(cfg: dict, overrides: dict) -> dict:
    """Set each key of `overrides` in the config `cfg` (a value of None removes the key)."""
    for key, value in overrides.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    return cfg


# -- running axolotl --------------------------------------------------------------------


def axolotl_env(extra: dict | None = None) -> dict:
    """The environment of an offline `axolotl train` of this checkout."""
    env = dict(os.environ, AXOLOTL_DO_NOT_TRACK="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)  # this checkout's package
    env.update(extra or {})
    return env


# Runs a command and prints the peak RSS of its largest descendant (the training process).
_MEASURE = """
import resource, subprocess, sys
code = subprocess.call(sys.argv[1:])
print("peak_rss_kib", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)
sys.exit(code)
"""


@dataclass
class Run:
    seconds: float  # wall time of the whole `axolotl train`
    peak_rss_gib: float | None  # max RSS of the training process (measure_memory=True)
    output: str  # stdout + stderr, also in run_dir/train.log


def axolotl_train(cfg: dict, run_dir: Path, *, measure_memory: bool = False, threads: int | None = None,
                  env: dict | None = None) -> Run:
    """One `axolotl train` subprocess with its config in `run_dir` (also its working
    directory); exits with the log's tail if it fails."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config = run_dir / "config.yml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    command = ["axolotl", "train", str(config)]
    if measure_memory:
        command = [sys.executable, "-c", _MEASURE, *command]
    extra = dict(env or {})
    if threads:
        extra["OMP_NUM_THREADS"] = str(threads)
    start = time.monotonic()
    proc = subprocess.run(command, capture_output=True, text=True, env=axolotl_env(extra), cwd=str(run_dir), check=False)
    seconds = time.monotonic() - start
    output = proc.stdout + proc.stderr
    (run_dir / "train.log").write_text(output)
    if proc.returncode != 0:
        sys.exit(f"axolotl train {config} failed:\n{output[-4000:]}")
    peak = re.findall(r"peak_rss_kib (\d+)", output)
    return Run(seconds, int(peak[-1]) / 2**20 if peak else None, output)


# -- reading results ----------------------------------------------------------------------


def scalars(output_dir: Path | str, tag: str) -> list[tuple[int, float]]:
    """(step, value) of a TensorBoard scalar over every event file of the run, in step order
    (a step logged twice, e.g. by a resumed run, keeps its last value)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values: dict[int, tuple[float, float]] = {}
    for events in sorted(Path(output_dir).joinpath("runs").rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            for event in acc.Scalars(tag):
                if event.step not in values or event.wall_time >= values[event.step][0]:
                    values[event.step] = (event.wall_time, event.value)
    return [(step, value) for step, (_, value) in sorted(values.items())]


def step_seconds(output_dir: Path | str) -> float:
    """Median wall-clock gap between consecutive logged training steps (the first step,
    which follows start-up and SPIN's generation pass, is only the reference point)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    times = []
    for events in sorted(Path(output_dir).joinpath("runs").rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        if "train/loss" in acc.Tags()["scalars"]:
            times += [e.wall_time for e in acc.Scalars("train/loss")]
    times.sort()
    if len(times) < 2:
        raise RuntimeError(f"fewer than two logged steps in {output_dir}")
    return statistics.median(b - a for a, b in itertools.pairwise(times))


def read_jsonl(path: Path | str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def mean_sd(values: list[float], digits: int = 3) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.{digits}f} ± {sd:.{digits}f}"


# -- evaluation ----------------------------------------------------------------------------


def chat_prompts(tokenizer, user_texts: list[str]) -> list[list[int]]:
    """Token ids of one-user-turn chats ending with the generation prompt."""
    texts = [
        tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True)
        for t in user_texts
    ]
    return [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]


def greedy_replies(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, batch_size: int = 250) -> list[str]:
    """The model's greedy replies (the plugin's generator), decoded without special tokens."""
    from axolotl_selfplay.sampling.hf import generate_responses
    from axolotl_selfplay.sampling.spec import SamplingSpec

    generated = generate_responses(
        model,
        prompts,
        spec=SamplingSpec.greedy(max_new_tokens),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_ids={tokenizer.eos_token_id},
        batch_size=batch_size,
        seed=0,
    )
    return tokenizer.batch_decode([tokens for tokens, _ in generated], skip_special_tokens=True)


def load_for_eval(model_dir: Path | str, tokenizer_dir: Path | str | None = None):
    """(model in fp32 eval mode, tokenizer) from a saved run or checkpoint."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir or model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), torch_dtype=torch.float32).eval()
    return model, tokenizer


# -- the results file ----------------------------------------------------------------------


def add_results_argument(parser) -> None:
    parser.add_argument(
        "--results",
        type=Path,
        default=DEFAULT_RESULTS,
        help="markdown file the tables are written into, each between its own markers (created if missing)",
    )


def write_results(path: Path, name: str, markdown: str) -> None:
    """Put `markdown` between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->` in `path`
    (replacing that block, or appending it), and print it."""
    print(markdown)
    begin, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{begin}\n{markdown.strip()}\n{end}"
    path = Path(path)
    text = path.read_text() if path.exists() else ""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = (text.rstrip() + "\n\n" if text.strip() else "") + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (torchrun's master port, a server's port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def machine() -> str:
    """One line on where a table was measured (absolute numbers on shared CPUs are noise)."""
    import platform
    from importlib.metadata import version

    try:
        load = f" (load average {os.getloadavg()[0]:.1f})"
    except OSError:
        load = ""
    return (
        f"{os.cpu_count()} CPU cores{load}, Python {platform.python_version()}, Axolotl {version('axolotl')}, "
        f"torch {version('torch')}, transformers {version('transformers')}, {time.strftime('%Y-%m-%d')}"
    )
