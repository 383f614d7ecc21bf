"""The GPU proof kit's driver (run by scripts/gpu_check.sh, which installs the wheelhouse and runs
the import check first).

    python scripts/gpu_check.py --out DIR [--cpu] [--work DIR] [--budget SECONDS]
    python scripts/gpu_check.py --audit-env IMAGE_LIST [--wheelhouse DIR]   (the rehearsal's package audit)

Builds offline (in a subprocess with its own time limit) a random-init model (GPU:
Qwen2.5-0.5B-shaped, tied embeddings, 151,936-row vocabulary; --cpu: a tiny Qwen2) with the tiny
local tokenizer, then runs, each part under its own time limit (and all of them under --budget) so
a slow part cannot eat the rest, a timed-out part's whole process tree killed:
  (a) `rl: spin` through `axolotl train`, LoRA, bf16, SDPA, 2 iterations: every logged value finite,
      the first loss of each iteration ln 2 within the worst-case bound `ln2_tolerance` (a sanity check);
  (b) the same with full fine-tuning, through Axolotl's train entry point in-process
      (scripts/gpu_check_train.py) to time every step, read the peak device memory, name the SDPA
      backend that ran (profiler) and recompute each iteration's first batch in fp32: the first loss
      must match the fp32 loss within `ln2_tolerance_fp32` (the check that can fail);
  (c) opponent generation throughput, ours vs official-style (benchmarks/generation_throughput.py:
      a warm-up pass, 3 repeats in alternating order), and the SPIN step vs TRL's DPOTrainer on the
      pairs (b) trained on: step time, peak memory;
  (d) bf16 vs fp32 agreement of the scoring pass (log-probs of the same pairs).
Writes ONE markdown report, DIR/gpu_report.md, after every part (a crash leaves a partial report),
and every part's full log, packed into DIR/gpu_logs.tar.gz after every part.
Exit status 0 only when every part passed.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import time
import traceback
from importlib.metadata import distributions, version
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "example_configs" / "data" / "tiny_chat.jsonl"
TRAIN_WRAPPER = REPO / "scripts" / "gpu_check_train.py"
LN2 = math.log(2)
# unit roundoff (relative error of one rounding) per training precision
UNIT_ROUNDOFF = {"bf16": 2.0**-8, "fp32": 2.0**-24}
PRINT_RESOLUTION = 1e-3  # Transformers logs 4 significant digits: '0.6931'


def ln2_tolerance(beta: float, logps_real: float, logps_generated: float, precision: str) -> float:
    """How far the first SPIN loss of an iteration may sit from ln 2.

    At the first step θ = θ_t, so the margin m = β[(lp_θ(y) − lp_θt(y)) − (lp_θ(y') − lp_θt(y'))]
    is 0 in exact arithmetic and the loss −log σ(m) is ln 2. The training forward and the
    scoring pass that gave lp_θt run different batch shapes and kernels, so each sequence
    log-prob carries rounding error of at most u·|lp| (u: the unit roundoff of the precision,
    2^-8 for bf16). Worst case, all four errors add up: |m| ≤ 2uβ(|lp(y)| + |lp(y')|), and since
    d(−log σ(m))/dm = −1/2 at m = 0, |loss − ln 2| ≤ uβ(|lp(y)| + |lp(y')|). The logged loss has
    4 significant digits, hence the floor.
    """
    return max(PRINT_RESOLUTION, UNIT_ROUNDOFF[precision] * beta * (abs(logps_real) + abs(logps_generated)))


def ln2_tolerance_fp32(beta: float, pair_errors: list[tuple[float, float]], dropped: int = 0) -> float:
    """How far the first loss of an iteration may sit from the same batch's loss in fp32.

    pair_errors: per pair, the policy's measured rounding error on its two sequences,
    (|lp(y) − lp_fp32(y)|, |lp(y') − lp_fp32(y')|), from the training precision's forward and an fp32
    copy of the same weights on the same device, in the same batch layout. At the first step θ = θ_t,
    so the pair's margin h = (lp_θ(y) − lp_θt(y)) − (lp_θ(y') − lp_θt(y')) is 0 in exact arithmetic
    (and fp32 gives it to ~1e-6). Its four log-probs each carry a rounding error: the policy's two are
    the measured ones; the reference's two come from the same weights in another layout (the scoring
    pass), so they are taken as large as the batch's largest measured pair: |h_i| ≤ H_i = e_i + max_j e_j
    with e_i = |e_i(y)| + |e_i(y')|. The loss −log σ(βh) sits within βH·σ(βH) of ln 2 (its slope is
    σ(−βh) ≤ σ(β|h|)), the batch loss is the mean over the pairs and the `dropped` identical pairs
    (those sit at ln 2 exactly), and the logged loss has 4 significant digits, hence the floor.
    Unlike `ln2_tolerance` this scales with the rounding of the log-probs that make up the margin, not
    with the size of the summed log-probs: a reference scored wrongly (other weights, masking or
    positions) moves h by far more than the policy's own rounding does.
    """
    sums = [abs(real) + abs(generated) for real, generated in pair_errors]
    if not sums:
        return PRINT_RESOLUTION
    worst = max(sums)
    bounds = [beta * (e + worst) / (1 + math.exp(-beta * (e + worst))) for e in sums]
    return max(PRINT_RESOLUTION, sum(bounds) / (len(sums) + dropped))


def check_fp32_first_steps(records: list[dict], iterations: int) -> list[str]:
    """Problems in part (b)'s fp32 recomputation of each iteration's first batch (empty: passed)."""
    problems = []
    if len(records) != iterations:
        problems.append(f"fp32 check: expected {iterations} iterations' first batches, found {len(records)}")
    for record in records:
        tol = ln2_tolerance_fp32(record["beta"], record["pair_errors"], record["dropped"])
        if not abs(record["loss"] - record["loss_fp32"]) <= tol:  # `not <=`: a NaN fails too
            problems.append(f"iteration {record['iteration']}: first loss {record['loss']:.6f} vs fp32 "
                            f"{record['loss_fp32']:.6f}, |Δ| > {tol:.6f}")
        if not abs(record["loss_fp32"] - LN2) <= PRINT_RESOLUTION:
            problems.append(f"iteration {record['iteration']}: fp32 first loss {record['loss_fp32']:.6f} is not ln 2")
    return problems


# SDPA's backends as the profiler names their operators (torch 2.x; forward and backward ops share
# these stems); an operator counts for the first stem it contains (the CPU flash op contains the CUDA one's)
SDPA_BACKENDS = [
    ("_scaled_dot_product_flash_attention_for_cpu", "flash (CPU kernel)"),
    ("_scaled_dot_product_cudnn_attention", "cuDNN"),
    ("_scaled_dot_product_flash_attention", "flash"),
    ("_flash_attention_forward", "flash"),
    ("_scaled_dot_product_efficient_attention", "memory-efficient"),
    ("_efficient_attention_forward", "memory-efficient"),
    ("_scaled_dot_product_attention_math", "math"),
]


def sdpa_backends(op_names: list[str]) -> list[str]:
    """Which SDPA backends the profiled operator names show ran; the math backend has no op of its
    own in some versions, so SDPA calls with no fused op are reported as math."""
    found = set()
    for name in op_names:
        found.update([backend for stem, backend in SDPA_BACKENDS if stem in name][:1])
    found = [backend for backend in dict.fromkeys(backend for _, backend in SDPA_BACKENDS) if backend in found]
    if not found and any("scaled_dot_product_attention" in name for name in op_names):
        found.append("math")
    return found


def normalize(name: str) -> str:
    """A distribution's name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_package_list(text: str) -> dict[str, str | None]:
    """`name==version` or `name` per line (comments, blank lines and extras ignored): {name: version}."""
    packages = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, pinned = line.partition("==")
            packages[normalize(name.split("[", 1)[0])] = pinned.strip() or None
    return packages


def audit_environment(present: dict[str, str], image: dict[str, str | None], wheelhouse: set[str]) -> list[str]:
    """What makes an environment unlike the GPU machine's: a package of the image's list missing or at
    another version than the one pinned, or anything that is neither in the image's list nor in the
    wheelhouse (pip adding a dependency on its own would hide a missing wheel)."""
    problems = [f"missing: {name}" for name in sorted(set(image) - set(present))]
    problems += [f"{name} {present[name]}, the image's is {image[name]}" for name in sorted(set(image) & set(present))
                 if image[name] and present[name] != image[name]]
    problems += [f"not in the image's list nor the wheelhouse: {name} {present[name]}"
                 for name in sorted(set(present) - set(image) - wheelhouse)]
    return problems


LOG_LINE = re.compile(r"\{'loss': [^{}]*\}")


def parse_train_logs(text: str) -> list[dict]:
    """Every per-step log dict Transformers printed ({'loss': '0.6931', ...}), values as floats."""
    rows = []
    for match in LOG_LINE.finditer(text):
        row = ast.literal_eval(match.group(0))
        rows.append({k: float(v) for k, v in row.items()})
    return rows


def first_losses_per_iteration(rows: list[dict]) -> list[dict]:
    """The first logged step of each self-play iteration (`selfplay/iteration`)."""
    firsts: dict[int, dict] = {}
    for row in rows:
        firsts.setdefault(int(row.get("selfplay/iteration", 0)), row)
    return [firsts[i] for i in sorted(firsts)]


def check_spin_logs(rows: list[dict], beta: float, precision: str, iterations: int) -> list[str]:
    """Problems found in a SPIN run's logs (empty list: passed)."""
    problems = []
    if not rows:
        return ["no training logs found"]
    for step, row in enumerate(rows, 1):
        bad = [k for k, v in row.items() if not math.isfinite(v)]
        if bad:
            problems.append(f"step {step}: non-finite {', '.join(bad)}")
    firsts = first_losses_per_iteration(rows)
    if len(firsts) != iterations:
        problems.append(f"expected {iterations} iterations in the logs, found {len(firsts)}")
    for i, row in enumerate(firsts):
        tol = ln2_tolerance(beta, row["logps/real"], row["logps/generated"], precision)
        if abs(row["loss"] - LN2) > tol:
            problems.append(f"iteration {i}: first loss {row['loss']:.4f}, |loss − ln 2| > {tol:.4f}")
    return problems


class Report:
    """The markdown report, rewritten after every part so a crash leaves what was measured."""

    def __init__(self, path: Path, header: list[str]):
        self.path, self.lines, self.failed = path, list(header), []
        self.write()

    def add(self, *lines: str) -> None:
        self.lines += lines
        self.write()

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("\n".join(self.lines) + "\n")


def env_for_runs() -> dict:
    env = dict(os.environ, AXOLOTL_DO_NOT_TRACK="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO), env.get("PYTHONPATH", "")] if p)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env["PATH"]
    return env


def run_logged(command: list[str], log: Path, timeout: float) -> tuple[int, str]:
    """Run a command, its output streamed to `log` (complete even if the command hangs or is killed);
    returns (exit status, output). 124: timed out. The command runs in a process group of its own and
    the whole group is killed on a timeout (`axolotl train` → `accelerate launch` → the trainer), and
    after a normal exit too (stragglers), so no orphan slows the parts that follow."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env_for_runs(),
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            rc = 124
        finally:  # also when the driver itself is stopped (SIGTERM from the backstop: see main)
            kill_group(proc)
    text = log.read_text(errors="replace")
    if rc == 124:
        with open(log, "a") as out:
            out.write(f"\n[gpu_check] time limit of {timeout:.0f} s reached: process group {proc.pid} killed\n")
    return rc, text


def kill_group(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM to the process's whole group, SIGKILL to what is left after `grace` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:  # the group is gone
            break
        if sig == signal.SIGTERM:
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and group_alive(proc.pid):
                time.sleep(0.1)
    if proc.poll() is None:
        proc.wait()


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def pack_logs(work: Path, out: Path) -> None:
    """Every part's full log (and the configs and JSON results beside them) into OUT/gpu_logs.tar.gz,
    rewritten after every part: the GPU machine is gone after the run, and only OUT comes back."""
    packed = out / "gpu_logs.tar.gz"
    with tarfile.open(packed.with_suffix(".tmp"), "w:gz") as tar:
        kept = sorted(work.glob("logs/*")) + [p for ext in ("yml", "json", "md") for p in sorted(work.glob(f"*.{ext}"))]
        for path in kept:
            tar.add(path, arcname=str(path.relative_to(work)))
    packed.with_suffix(".tmp").replace(packed)


def tail(text: str, chars: int = 2500) -> str:
    return text[-chars:]


def build_model(path: Path, cpu: bool) -> str:
    """A random-init Qwen2 with the tiny local tokenizer (token ids < 600 of a big embedding)."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from axolotl_selfplay.tiny_models import build_tiny_model

    described = path / "gpu_check_model.txt"
    if (path / "model.safetensors").exists() and described.exists():
        return described.read_text()
    build_tiny_model(str(path), data_file=str(DATA))  # tokenizer (and a tiny Llama, replaced below)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    shape = (
        # like the GPU model, more embedding rows than tokens: sampled ids beyond the tokenizer happen there too
        dict(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2)
        if cpu else  # Qwen2.5-0.5B
        dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
             num_attention_heads=14, num_key_value_heads=2)
    )
    config = Qwen2Config(
        **shape, max_position_embeddings=4096, rope_theta=1e6, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() and not cpu else "cpu"):
        model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.to(torch.bfloat16 if not cpu else torch.float32).save_pretrained(str(path))
    params = sum(p.numel() for p in model.parameters())
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the runs below are other processes
    described.write_text(f"Qwen2 {shape['hidden_size']}×{shape['num_hidden_layers']}, vocab {shape['vocab_size']}, "
                         f"tied, {params / 1e6:.1f}M parameters")
    return described.read_text()


def spin_config(model: str, out: Path, *, precision: str, lora: bool, iterations: int, cpu: bool) -> dict:
    cfg = {
        "base_model": model,
        "tokenizer_type": "AutoTokenizer",
        "plugins": ["axolotl_selfplay.plugin.SelfPlayPlugin"],  # installed from the tree via PYTHONPATH: no entry point
        "rl": "spin",
        "selfplay": {"iterations": iterations, "beta": 0.1,
                     "generation": {"max_new_tokens": 16 if cpu else 64, "temperature": 1.0, "batch_size": 64}},
        "datasets": [{"path": str(DATA), "type": "chat_template", "field_messages": "messages",
                      "roles_to_train": ["assistant"], "train_on_eos": "turn"}],
        "chat_template": "tokenizer_default",
        # one tokenized copy for (a) and (b) (Axolotl keys it by the data and tokenizer settings), made
        # in this process: 64 rows are not worth worker processes that each import torch again
        "dataset_prepared_path": str(out.parent / "prepared"),
        "dataset_num_proc": 1,
        "val_set_size": 0,
        "sequence_len": 256,
        "output_dir": str(out),
        "micro_batch_size": 8,
        "gradient_accumulation_steps": 1,
        "optimizer": "adamw_torch",
        "learning_rate": 1e-4 if lora else 1e-5,
        "lr_scheduler": "constant",
        "warmup_steps": 0,
        "seed": 42,
        "bf16": precision == "bf16",
        "fp16": False,
        "tf32": False,
        "attn_implementation": "sdpa",
        "logging_steps": 1,
        "save_strategy": "no",
        "dataloader_num_workers": 0,
    }
    if lora:
        cfg.update({"adapter": "lora", "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "lora_target_linear": True})
    return cfg


def part_spin(report: Report, work: Path, model: str, *, lora: bool, args, precision: str, timeout: float) -> Path | None:
    name = "lora" if lora else "full"
    out = work / f"spin-{name}"
    cfg = spin_config(model, out, precision=precision, lora=lora, iterations=2, cpu=args.cpu)
    cfg_path = work / f"spin-{name}.yml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    if lora:  # the real command line: console script, accelerate launch
        console = shutil.which("axolotl")  # gpu_check.sh puts the wheelhouse's bin/ on PATH
        command = [console] if console else [sys.executable, "-m", "axolotl.cli.main"]
        command += ["train", str(cfg_path)]
        if not shutil.which("accelerate"):  # Axolotl's default launcher is `accelerate launch`
            command += ["--launcher", "python"]
    else:  # Axolotl's train entry point in-process, timing every step
        command = [sys.executable, str(TRAIN_WRAPPER), str(cfg_path), str(work / f"spin-{name}-steps.json")]
    start = time.perf_counter()
    rc, text = run_logged(command, work / "logs" / f"spin-{name}.log", timeout)
    wall = time.perf_counter() - start
    rows = parse_train_logs(text)
    problems = ([f"exit status {rc}{' (time limit)' if rc == 124 else ''}; log tail (the whole log: "
                 f"logs/spin-{name}.log in gpu_logs.tar.gz):\n```\n{tail(text)}\n```"]
                if rc else []) + check_spin_logs(rows, 0.1, precision, 2)
    steps = work / f"spin-{name}-steps.json"
    measured = json.loads(steps.read_text()) if not lora and steps.exists() else None
    if not lora:
        problems += check_fp32_first_steps(measured["fp32_first_steps"] if measured else [], 2)
    title = f"(a) rl: spin, LoRA r16, {precision}, sdpa, `axolotl train`" if lora else \
        f"(b) rl: spin, full fine-tuning, {precision}, sdpa, Axolotl's train entry point"
    shown = " ".join(Path(part).name if "/" in part else part for part in command)
    lines = [f"### {title}", "", f"`{shown}`: {len(rows)} logged steps, wall {wall:.0f} s.", "",
             "| iteration | first loss | ln 2 | worst-case bound | logps/real | logps/generated |",
             "|---|---|---|---|---|---|"]
    for i, row in enumerate(first_losses_per_iteration(rows)):
        tol = ln2_tolerance(0.1, row["logps/real"], row["logps/generated"], precision)
        lines.append(f"| {i} | {row['loss']:.4f} | {LN2:.4f} | ±{tol:.4f} | {row['logps/real']:.1f} | {row['logps/generated']:.1f} |")
    lines += ["", "The worst-case bound u·β·(|lp(y)| + |lp(y′)|) only catches gross errors"
              + (" (the fp32 comparison in (b) is the strict check)." if lora
                 else "; the fp32 comparison below is the strict one.")]
    if measured is not None:
        lines += ["", "First batch of each iteration recomputed in fp32 (an fp32 copy of the same weights, "
                  "same device): "
                  "the run's loss must match the fp32 loss within the rounding its pairs' measured log-prob errors "
                  "allow (`ln2_tolerance_fp32`).", "",
                  "| iteration | first loss | same batch in fp32 | \\|Δ\\| | tolerance | pairs (+ identical) "
                  "| max \\|lp − lp_fp32\\| (nats) | fp32 max \\|margin\\| |", "|---|---|---|---|---|---|---|---|"]
        for record in measured["fp32_first_steps"]:
            tol = ln2_tolerance_fp32(record["beta"], record["pair_errors"], record["dropped"])
            worst = max((max(pair) for pair in record["pair_errors"]), default=0.0)
            lines.append(f"| {record['iteration']} | {record['loss']:.6f} | {record['loss_fp32']:.6f} | "
                         f"{abs(record['loss'] - record['loss_fp32']):.6f} | ±{tol:.6f} | {record['pairs']} "
                         f"(+{record['dropped']}) | {worst:.4f} | {record['max_abs_margin_fp32']:.2e} |")
        ops = measured.get("attention_ops", [])
        lines += ["", f"Attention kernel (profiler, training step 2, forward and backward): "
                  f"**{', '.join(sdpa_backends(ops)) or 'no SDPA operator seen'}** SDPA backend "
                  f"(operators: {', '.join(f'`{op}`' for op in ops) or 'none'})."]
    if rows:
        mem = max(r.get("memory/max_allocated (GiB)", 0.0) for r in rows)
        lines += ["", f"last loss {rows[-1]['loss']:.4f}; every logged value finite: "
                  f"{all(math.isfinite(v) for r in rows for v in r.values())}; max allocated (logged) {mem:.2f} GiB"]
    lines += ["", "**PASS**" if not problems else "**FAIL**: " + "; ".join(problems), ""]
    report.add(*lines)
    if problems:
        report.failed.append(name)
    return out if rc == 0 else None


def part_generation(report: Report, work: Path, model: str, args, timeout: float) -> None:
    command = [sys.executable, str(REPO / "benchmarks" / "generation_throughput.py"), "--model-dir", model,
               "--device", args.device, "--prompts", "16" if args.cpu else "128", "--repeats", "3", "--warmup",
               "--batch-size", "8" if args.cpu else "32", "--max-new-tokens", "8" if args.cpu else "64",
               "--results", str(work / "generation_results.md")]
    if not args.cpu:
        command += ["--dtype", "bfloat16"]
    rc, text = run_logged(command, work / "logs" / "generation.log", timeout)
    head = [line for line in text.splitlines() if line.startswith(tuple("0123456789"))]  # "128 prompts of ..."
    report.add("### (c1) opponent generation throughput: ours vs official-style", "",
               "One untimed warm-up pass of each generator, then 3 timed repeats in alternating order (median). "
               "Random-init model: it rarely ends a turn, so nearly every response runs to max_new_tokens; "
               "the throughput ratio is the result, the efficiency column is not (see benchmarks/RESULTS.md).", "",
               *(head[:1] + [""] if head else []),
               *([line for line in text.splitlines() if line.startswith("|")]
                 + [""] + [line for line in text.splitlines() if line.lower().startswith("identical")]
                 if rc == 0 else [f"**FAIL** (exit {rc}{', time limit' if rc == 124 else ''}; whole log: "
                                  "logs/generation.log in gpu_logs.tar.gz):", "```", tail(text), "```"]), "")
    if rc:
        report.failed.append("generation")


def part_step_vs_dpo(report: Report, work: Path, model: str, spin_out: Path | None, args, precision: str,
                     timeout: float) -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from step_vs_dpo import dpo_pairs

    title = "### (c2) SPIN step vs TRL DPOTrainer (full fine-tuning, same pairs, micro-batch 8)"
    spin_steps = work / "spin-full-steps.json"
    if spin_out is None or not spin_steps.exists():
        report.add(title, "", "skipped: part (b) did not finish, so there are no SPIN pairs or step times.", "")
        report.failed.append("step_vs_dpo")
        return
    pairs = dpo_pairs(spin_out, work / "pairs.jsonl")
    cfg = spin_config(model, work / "dpo", precision=precision, lora=False, iterations=1, cpu=args.cpu)
    for key in ("plugins", "selfplay"):
        cfg.pop(key)
    cfg.update({"rl": "dpo", "rl_beta": 0.1, "datasets": [{"path": str(work / "pairs.jsonl"), "type": "passthrough"}]})
    (work / "dpo.yml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    rc, text = run_logged([sys.executable, str(TRAIN_WRAPPER), str(work / "dpo.yml"), str(work / "dpo-steps.json")],
                          work / "logs" / "dpo.log", timeout)
    if rc:
        report.add(title, "", f"**FAIL**: the DPO run exited {rc}{' (time limit)' if rc == 124 else ''}; whole log: "
                   "logs/dpo.log in gpu_logs.tar.gz:", "```", tail(text), "```", "")
        report.failed.append("step_vs_dpo")
        return
    spin, dpo = json.loads(spin_steps.read_text()), json.loads((work / "dpo-steps.json").read_text())
    s, d = statistics.median(spin["step_seconds"]), statistics.median(dpo["step_seconds"])
    report.add(title, "", f"{pairs} pairs; median step time over {len(spin['step_seconds'])} / "
               f"{len(dpo['step_seconds'])} steps; peak = the process's peak allocated device memory "
               "(SPIN's includes its generation and scoring passes).", "",
               "| arm | step time (s) | peak memory (GiB) |", "|---|---|---|",
               f"| spin (no reference model) | {s:.3f} | {spin['peak_gib']:.2f} |",
               f"| TRL DPOTrainer (live reference) | {d:.3f} | {dpo['peak_gib']:.2f} |",
               f"| ratio spin / dpo | {s / d:.2f} | {spin['peak_gib'] / max(dpo['peak_gib'], 1e-9):.2f} |", "",
               *(["CPU: no device memory to measure (0 above); the GPU run measures it.", ""] if args.cpu else []))


def part_scoring_precision(report: Report, model: str, args) -> None:
    """Log-probs of the same (prompt, real response) pairs scored in bf16 and in fp32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from axolotl_selfplay.scoring.logprobs import score_responses

    tokenizer = AutoTokenizer.from_pretrained(model)
    prompts, responses = [], []
    for line in DATA.read_text().splitlines():
        messages = json.loads(line)["messages"]
        prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        prompts.append(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        responses.append(tokenizer(messages[-1]["content"] + "<|im_end|>", add_special_tokens=False)["input_ids"])
    scores, ops = {}, []
    for dtype in (torch.float32, torch.bfloat16):
        net = AutoModelForCausalLM.from_pretrained(model, dtype=dtype, attn_implementation="sdpa").to(args.device)
        # op names only (CPU-side records): which SDPA backend the bf16 scoring pass ran
        profiled = dtype == torch.bfloat16
        cpu_ops = [torch.profiler.ProfilerActivity.CPU]
        with torch.profiler.profile(activities=cpu_ops) if profiled else contextlib.nullcontext() as prof:
            scores[dtype] = score_responses(net, prompts, responses, pad_token_id=tokenizer.pad_token_id, batch_size=16)
        if profiled:
            ops = sorted({event.key for event in prof.key_averages() if "attention" in event.key.lower()})
        del net
    diffs = [abs(a - b) for a, b in zip(scores[torch.float32], scores[torch.bfloat16])]
    rel = [d / abs(a) for d, a in zip(diffs, scores[torch.float32])]
    tokens = [len(r) for r in responses]
    bound = UNIT_ROUNDOFF["bf16"]  # per-sequence relative error expected from bf16 activations
    ok = all(math.isfinite(x) for x in scores[torch.bfloat16]) and max(rel) <= bound
    report.add("### (d) scoring pass: bf16 vs fp32 log-probs of the same pairs", "",
               f"{len(prompts)} (prompt, real response) pairs, {min(tokens)}–{max(tokens)} response tokens; "
               f"same weights ({'bf16 checkpoint, upcast for fp32' if args.device != 'cpu' else 'fp32 checkpoint, rounded to bf16'}), "
               "sdpa, length-sorted batches of 16.", "",
               "| | value |", "|---|---|",
               f"| mean lp (fp32) | {statistics.mean(scores[torch.float32]):.3f} |",
               f"| mean lp (bf16) | {statistics.mean(scores[torch.bfloat16]):.3f} |",
               f"| max \\|Δlp\\| (nats) | {max(diffs):.4f} |",
               f"| mean \\|Δlp\\| (nats) | {statistics.mean(diffs):.4f} |",
               f"| max relative \\|Δlp\\|/\\|lp\\| | {max(rel):.2e} (bound: bf16 unit roundoff {bound:.2e}) |",
               f"| SDPA backend of the bf16 pass (profiler) | "
               f"{', '.join(sdpa_backends(ops)) or 'no SDPA operator seen'} "
               f"({', '.join(f'`{op}`' for op in ops) or 'none'}) |", "",
               "**PASS**" if ok else "**FAIL**: bf16 log-probs beyond the bf16 rounding bound or non-finite", "")
    if not ok:
        report.failed.append("scoring")


# The kit's parts, in the order they run ("dpo" compares with "full"'s run: without it, it says so).
PARTS = ("lora", "full", "generation", "dpo", "scoring")
NOT_COVERED = [
    "### Not covered by this run",
    "",
    "- DeepSpeed ZeRO-2/3 and FSDP: one GPU, and DeepSpeed is not in the image (the multi-process CPU runs in "
    "CI cover the sharded code paths: docs/testing.md).",
    "- FlashAttention-2 (`attn_implementation: flash_attention_2`): flash-attn is not in the image; the SDPA "
    "backend named above is what ran.",
    "- vLLM generation (`selfplay.generation.backend: vllm`): vLLM is not in the image (CI tests the protocol "
    "against a CPU stand-in server).",
    "- NCCL and more than one GPU; quantised (4/8-bit) models and bitsandbytes' optimizers (stand-ins here); "
    "`rl: spin_chi2` and `rl: lsp` on a GPU; a real pretrained model (random init here).",
    "",
]


class PartTimeout(Exception):
    pass


def time_limit(seconds: float):
    """For an in-process part: SIGALRM raises PartTimeout after `seconds` (once Python code runs again)."""

    def expire(signum, frame):
        raise PartTimeout(f"time limit of {seconds:.0f} s reached")

    class Limit:
        def __enter__(self):
            signal.signal(signal.SIGALRM, expire)
            signal.setitimer(signal.ITIMER_REAL, max(seconds, 1.0))

        def __exit__(self, *exc):
            signal.setitimer(signal.ITIMER_REAL, 0)
            return False

    return Limit()


def audit(image_list: Path, wheelhouse: Path | None, site: Path | None) -> int:
    """The rehearsal's check that its environment is the GPU machine's: this interpreter's packages are
    exactly the image's list (pinned versions where the list pins), and `site` (the kit's install)
    holds exactly the wheelhouse's wheels. Prints what differs; exit status 1 if anything does."""
    image = read_package_list(image_list.read_text())
    paths = [p for p in sys.path if p and Path(p).is_dir() and (site is None or Path(p) != site)]
    present = {normalize(d.metadata["Name"]): d.version for d in distributions(path=paths)}
    problems = audit_environment(present, image, set())
    if site is not None and wheelhouse is not None:
        wheels = {normalize(w.name.split("-", 1)[0]) for w in wheelhouse.glob("*.whl")}
        installed = {normalize(d.metadata["Name"]) for d in distributions(path=[str(site)])}
        problems += [f"in the kit's install but not a wheelhouse wheel: {n}" for n in sorted(installed - wheels)]
        problems += [f"a wheelhouse wheel not installed by the kit: {n}" for n in sorted(wheels - installed)]
    where = f"{sys.executable}" + (f" + {site}" if site else "")
    if problems:
        print(f"the environment ({where}) is not the GPU image's:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    print(f"environment audit: {where} holds exactly the image's {len(image)} packages"
          + (f" and the wheelhouse's {len(wheels)} wheels" if site is not None and wheelhouse is not None else ""))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="the report goes to OUT/gpu_report.md, the logs to OUT/gpu_logs.tar.gz")
    parser.add_argument("--work", default="outputs/gpu-check", help="models, configs, run logs")
    parser.add_argument("--cpu", action="store_true", help="the CPU rehearsal: a tiny model, fp32")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma-separated subset of {','.join(PARTS)} (default: all; CI's rehearsal runs a "
                        "subset: the install, the import check and the model build always run)")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds for every part together (default 420 on a GPU, 1500 with --cpu)")
    parser.add_argument("--build-model", metavar="DIR", help=argparse.SUPPRESS)  # the model build's subprocess
    parser.add_argument("--audit-env", metavar="IMAGE_LIST", help="check this interpreter's packages against the "
                        "image's list (the rehearsal); with --wheelhouse and --site, the kit's install too")
    parser.add_argument("--wheelhouse", type=Path)
    parser.add_argument("--site", type=Path)
    args = parser.parse_args()
    if args.audit_env:
        return audit(Path(args.audit_env), args.wheelhouse, args.site.resolve() if args.site else None)
    if args.build_model:
        print(build_model(Path(args.build_model), args.cpu))
        return 0
    if not args.out:
        parser.error("--out is required")
    # stopped by gpu_check.sh's backstop: unwind, so run_logged kills the running part's process group
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(124))
    import torch

    args.device = "cpu" if args.cpu else "cuda"
    out = Path(args.out)
    if not args.cpu and not torch.cuda.is_available():
        Report(out / "gpu_report.md", ["## GPU proof kit report", "",
               f"**FAIL**: torch {torch.__version__} sees no CUDA device (use --cpu for the rehearsal)."])
        print("no CUDA device: run with --cpu for the rehearsal", file=sys.stderr)
        return 2
    precision = "fp32" if args.cpu else "bf16"
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    versions = ", ".join(f"{p} {version(p)}" for p in ("axolotl", "trl", "datasets", "transformers", "peft", "accelerate"))
    machine = torch.cuda.get_device_name(0) if not args.cpu else platform.processor() or "CPU"
    report = Report(out / "gpu_report.md", [
        f"## GPU proof kit report ({'CPU rehearsal' if args.cpu else 'GPU'}) — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "", f"Machine: {machine}; Python {platform.python_version()}, torch {torch.__version__} "
        f"(CUDA {torch.version.cuda}), {versions}.", "",
        "Every part's full log: gpu_logs.tar.gz beside this report (`tar -xzf gpu_logs.tar.gz`).", ""])
    # Seconds allowed per part, and for all of them together (`--budget`): with the install (≤ 60 s)
    # and the import check (≤ 30 s) before this, the GPU kit ends within 9 minutes however the parts go,
    # ~5 expected (a 0.5B run takes ~1 min there); the rehearsal's CPU is slower.
    limits = {"model": 90, "lora": 130, "full": 150, "generation": 110, "dpo": 90, "scoring": 60} if not args.cpu else \
        {"model": 180, "lora": 480, "full": 480, "generation": 300, "dpo": 420, "scoring": 180}
    start = time.perf_counter()
    deadline = start + (args.budget or (420 if not args.cpu else 1500))

    def limit(part: str) -> float:
        """The part's own limit, cut to what is left of the budget."""
        return max(1.0, min(limits[part], deadline - time.perf_counter()))

    model_dir = work / "model"
    command = [sys.executable, str(Path(__file__).resolve()), "--build-model", str(model_dir)]
    command += ["--cpu"] if args.cpu else []
    rc, text = run_logged(command, work / "logs" / "model.log", limit("model"))
    if rc:
        report.add(f"**FAIL**: building the model (exit {rc}{', time limit' if rc == 124 else ''}; whole log: "
                   "logs/model.log in gpu_logs.tar.gz):", "```", tail(text), "```", "", *NOT_COVERED)
        report.failed.append("model")
        pack_logs(work, out)
        return 1
    report.add(f"Model: {text.strip().splitlines()[-1]} (random init, saved {'bf16' if not args.cpu else 'fp32'}); "
               "tokenizer: the tiny local byte-level BPE (its ids use the first rows of the embedding; the full "
               "vocabulary still sets the LM head's cost).", "")
    model = str(model_dir)

    def guarded(part: str, call):
        """Run one part; a crash is reported and the next part still runs; the logs are packed after it."""
        try:
            return call()
        except Exception:  # noqa: BLE001 (any failure goes into the report)
            report.add(f"**FAIL** in part {part}:", "```", tail(traceback.format_exc()), "```", "")
            report.failed.append(part)
            return None
        finally:
            pack_logs(work, out)

    def scoring():
        with time_limit(limit("scoring")):
            part_scoring_precision(report, model, args)

    parts = set(args.parts.split(","))
    unknown = parts - set(PARTS)
    if unknown:
        raise SystemExit(f"--parts: unknown {sorted(unknown)}; choose from {','.join(PARTS)}")
    skipped = [part for part in PARTS if part not in parts]
    if skipped:
        report.add(f"Parts not run this time (`--parts`): {', '.join(skipped)}.", "")
    if "lora" in parts:
        guarded("lora", lambda: part_spin(report, work, model, lora=True, args=args, precision=precision,
                                          timeout=limit("lora")))
    spin_full = None
    if "full" in parts:
        spin_full = guarded("full", lambda: part_spin(report, work, model, lora=False, args=args,
                                                      precision=precision, timeout=limit("full")))
    if "generation" in parts:
        guarded("generation", lambda: part_generation(report, work, model, args, limit("generation")))
    if "dpo" in parts:
        guarded("dpo", lambda: part_step_vs_dpo(report, work, model, spin_full, args, precision, limit("dpo")))
    if "scoring" in parts:
        guarded("scoring", scoring)
    report.add(*NOT_COVERED)
    report.add(f"Total {time.perf_counter() - start:.0f} s (after the install and the import check). "
               + ("**All parts passed.**" if not report.failed else f"**Failed: {', '.join(report.failed)}.**"))
    print(report.path.read_text())
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
