"""The GPU proof kit's driver (run by scripts/gpu_check.sh, which installs the wheelhouse first).

    python scripts/gpu_check.py --out DIR [--cpu] [--work DIR]

Builds offline a random-init model (GPU: Qwen2.5-0.5B-shaped, tied embeddings, 151,936-row
vocabulary; --cpu: a tiny Qwen2) with the tiny local tokenizer, then runs, each part under its
own time limit so a slow part cannot eat the rest:
  (a) `rl: spin` through `axolotl train`, LoRA, bf16, SDPA, 2 iterations: the first loss of
      each iteration is ln 2 within the precision's tolerance (`ln2_tolerance`), every logged
      value finite;
  (b) the same with full fine-tuning, through Axolotl's train entry point in-process
      (scripts/gpu_check_train.py) to time every step and read the peak device memory;
  (c) opponent generation throughput, ours vs official-style (benchmarks/generation_throughput.py),
      and the SPIN step vs TRL's DPOTrainer on the pairs (b) trained on: step time, peak memory;
  (d) bf16 vs fp32 agreement of the scoring pass (log-probs of the same pairs).
Writes ONE markdown report, DIR/gpu_report.md, after every part (a crash leaves a partial report).
Exit status 0 only when every part passed.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from importlib.metadata import version
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
    """Run a command, its output to `log`; returns (exit status, output). 124: timed out."""
    try:
        proc = subprocess.run(command, capture_output=True, text=True, env=env_for_runs(), timeout=timeout, check=False)
        out, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode(errors="replace") + (exc.stderr or b"").decode(errors="replace")
        rc = 124
    log.write_text(out)
    return rc, out


def build_model(path: Path, cpu: bool) -> str:
    """A random-init Qwen2 with the tiny local tokenizer (token ids < 600 of a big embedding)."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from axolotl_selfplay.cli import build_tiny_model

    if (path / "model.safetensors").exists():
        return "reused"
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
    return f"Qwen2 {shape['hidden_size']}×{shape['num_hidden_layers']}, vocab {shape['vocab_size']}, tied, {params / 1e6:.1f}M parameters"


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
        "dataset_prepared_path": str(out.parent / f"{out.name}-prepared"),
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
    rc, text = run_logged(command, work / f"spin-{name}.log", timeout)
    wall = time.perf_counter() - start
    rows = parse_train_logs(text)
    problems = ([f"exit status {rc}{' (time limit)' if rc == 124 else ''}; log tail:\n```\n{text[-2500:]}\n```"]
                if rc else []) + check_spin_logs(rows, 0.1, precision, 2)
    title = f"(a) rl: spin, LoRA r16, {precision}, sdpa, `axolotl train`" if lora else \
        f"(b) rl: spin, full fine-tuning, {precision}, sdpa, Axolotl's train entry point"
    shown = " ".join(Path(part).name if "/" in part else part for part in command)
    lines = [f"### {title}", "", f"`{shown}`: {len(rows)} logged steps, wall {wall:.0f} s.", "",
             "| iteration | first loss | ln 2 | tolerance | logps/real | logps/generated |", "|---|---|---|---|---|---|"]
    for i, row in enumerate(first_losses_per_iteration(rows)):
        tol = ln2_tolerance(0.1, row["logps/real"], row["logps/generated"], precision)
        lines.append(f"| {i} | {row['loss']:.4f} | {LN2:.4f} | ±{tol:.4f} | {row['logps/real']:.1f} | {row['logps/generated']:.1f} |")
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
               "--device", args.device, "--prompts", "32" if args.cpu else "128", "--repeats", "1",
               "--batch-size", "16" if args.cpu else "32", "--max-new-tokens", "16" if args.cpu else "64",
               "--results", str(work / "generation_results.md")]
    if not args.cpu:
        command += ["--dtype", "bfloat16"]
    rc, text = run_logged(command, work / "generation.log", timeout)
    head = [line for line in text.splitlines() if line.startswith(tuple("0123456789"))]  # "128 prompts of ..."
    report.add("### (c1) opponent generation throughput: ours vs official-style", "",
               "Random-init model: it rarely ends a turn, so nearly every response runs to max_new_tokens; "
               "the throughput ratio is the result, the efficiency column is not (see benchmarks/RESULTS.md).", "",
               *(head[:1] + [""] if head else []),
               *([line for line in text.splitlines() if line.startswith("|")]
                 + [""] + [line for line in text.splitlines() if line.lower().startswith("identical")]
                 if rc == 0 else [f"**FAIL** (exit {rc}):", "```", text[-2500:], "```"]), "")
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
                          work / "dpo.log", timeout)
    if rc:
        report.add(title, "", f"**FAIL**: the DPO run exited {rc}:", "```", text[-2500:], "```", "")
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

    from axolotl_selfplay.generation import score_responses

    tokenizer = AutoTokenizer.from_pretrained(model)
    prompts, responses = [], []
    for line in DATA.read_text().splitlines():
        messages = json.loads(line)["messages"]
        prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        prompts.append(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        responses.append(tokenizer(messages[-1]["content"] + "<|im_end|>", add_special_tokens=False)["input_ids"])
    scores = {}
    for dtype in (torch.float32, torch.bfloat16):
        net = AutoModelForCausalLM.from_pretrained(model, dtype=dtype, attn_implementation="sdpa").to(args.device)
        scores[dtype] = score_responses(net, prompts, responses, pad_token_id=tokenizer.pad_token_id, batch_size=16)
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
               f"| max relative \\|Δlp\\|/\\|lp\\| | {max(rel):.2e} (bound: bf16 unit roundoff {bound:.2e}) |", "",
               "**PASS**" if ok else "**FAIL**: bf16 log-probs beyond the bf16 rounding bound or non-finite", "")
    if not ok:
        report.failed.append("scoring")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the report goes to OUT/gpu_report.md")
    parser.add_argument("--work", default="outputs/gpu-check", help="models, configs, run logs")
    parser.add_argument("--cpu", action="store_true", help="the CPU rehearsal: a tiny model, fp32")
    args = parser.parse_args()
    import torch

    args.device = "cpu" if args.cpu else "cuda"
    if not args.cpu and not torch.cuda.is_available():
        Report(Path(args.out) / "gpu_report.md", ["## GPU proof kit report", "",
               f"**FAIL**: torch {torch.__version__} sees no CUDA device (use --cpu for the rehearsal)."])
        print("no CUDA device: run with --cpu for the rehearsal", file=sys.stderr)
        return 2
    precision = "fp32" if args.cpu else "bf16"
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    versions = ", ".join(f"{p} {version(p)}" for p in ("axolotl", "trl", "datasets", "transformers", "peft", "accelerate"))
    machine = torch.cuda.get_device_name(0) if not args.cpu else platform.processor() or "CPU"
    report = Report(Path(args.out) / "gpu_report.md", [
        f"## GPU proof kit report ({'CPU rehearsal' if args.cpu else 'GPU'}) — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "", f"Machine: {machine}; Python {platform.python_version()}, torch {torch.__version__} "
        f"(CUDA {torch.version.cuda}), {versions}.", ""])
    # seconds allowed per subprocess part: with the model build, scoring and the install the GPU
    # total stays under 8 minutes (a 0.5B run takes ~1 min there); the rehearsal's CPU is slower
    budget = {"lora": 140, "full": 140, "generation": 60, "dpo": 90} if not args.cpu else \
        {"lora": 240, "full": 240, "generation": 120, "dpo": 240}
    start = time.perf_counter()
    model_dir = work / "model"
    try:
        described = build_model(model_dir, args.cpu)
        report.add(f"Model: {described} (random init, saved {'bf16' if not args.cpu else 'fp32'}); tokenizer: the "
                   "tiny local byte-level BPE (its ids use the first rows of the embedding; the full vocabulary "
                   "still sets the LM head's cost).", "")
    except Exception:  # noqa: BLE001 (any failure goes into the report)
        report.add("**FAIL**: building the model:", "```", traceback.format_exc()[-2500:], "```")
        report.failed.append("model")
        return 1
    model = str(model_dir)

    def guarded(part: str, call):
        """Run one part; a crash is reported and the next part still runs."""
        try:
            return call()
        except Exception:  # noqa: BLE001 (any failure goes into the report)
            report.add(f"**FAIL** in part {part}:", "```", traceback.format_exc()[-2500:], "```", "")
            report.failed.append(part)
            return None

    guarded("lora", lambda: part_spin(report, work, model, lora=True, args=args, precision=precision,
                                      timeout=budget["lora"]))
    spin_full = guarded("full", lambda: part_spin(report, work, model, lora=False, args=args, precision=precision,
                                                  timeout=budget["full"]))
    guarded("generation", lambda: part_generation(report, work, model, args, budget["generation"]))
    guarded("dpo", lambda: part_step_vs_dpo(report, work, model, spin_full, args, precision, budget["dpo"]))
    guarded("scoring", lambda: part_scoring_precision(report, model, args))
    report.add(f"Total {time.perf_counter() - start:.0f} s. "
               + ("**All parts passed.**" if not report.failed else f"**Failed: {', '.join(report.failed)}.**"))
    print(report.path.read_text())
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
