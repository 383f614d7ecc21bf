"""Axolotl's train entry point in-process (what `accelerate launch -m axolotl.cli.train` runs on
one rank), timing every optimizer step and recording the peak device memory (GPU proof kit).

    python scripts/gpu_check_train.py CONFIG.yml STEPS.json

STEPS.json: {"step_seconds": [...], "peak_gib": float, "attention_ops": [...], "fp32_first_steps": [...]}
- each step timed from on_step_begin to on_step_end with the device synchronised, so generation and
  scoring at an iteration's start are not counted as step time; the peak
  (torch.cuda.max_memory_allocated) covers the whole run;
- attention_ops: the scaled-dot-product-attention operators the profiler saw in step 2 (which SDPA
  backend the training forward and backward really ran: gpu_check.py names it);
- fp32_first_steps (`rl: spin` only): for the first training batch of each self-play iteration, the
  loss the run computed and the same batch's loss in fp32 (an fp32 copy of the weights, on the same
  device), with each pair's |lp − lp_fp32| of the policy's log-probs: gpu_check.py checks the first
  loss against the fp32 one within the tolerance those errors allow (`ln2_tolerance_fp32`).
"""

import json
import math
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile
from transformers import AutoModelForCausalLM, Trainer, TrainerCallback

import axolotl_selfplay.spin.trainer as spin_trainer
from axolotl_selfplay.losses import mean_over_candidates, spin_loss
from axolotl_selfplay.scoring.head import unwrap
from axolotl_selfplay.scoring.logprobs import model_token_logps

PROFILED_STEP = 2  # step 1 may include one-off work (allocator growth, autotuning)


def fp32_first_step(trainer, model, captured: dict, loss: torch.Tensor, logps: torch.Tensor) -> dict:
    """The same batch's SPIN loss in fp32: an fp32 copy of the weights (θ = θ_t at an iteration's first
    step), the policy's log-probs in the run's own padded layout and the reference's one sequence at a
    time (another layout, as the scoring pass's is), so fp32's own margin shows how exact it is."""
    inner = unwrap(model)
    batch = captured["batch"]
    device = batch["input_ids"].device
    # a fresh fp32 model: a copy of the training one would keep Accelerate's autocast wrapper
    with torch.device(device):
        model32 = AutoModelForCausalLM.from_config(inner.config, dtype=torch.float32).eval()
    loaded = model32.load_state_dict({k: v.float() for k, v in inner.state_dict().items()}, strict=False)
    missing = [k for k in loaded.missing_keys if "lm_head" not in k]  # tied to the embedding
    if missing or loaded.unexpected_keys:
        raise RuntimeError(f"fp32 copy: missing {missing}, unexpected {loaded.unexpected_keys}")
    with torch.no_grad(), torch.autocast(device.type, enabled=False):
        per_token, _ = model_token_logps(model32, batch["input_ids"], batch["attention_mask"], batch["labels"])
        lp32 = per_token.sum(-1)
        ref32 = []
        for row in range(batch["input_ids"].shape[0]):
            keep = batch["attention_mask"][row].bool()
            single, _ = model_token_logps(model32, batch["input_ids"][row][keep][None],
                                          batch["attention_mask"][row][keep][None], batch["labels"][row][keep][None])
            ref32.append(single.sum())
        ref32 = torch.stack(ref32)
    del model32
    rows = len(captured["examples"])
    real_row = batch["real_row"]
    pairs = real_row.numel()
    losses32, _, _ = spin_loss(lp32[real_row], lp32[rows:], ref32[real_row], ref32[rows:], beta=captured["beta"])
    loss32 = mean_over_candidates(losses32, captured["dropped"], math.log(2))
    errors = (logps.detach().float() - lp32).abs()
    margins32 = (lp32[real_row] - ref32[real_row]) - (lp32[rows:] - ref32[rows:])
    return {
        "loss": loss.item(), "loss_fp32": loss32.item(), "beta": captured["beta"], "pairs": pairs,
        "dropped": captured["dropped"],
        "pair_errors": [[errors[real_row[p]].item(), errors[rows + p].item()] for p in range(pairs)],
        "max_abs_margin_fp32": margins32.abs().max().item() if pairs else 0.0,
    }


def capture_first_steps(trainer, records: list, save) -> None:
    """Wrap a SPIN trainer's loss: on the first training batch of each iteration, capture the batch,
    β and the dropped (identical) pairs from the module's own helpers, then run the fp32 check."""
    original = trainer._selfplay_loss
    seen: set[int] = set()

    def loss_with_check(model, store, examples, train_eval):
        # the config is read here: Axolotl sets it after the trainer is built
        if train_eval != "train" or store.iteration in seen or trainer.selfplay_config.type != "spin":
            return original(model, store, examples, train_eval)
        seen.add(store.iteration)
        captured = {"examples": examples, "beta": trainer.selfplay_config.beta}
        helpers = {name: getattr(spin_trainer, name) for name in ("pair_batch", "mean_over_candidates")}

        def pair_batch(*args, **kwargs):
            captured["batch"] = helpers["pair_batch"](*args, **kwargs)
            return captured["batch"]

        def mean_over(losses, dropped, constant):
            captured["dropped"] = dropped
            return helpers["mean_over_candidates"](losses, dropped, constant)

        spin_trainer.pair_batch, spin_trainer.mean_over_candidates = pair_batch, mean_over
        try:
            loss, outputs = original(model, store, examples, train_eval)
        finally:
            spin_trainer.pair_batch, spin_trainer.mean_over_candidates = helpers.values()
        started = time.perf_counter()
        device = outputs["logps"].device
        captured["batch"] = {k: v.to(device) for k, v in captured["batch"].items()}
        record = fp32_first_step(trainer, model, captured, loss, outputs["logps"])
        records.append({"iteration": store.iteration, "seconds": time.perf_counter() - started, **record})
        save()
        return loss, outputs

    trainer._selfplay_loss = loss_with_check


def main(config: str, steps_file: str) -> None:
    times: list[float] = []
    result = {"step_seconds": times, "peak_gib": 0.0, "attention_ops": [], "fp32_first_steps": []}

    def sync() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def save() -> None:
        result["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
        with open(steps_file, "w") as f:
            json.dump(result, f)

    class StepTimer(TrainerCallback):
        profiler = None
        checked_before = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step + 1 == PROFILED_STEP:
                # op names only (CPU-side records): which SDPA backend ran, without CUPTI's overhead
                self.profiler = profile(activities=[ProfilerActivity.CPU])
                self.profiler.__enter__()
            sync()
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            sync()
            # the fp32 check inside this step, if any, is the kit's work, not the step's
            checked = sum(r["seconds"] for r in result["fp32_first_steps"]) - self.checked_before
            times.append(time.perf_counter() - self.started - checked)
            self.checked_before += checked
            if self.profiler is not None:
                self.profiler.__exit__(None, None, None)
                result["attention_ops"] = sorted(
                    {event.key for event in self.profiler.key_averages() if "attention" in event.key.lower()})
                self.profiler = None
            save()

    original_init = Trainer.__init__

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.add_callback(StepTimer())
        if hasattr(self, "_selfplay_loss"):  # a self-play trainer; `rl: spin` only, checked at the first batch
            capture_first_steps(self, result["fp32_first_steps"], save)

    Trainer.__init__ = init
    from axolotl.cli.train import do_cli

    do_cli(config=config)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
