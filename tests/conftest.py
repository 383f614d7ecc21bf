"""Shared fixtures and helpers, written once for every test file: tiny offline models, chat
data, configs, `axolotl train` runners (subprocess and in-process), free ports."""

from __future__ import annotations

import ast
import functools
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
# The repository root, so `benchmarks` imports as a package (appended: it never shadows an
# installed module). The benchmarks' config skeleton and TensorBoard reader import only the
# standard library and yaml.
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))
from benchmarks.bench_common import apply_overrides, axolotl_config, chat_dataset, free_port, scalars  # noqa: E402

DEMO_DATA = REPO / "example_configs" / "data" / "tiny_chat.jsonl"
ARITHMETIC_DATA = REPO / "example_configs" / "data" / "arithmetic_sft.jsonl"
ARITHMETIC_REWARD = REPO / "example_configs" / "rewards" / "arithmetic.py"
AXOLOTL_VERSION = tuple(int(x) for x in version("axolotl").split(".")[:2])
# Axolotl < 0.20 has no `axolotl.plugins` entry-point group: configs must list the plugin.
NEEDS_PLUGINS_LINE = AXOLOTL_VERSION < (0, 20)
PLUGIN = "axolotl_selfplay.plugin.SelfPlayPlugin"
RUN_TRAIN = str(REPO / "tests" / "scripts" / "run_train.py")  # Axolotl's train entry point, in-process
WARM_PYTHON = str(REPO / "tests" / "scripts" / "warm_python.py")  # forks one training run per request
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


def pytest_collection_modifyitems(config, items):
    """`@pytest.mark.one_version("0.19", why=...)`: the test runs on that Axolotl version only.

    CI runs the suite on two Axolotl versions within its time budget; a test whose subject is
    ours (torch.distributed, DeepSpeed or FSDP under our trainer, a model family's tokenizer)
    rather than Axolotl's (config, data loading, trainer builder, checkpoints, the CLI) gains
    nothing from the second run. Such tests are spread over both versions.
    SELFPLAY_ALL_VERSIONS=1 runs them everywhere."""
    if os.environ.get("SELFPLAY_ALL_VERSIONS") == "1":
        return
    here = ".".join(str(part) for part in AXOLOTL_VERSION)
    for item in items:
        mark = item.get_closest_marker("one_version")
        if mark is not None and mark.args[0] != here:
            why = mark.kwargs.get("why", "")
            reason = f"runs on Axolotl {mark.args[0]} only{': ' + why if why else ''} (SELFPLAY_ALL_VERSIONS=1 runs it here)"
            item.add_marker(pytest.mark.skip(reason=reason))


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
def vllm_model_dir(tmp_path_factory) -> Path:
    """`arithmetic_model_dir` with 64-wide attention heads, for the real vLLM engine (its CPU
    attention refuses the 16-wide heads of the other tiny models)."""
    from axolotl_selfplay.tiny_models import build_tiny_model, warm_up

    path = tmp_path_factory.mktemp("vllm-model")
    build_tiny_model(str(path), data_file=str(ARITHMETIC_DATA), head_dim=64)
    warm_up(str(path), str(ARITHMETIC_DATA), steps=120)  # enough for most sampled turns to end
    return path


