"""Shared fixtures: a tiny offline Llama, chat data, and `axolotl train` runners."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
# The config skeleton and TensorBoard reader the benchmarks use (stdlib + yaml only at import).
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_common import axolotl_config, scalars  # noqa: E402
DEMO_DATA = REPO / "example_configs" / "data" / "tiny_chat.jsonl"
ARITHMETIC_DATA = REPO / "example_configs" / "data" / "arithmetic_sft.jsonl"
ARITHMETIC_REWARD = REPO / "example_configs" / "rewards" / "arithmetic.py"
AXOLOTL_VERSION = tuple(int(x) for x in version("axolotl").split(".")[:2])
# Axolotl < 0.20 has no `axolotl.plugins` entry-point group: configs must list the plugin.
NEEDS_PLUGINS_LINE = AXOLOTL_VERSION < (0, 20)
PLUGIN = "axolotl_selfplay.plugin.SelfPlayPlugin"
RUN_TRAIN = str(REPO / "tests" / "scripts" / "run_train.py")  # Axolotl's train entry point, in-process
# A small LoRA adapter on every linear layer, trained fast enough to move within 8 steps.
LORA = {"adapter": "lora", "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "lora_target_linear": True, "learning_rate": 5e-3}

os.environ.setdefault("AXOLOTL_DO_NOT_TRACK", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Under pytest-xdist (scripts/test.sh runs two workers) each worker and the runs it starts
# get one thread, so two workers share a 2-core machine instead of oversubscribing it.
THREADS = 1 if os.environ.get("PYTEST_XDIST_WORKER") else 2
if THREADS == 1:
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from axolotl_selfplay.tiny_models import build_tiny_model

    path = tmp_path_factory.mktemp("tiny-model")
    build_tiny_model(str(path), data_file=str(DEMO_DATA))
    return path


def with_attention_dropout(model_dir: Path, path: Path) -> Path:
    """A copy of `model_dir` with attention dropout 0.5 in its config (as some checkpoints
    ship): its train-mode forward differs from the eval-mode forward that scores the reference."""
    shutil.copytree(model_dir, path, dirs_exist_ok=True)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "attention_dropout": 0.5}))
    return path


@pytest.fixture(scope="session")
def dropout_model_dir(tmp_path_factory, tiny_model_dir) -> Path:
    return with_attention_dropout(tiny_model_dir, tmp_path_factory.mktemp("dropout-model"))


@pytest.fixture(scope="session")
def zoo(tmp_path_factory):
    """`zoo(family)`: a tiny model of a real family's shape (axolotl_selfplay.tiny_models),
    tokenizer trained on the demo chat data; built once per family and session."""
    from axolotl_selfplay.tiny_models import build_tiny_model

    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            path = tmp_path_factory.mktemp(f"zoo-{family}")
            build_tiny_model(str(path), data_file=str(DEMO_DATA), family=family)
            built[family] = path
        return built[family]

    return get


@pytest.fixture(scope="session")
def tied_model_dir(zoo) -> Path:
    """The tied-embedding model the 2-process tests train: Qwen2.5-shaped (tied, qkv bias)."""
    return zoo("qwen2.5")


@pytest.fixture(scope="session")
def arithmetic_model_dir(tmp_path_factory) -> Path:
    """A tiny Llama warmed up on the arithmetic task's two roles: it writes
    "What is A+B?" when asked for a problem and answers with a number, ending
    its turns (a random model never ends one, so it cannot play LSP)."""
    from axolotl_selfplay.tiny_models import build_tiny_model, warm_up

    path = tmp_path_factory.mktemp("arithmetic-model")
    build_tiny_model(str(path), data_file=str(ARITHMETIC_DATA))
    warm_up(str(path), str(ARITHMETIC_DATA), steps=200)
    return path


@pytest.fixture(scope="session")
def tied_arithmetic_model_dir(tmp_path_factory) -> Path:
    """`arithmetic_model_dir`, Qwen2.5-shaped (tied embeddings): LSP under ZeRO-3. 80 steps
    (31 of 32 sampled problems end their turn) keep it cheap: Qwen's default system prompt
    makes every row about 2.5 times longer than the tiny Llama's."""
    from axolotl_selfplay.tiny_models import build_tiny_model, warm_up

    path = tmp_path_factory.mktemp("tied-arithmetic-model")
    build_tiny_model(str(path), data_file=str(ARITHMETIC_DATA), family="qwen2.5")
    warm_up(str(path), str(ARITHMETIC_DATA), steps=80)
    return path


