"""Run Axolotl's training entry point in-process (what `accelerate launch -m
axolotl.cli.train` runs on each rank), with two test probes:

--hide-selfplay   remove axolotl-selfplay's `axolotl.plugins` entry point, i.e. train
                  as if the package were not installed (Axolotl >= 0.20)
--param-report F  write {parameter name: moved?} for every trainable parameter,
                  comparing the values when `Trainer.train` starts and ends
--probe-attn F    write the attention implementation of every model that the
                  self-play generation and scoring passes ran
--cpu-bf16        let `bf16: true` train on a CPU: transformers refuses bf16 without
                  `use_cpu`, a TrainingArguments field Axolotl never sets
--kill-at P:N[@R] SIGKILL the run at the N-th time (1-based, counted in this process) it
                  reaches point P (on rank R only, default every rank), as a preemption or
                  the OOM killer would: `step` (a training step starts), `store` (the SPIN
                  opponent store's save starts, inside a checkpoint save), `trainer-state`
                  (HF writes trainer_state.json: half of it is written, then the kill),
                  `rotate` (HF starts deleting older checkpoints). A single process kills
                  its whole process group; under torchrun only the rank itself dies and
                  torchrun takes the others down.

Prints `PLUGINS=[...]` (the plugins Axolotl registered) at the end.
"""

import argparse
import dataclasses
import json
import sys


def hide_selfplay_entry_point():
    from importlib import metadata

    original = metadata.entry_points

    def entry_points(**kwargs):
        points = original(**kwargs)
        if kwargs.get("group") == "axolotl.plugins":
            return metadata.EntryPoints([p for p in points if not p.value.startswith("axolotl_selfplay")])
        return points

    metadata.entry_points = entry_points


def report_params(path):
    import torch
    from transformers import Trainer

    original_train = Trainer.train

    def train(self, *args, **kwargs):
        before = {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}
        result = original_train(self, *args, **kwargs)
        after = dict(self.model.named_parameters())
        moved = {n: not torch.equal(before[n], after[n].detach()) for n in before}
        with open(path, "w") as f:
            json.dump(moved, f)
        return result

    Trainer.train = train


def probe_attention(path):
    from axolotl_selfplay.lsp import rewards
    from axolotl_selfplay.lsp import rollout as lsp
    from axolotl_selfplay.sampling import sampler
    from axolotl_selfplay.spin import rollout as spin

    seen = []

    def probe(fn):
        def wrapper(model, *args, **kwargs):
            seen.append([fn.__name__, model.config._attn_implementation, type(model).__name__])
            with open(path, "w") as f:
                json.dump(seen, f)
            return fn(model, *args, **kwargs)

        return wrapper

    # the names the Sampler and the rollouts call
    sampler.generate_responses = probe(sampler.generate_responses)
    spin.score_responses = probe(spin.score_responses)
    # rl: lsp: the judge's generations, reference scoring, the reward model
    lsp.generate_responses = probe(lsp.generate_responses)
    lsp.score_response_tokens = probe(lsp.score_response_tokens)
    score = rewards.RewardModel.__call__

    def reward_model_call(self, *args, **kwargs):
        seen.append(["reward_model", self.model.config._attn_implementation, type(self.model).__name__])
        with open(path, "w") as f:
            json.dump(seen, f)
        return score(self, *args, **kwargs)

    rewards.RewardModel.__call__ = reward_model_call


def kill_at(spec):
    import os
    import signal

    point, _, rest = spec.partition(":")
    count, _, rank = rest.partition("@")
    if rank and os.environ.get("RANK", "0") != rank:
        return
    calls = {"n": 0}

    def kill():
        sys.stdout.flush()
        sys.stderr.flush()
        if "LOCAL_RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            os.kill(os.getpid(), signal.SIGKILL)
        os.killpg(os.getpgid(0), signal.SIGKILL)

    def reached():
        calls["n"] += 1
        return calls["n"] == int(count)

    def before(owner, name, on_kill=None):
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            if reached():
                if on_kill is not None:
                    on_kill(*args, **kwargs)
                kill()
            return original(*args, **kwargs)

        setattr(owner, name, wrapper)

    from transformers import Trainer, TrainerState

    if point == "step":
        before(Trainer, "training_step")
    elif point == "store":
        from axolotl_selfplay.spin.store import OpponentStore

        before(OpponentStore, "save")
    elif point == "trainer-state":
        def torn(state, path):
            text = json.dumps(dataclasses.asdict(state), indent=2, sort_keys=True)
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(text[: len(text) // 2])

        before(TrainerState, "save_to_json", torn)
    elif point == "rotate":
        from transformers import trainer

        before(trainer, "rotate_checkpoints")  # the name Trainer._save_checkpoint calls
    else:
        raise SystemExit(f"--kill-at: unknown point {point!r}")


def allow_cpu_bf16():
    from transformers import training_args

    # transformers' own check (bf16 needs a GPU unless `use_cpu`); torch autocasts to
    # bf16 on CPU fine, and accelerate does so when no GPU is present
    training_args.is_torch_bf16_gpu_available = lambda: True


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("--hide-selfplay", action="store_true")
    parser.add_argument("--param-report")
    parser.add_argument("--probe-attn")
    parser.add_argument("--cpu-bf16", action="store_true")
    parser.add_argument("--kill-at")
    args = parser.parse_args()
    if args.hide_selfplay:
        hide_selfplay_entry_point()
    if args.param_report:
        report_params(args.param_report)
    if args.probe_attn:
        probe_attention(args.probe_attn)
    if args.kill_at:
        kill_at(args.kill_at)
    from axolotl.cli.train import do_cli

    if args.cpu_bf16:
        allow_cpu_bf16()
    from axolotl.integrations.base import PluginManager

    do_cli(config=args.config)
    print("PLUGINS=" + json.dumps(list(PluginManager.get_instance().plugins)))


if __name__ == "__main__":
    sys.exit(main())