def vllm_test_prompts(model_dir: Path, asks: list[str]) -> SimpleNamespace:
    """The fp32 HF model of `model_dir`, its end-of-turn ids, pad id, and `asks` as chat prompts
    (token ids with the generation prompt): what the real-engine tests compare vLLM with."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from axolotl_selfplay.data.split import end_of_turn_ids

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    chats = [[{"role": "user", "content": ask}] for ask in asks]
    prompts = [tokenizer.apply_chat_template(chat, add_generation_prompt=True) for chat in chats]
    prompts = [list(p["input_ids"] if hasattr(p, "keys") else p) for p in prompts]
    return SimpleNamespace(model=model, eos=end_of_turn_ids(tokenizer, model.generation_config), prompts=prompts,
                           pad=tokenizer.pad_token_id)


def vllm_or_skip():
    """Skip the calling test module unless vLLM imports (scripts/setup_vllm.sh builds a venv with it)."""
    return pytest.importorskip(
        "vllm", reason="needs vLLM (the real engine): run `scripts/test.sh vllm` (scripts/setup_vllm.sh's venv)"
    )


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
    selfplay = {
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
    cfg = base_config(model_dir, out, rl="lsp", datasets=None, num_epochs=None, micro_batch_size=2, max_steps=3)
    cfg["selfplay"] = selfplay
    return apply_overrides(cfg, overrides)


# `varied.by_text`: distinct answers get distinct rewards, so every group of answers that are not
# all equal has a nonzero advantage and the first update certainly moves the policy. The arithmetic
# reward gives a tiny model's answers equal rewards for whole steps (all wrong, or all to queries
# that are not problems), and whether any step had a spread then depends on the machine's floats.
VARIED_REWARD = '''import zlib


def by_text(completions, **kwargs):
    return [zlib.crc32(c[0]["content"].encode()) / 2**32 for c in completions]
'''


def with_reward_module(config_dir: Path) -> Path:
    """Copy the arithmetic reward module (and `varied.py`, VARIED_REWARD) where `axolotl train`
    runs (its working directory)."""
    config_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(ARITHMETIC_REWARD, config_dir / "arithmetic.py")
    (config_dir / "varied.py").write_text(VARIED_REWARD)
    return config_dir


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


def base_config(model_dir: Path, out: Path, **overrides) -> dict:
    """A small CPU SPIN config in the shape a user would write (benchmarks/bench_common.py's
    skeleton), with `overrides` applied."""
    cfg = axolotl_config(
        model_dir,
        out / "run",
        rl="spin",
        selfplay={"iterations": 2, "epochs_per_iteration": 1, "generation": {"max_new_tokens": 12, "batch_size": 32}},
        learning_rate=1e-3,
        seed=42,
    )
    return apply_overrides(cfg, overrides)


def write_config(cfg: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.update({"AXOLOTL_DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(THREADS)})
    # Axolotl tokenizes with one worker process per CPU by default; each is a fresh Python that
    # imports datasets and transformers (~10 s of CPU) to tokenize 64 rows
    env.setdefault("AXOLOTL_DATASET_NUM_PROC", "1")
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
    """`python *args`; a training run (tests/scripts/run_train.py) runs in a warm Python instead."""
    if args and args[0] == RUN_TRAIN:
        return warm_python().run(args, cwd=cwd or os.getcwd(), env=env, timeout=timeout)
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=_env(env), timeout=timeout, cwd=cwd
    )


class WarmPython:
    """Client of tests/scripts/warm_python.py: a process that has imported torch, transformers,
    Axolotl and this package once and forks a fresh child per training run. A tiny run spends
    about four fifths of its CPU importing; this pays that once per pytest worker. The children
    run tests/scripts/run_train.py (Axolotl's per-rank entry point), each in its own process
    group, working directory, environment and log file. `axolotl train` itself (its launcher)
    is still run as a real command by the tests that are about it."""

    def __init__(self):
        self.log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"warm-python-{os.getpid()}.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, WARM_PYTHON], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
            env=_env(), cwd=str(REPO),
        )
        self.buffer = b""
        self.ended: dict[int, int] = {}
        self._read(lambda message: message.get("ready"), timeout=600)

    def _read(self, done, timeout: float) -> dict:
        """Read replies until one satisfies `done`; remember every end of a run on the way."""
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self.buffer:
                line, self.buffer = self.buffer.split(b"\n", 1)
                message = json.loads(line)
                if "returncode" in message:
                    self.ended[message["pid"]] = message["returncode"]
                if done(message):
                    return message
            if self.proc.poll() is not None:
                raise RuntimeError(f"the warm Python exited ({self.proc.returncode}); its log: {self.log.name}")
            left = deadline - time.monotonic()
            readable, _, _ = select.select([self.proc.stdout], [], [], max(0.0, min(left, 1.0)))
            if readable:
                self.buffer += os.read(self.proc.stdout.fileno(), 65536)
            elif left <= 0:
                return {}

    def start(self, args: list[str], cwd, env: dict | None, log: Path) -> int:
        request = {"argv": [str(a) for a in args], "cwd": str(cwd), "env": _env(env), "log": str(log)}
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        self.proc.stdin.flush()
        return self._read(lambda message: "pid" in message and "returncode" not in message, timeout=60)["pid"]

    def poll(self, pid: int) -> int | None:
        """The run's return code once it has ended (then forgotten), else None."""
        self._read(lambda message: False, timeout=0)
        return self.ended.pop(pid, None)

    def wait(self, pid: int, timeout: float) -> int:
        if pid not in self.ended:
            self._read(lambda message: message.get("pid") == pid and "returncode" in message, timeout=timeout)
        if pid not in self.ended:
            os.killpg(pid, signal.SIGKILL)  # the run and whatever it started
            self._read(lambda message: message.get("pid") == pid and "returncode" in message, timeout=60)
            raise subprocess.TimeoutExpired(f"warm run {pid}", timeout)
        return self.ended.pop(pid)

    def run(self, args: list[str], cwd, env=None, timeout=900) -> subprocess.CompletedProcess:
        """Like `subprocess.run([python, *args], capture_output=True)`, output all in stdout."""
        fd, log = tempfile.mkstemp(prefix="run-", suffix=".log")
        os.close(fd)
        returncode = self.wait(self.start(args, cwd, env, Path(log)), timeout)
        output = Path(log).read_text(errors="replace")
        os.unlink(log)
        return subprocess.CompletedProcess([sys.executable, *args], returncode, output, "")


_WARM_PYTHON: WarmPython | None = None


def warm_python() -> WarmPython:
    """This pytest worker's warm Python, started at its first training run."""
    global _WARM_PYTHON
    if _WARM_PYTHON is None:
        _WARM_PYTHON = WarmPython()
    return _WARM_PYTHON


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


def spin_release_file(path: Path, rows: list[dict], reply: str, real_on=()) -> Path:
    """A parquet file in the SPIN authors' released layout (UCLA-AGI/SPIN_iter{t}): per row,
    `real` and `generated` message lists; here `generated` answers every prompt with `reply`,
    except the rows numbered in `real_on`, whose `generated` is the real answer (y' = y)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = []
    for index, row in enumerate(rows):
        *prompt, answer = row["messages"]
        generated = answer if index in real_on else {"role": "assistant", "content": reply}
        records.append({"real": [*prompt, answer], "generated": [*prompt, generated]})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(records), str(path))
    return path


def train_in_process_all(runs: list[tuple[dict, Path, tuple[str, ...]]], parallel: int = 2) -> list[Run]:
    """`train_in_process` for several (cfg, config path, probe args), `parallel` at a time.

    Each run is its own process (no state shared between runs); one thread each, so
    two runs share a 2-core machine instead of queueing on one core.
    """
    warm = warm_python()
    pending, running, done = list(enumerate(runs)), [], {}
    while pending or running:
        while pending and len(running) < parallel:
            index, (cfg, path, probe_args) = pending.pop(0)
            config = write_config(cfg, path)
            log = path.with_suffix(".log")
            args = [RUN_TRAIN, str(config), *probe_args]
            if "--hide-selfplay" in probe_args:
                # "as if the package were not installed": a process that never imported it
                with open(log, "w") as out:
                    proc = subprocess.Popen([sys.executable, *args], stdout=out, stderr=subprocess.STDOUT,
                                            env=_env({"OMP_NUM_THREADS": "1"}), cwd=str(path.parent))
                poll = proc.poll
            else:
                pid = warm.start(args, path.parent, {"OMP_NUM_THREADS": "1"}, log)
                poll = functools.partial(warm.poll, pid)
            running.append((index, cfg, poll, log))
        for item in list(running):
            index, cfg, poll, log = item
            returncode = poll()
            if returncode is not None:
                done[index] = Run(subprocess.CompletedProcess([RUN_TRAIN], returncode, log.read_text(), ""), cfg)
                running.remove(item)
        time.sleep(0.5)
    return [done[i] for i in range(len(runs))]


# -- Axolotl in this process: config loading and data preparation, no model weights ------


DEMO_ROWS = [json.loads(line) for line in DEMO_DATA.read_text().splitlines()]


@pytest.fixture
def fresh_axolotl(monkeypatch):
    """Axolotl's plugin registry and the environment `load_cfg` touches, reset around each test."""
    from axolotl.integrations.base import PluginManager

    monkeypatch.setattr("sys.argv", ["axolotl"])  # Axolotl's CLI entry points parse it
    saved_env = dict(os.environ)
    PluginManager._instance = None
    if isinstance(getattr(PluginManager, "plugins", None), dict):
        monkeypatch.setattr(PluginManager, "plugins", {})
    yield
    os.environ.clear()
    os.environ.update(saved_env)
    PluginManager._instance = None


@pytest.fixture
def no_weights(monkeypatch):
    """Fails the test if any model weights are loaded (Axolotl loads models through
    `from_pretrained`; config-only reads such as `AutoConfig` stay allowed)."""
    from transformers.modeling_utils import PreTrainedModel

    def refuse(cls, *args, **kwargs):
        raise AssertionError(f"model weights were loaded: {cls.__name__}.from_pretrained{args}")

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(refuse))


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    """One JSON object per line (the inverse of `read_jsonl`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def chat_entry(path: Path | str, **keys) -> dict:
    """A `datasets:` entry for chat jsonl that trains the last assistant turn, with `keys` added."""
    return {**chat_dataset(path), **keys}


def base_config_file(tmp_path: Path, model_dir: Path, name: str = "config.yml", **overrides) -> Path:
    """`base_config(model_dir, tmp_path, **overrides)` written to `tmp_path / name`."""
    return write_config(base_config(model_dir, tmp_path, **overrides), tmp_path / name)


def prepare_data(config_path: Path):
    """What `axolotl train` does up to the model: Axolotl's config loading, then the plugins'
    `load_datasets` hook."""
    from axolotl.cli.config import load_cfg
    from axolotl.integrations.base import PluginManager

    cfg = load_cfg(str(config_path))
    return cfg, PluginManager.get_instance().load_datasets(cfg, preprocess=False)


def train_in_this_process(config_path: Path):
    """Axolotl's own `axolotl train` entry point (what each rank runs), in this process
    (`train_in_process` runs it in a subprocess, with probes)."""
    from axolotl.cli.train import do_cli

    do_cli(config=str(config_path))


def broken_chat_config(tmp_path: Path, model_dir: Path, case: str) -> Path:
    """A config of 16 demo conversations, one of them broken as `case` says."""
    rows = [json.loads(json.dumps(r)) for r in DEMO_ROWS[:16]]
    overrides = {}
    entry_keys = {}
    if case == "empty reply":
        rows[3]["messages"][-1]["content"] = ""
    elif case == "empty reply, multi-turn, end of turn untrained":
        rows[3]["messages"] += [{"role": "user", "content": "And then?"}, {"role": "assistant", "content": "  "}]
        entry_keys["train_on_eos"] = "none"
    elif case == "truncated away":
        rows[5]["messages"][0]["content"] = "long " * 80
        overrides = {"excess_length_strategy": "truncate", "sequence_len": 64}
    path = write_jsonl(tmp_path / "chat.jsonl", rows)
    return base_config_file(tmp_path, model_dir, datasets=[chat_entry(path, **entry_keys)], **overrides)


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


@pytest.fixture
def one_process_group():
    """A gloo process group of one rank: FSDP2's `fully_shard` on CPU, in this process."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def fully_sharded(model):
    """`model` (a causal LM, or a PEFT model of one) sharded as accelerate's FSDP2 does: every
    decoder layer, then the root; on the one-rank CPU mesh of `one_process_group`."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (1,))
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    for layer in inner.model.layers:
        fully_shard(layer, mesh=mesh)
    return fully_shard(model, mesh=mesh)