@pytest.fixture(scope="session")
def reward_model_dir(tmp_path_factory, arithmetic_model_dir) -> Path:
    """A tiny random sequence-classification reward model sharing the tokenizer."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaForSequenceClassification

    path = tmp_path_factory.mktemp("reward-model")
    config = AutoConfig.from_pretrained(str(arithmetic_model_dir), num_labels=1)
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(str(path))
    AutoTokenizer.from_pretrained(str(arithmetic_model_dir)).save_pretrained(str(path))
    return path


def lsp_config(model_dir: Path, out: Path, **overrides) -> dict:
    """A small CPU `rl: lsp` config: 2 games of 4 queries × 3 answers per step, 3 steps."""
    cfg = base_config(model_dir, out, rl="lsp", datasets=None, num_epochs=None, micro_batch_size=2, max_steps=3)
    cfg["selfplay"] = {
        "generation": {"max_new_tokens": 8, "batch_size": 32},
        "lsp": {
            "num_queries": 4,
            "num_answers": 3,
            "max_query_tokens": 16,
            "judge_max_new_tokens": 8,
            "challenger_prompt": "Write an addition problem.",
            "reward_funcs": ["arithmetic.exact_sum"],
        },
    }
    for key, value in overrides.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    return cfg


def with_reward_module(config_dir: Path) -> Path:
    """Copy the arithmetic reward module where `axolotl train` runs (its working directory)."""
    config_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(ARITHMETIC_REWARD, config_dir / "arithmetic.py")
    return config_dir


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


def base_config(model_dir: Path, out: Path, **overrides) -> dict:
    """A small CPU SPIN config in the shape a user would write (benchmarks/bench_common.py's skeleton)."""
    cfg = axolotl_config(
        model_dir,
        out / "run",
        rl="spin",
        selfplay={"iterations": 2, "epochs_per_iteration": 1, "generation": {"max_new_tokens": 12, "batch_size": 32}},
        learning_rate=1e-3,
        seed=42,
    )
    for key, value in overrides.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    return cfg


def write_config(cfg: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.update({"AXOLOTL_DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(THREADS)})
    env.update(extra or {})
    return env


class Run:
    def __init__(self, proc: subprocess.CompletedProcess, cfg: dict):
        self.returncode = proc.returncode
        self.output = proc.stdout + proc.stderr
        self.cfg = cfg
        self.output_dir = Path(cfg["output_dir"])

    def logs(self) -> list[dict]:
        """The dicts HF Trainer printed at each logging step (values as floats)."""
        rows = []
        for match in re.finditer(r"\{'loss': .*?\}", self.output):
            row = ast.literal_eval(match.group(0))
            rows.append({k: float(v) if isinstance(v, str) and _is_number(v) else v for k, v in row.items()})
        return rows

    def scalars(self, tag: str) -> list[tuple[int, float]]:
        """(step, value) of a TensorBoard scalar, full float precision."""
        return scalars(self.output_dir, tag)


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def axolotl_train(cfg: dict, config_path: Path, extra_args=(), env=None, timeout=900) -> Run:
    write_config(cfg, config_path)
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "axolotl"), "train", str(config_path), *extra_args],
        capture_output=True,
        text=True,
        env=_env(env),
        timeout=timeout,
        cwd=str(config_path.parent),
    )
    return Run(proc, cfg)


def python_script(args: list[str], env=None, timeout=900, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=_env(env), timeout=timeout, cwd=cwd
    )


def read_jsonl(path: Path) -> list[dict]:
    # split on "\n" only: str.splitlines also breaks at U+2028 / U+0085, which JSON keeps
    # unescaped inside strings (a tiny model's random bytes decode to them)
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def fresh_dir(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def train_in_process(cfg: dict, path: Path, *probe_args: str) -> Run:
    """Run Axolotl's per-rank training entry point with tests/scripts/run_train.py probes."""
    config = write_config(cfg, path)
    proc = python_script([RUN_TRAIN, str(config), *probe_args], cwd=str(path.parent))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    return Run(proc, cfg)


def spin_release_file(path: Path, rows: list[dict], reply: str) -> Path:
    """A parquet file in the SPIN authors' released layout (UCLA-AGI/SPIN_iter{t}): per row,
    `real` and `generated` message lists; here `generated` answers every prompt with `reply`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = []
    for row in rows:
        *prompt, answer = row["messages"]
        records.append({"real": [*prompt, answer], "generated": [*prompt, {"role": "assistant", "content": reply}]})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(records), str(path))
    return path


def train_in_process_all(runs: list[tuple[dict, Path, tuple[str, ...]]], parallel: int = 2) -> list[Run]:
    """`train_in_process` for several (cfg, config path, probe args), `parallel` at a time.

    Each run is its own process (no state shared between runs); one thread each, so
    two runs share a 2-core machine instead of queueing on their imports.
    """
    import time

    pending, running, done = list(enumerate(runs)), [], {}
    while pending or running:
        while pending and len(running) < parallel:
            index, (cfg, path, probe_args) = pending.pop(0)
            config = write_config(cfg, path)
            log = open(path.with_suffix(".log"), "w+")
            proc = subprocess.Popen(
                [sys.executable, RUN_TRAIN, str(config), *probe_args],
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
                env=_env({"OMP_NUM_THREADS": "1"}),
                cwd=str(path.parent),
            )
            running.append((index, cfg, proc, log))
        for item in list(running):
            index, cfg, proc, log = item
            if proc.poll() is not None:
                log.seek(0)
                done[index] = Run(subprocess.CompletedProcess(proc.args, proc.returncode, log.read(), ""), cfg)
                log.close()
                running.remove(item)
        time.sleep(0.5)
    return [done[i] for i in range(len(runs))]


def unchanged_parameters(model_dir: Path, output_dir: Path) -> list[str]:
    """Names of the tensors a full fine-tune left exactly as they were."""
    from safetensors.torch import load_file

    start = load_file(str(Path(model_dir) / "model.safetensors"))
    end = load_file(str(Path(output_dir) / "model.safetensors"))
    assert set(start) == set(end)
    return [name for name in start if start[name].equal(end[name])]


def assert_rank_stores_agree(dumps: Path | list[dict], examples: int, iteration: int) -> list[dict]:
    """The 2-process tests' store dumps (tests/distributed_shim; their folder or the dumps
    read): every rank holds the same metadata of every example and the tokens of its own
    half; rank 0 gathered the whole store."""
    stores = [json.loads((dumps / f"rank{r}.json").read_text()) for r in (0, 1)] if isinstance(dumps, Path) else dumps
    assert stores[0]["metadata"] == stores[1]["metadata"]
    assert stores[0].get("eval_metadata") == stores[1].get("eval_metadata")  # evaluation rows' store, if any
    assert all(s["examples"] == examples and s["iteration"] == iteration for s in stores)
    held = [set(s["held"]) for s in stores]
    assert held[0] | held[1] == set(range(examples)) and not held[0] & held[1]
    assert stores[0]["full_digest"] and stores[1]["full_digest"] is None
    return stores

