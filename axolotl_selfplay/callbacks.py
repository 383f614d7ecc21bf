"""OpponentGenerationCallback: makes θ_t the opponent at the start of each iteration.

At the first epoch of iteration t (epochs are grouped E per iteration) it
1. generates y' for every training prompt with the current policy θ_t
   (each rank its shard of the prompts; results gathered so every rank holds
   the whole store) — in the training process, or with `generation.backend:
   vllm` on a vLLM server that first receives θ_t's weights,
2. in the same no-grad pass scores lp_θt(y|x) and lp_θt(y'|x), including the
   older opponents kept by `history`, so no reference model is ever held,
3. writes the iteration's pairs to `output_dir/selfplay/iter_{t}.jsonl`.

The trainer saves the store beside every checkpoint. On resume it loads that
store first, and this callback sees the iteration is already in place and
does not regenerate (regenerating would make the half-trained model the
opponent).
"""

from __future__ import annotations

import math
import os

from transformers import TrainerCallback

from . import get_logger
from .generation import generate_responses, pad_for_lockstep, score_responses
from .opponent import USABLE, Opponent, classify
from .reference import is_peft_model

LOG = get_logger(__name__)


def iteration_of_epoch(epoch: float, epochs_per_iteration: int) -> int:
    # state.epoch is a float (1.5 when resuming mid-epoch); the tiny offset
    # absorbs float error in values like 2.9999999.
    return int(math.floor(epoch + 1e-6)) // epochs_per_iteration


class OpponentGenerationCallback(TrainerCallback):
    def __init__(self, trainer):
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kwargs):
        sp = self.trainer.selfplay_config
        iteration = iteration_of_epoch(state.epoch or 0.0, sp.epochs_per_iteration)
        if iteration >= sp.iterations:
            return
        if self.trainer.opponents.iteration != iteration:
            refresh_opponents(self.trainer, iteration)


def refresh_opponents(trainer, iteration: int) -> None:
    """Generate and score iteration `iteration`'s opponents; install them on all ranks."""
    from accelerate.utils import gather_object
    from trl.models import unwrap_model_for_generation

    sp = trainer.selfplay_config
    gen = sp.generation
    store = trainer.opponents
    accelerator = trainer.accelerator
    rank, world = accelerator.process_index, accelerator.num_processes
    shard = list(range(rank, len(store), world))
    prompts = [store.prompts[i] for i in shard]
    reals = [store.reals[i] for i in shard]
    tokenizer = trainer.processing_class
    pad_id = trainer.pad_token_id
    eos_ids = trainer.eos_token_ids

    # A fresh run's first refresh: the policy still is θ_0.
    at_start = trainer.state.global_step == 0 and store.iteration == -1
    # ZeRO-3 with `ds3_gather_for_generation: false`: weights stay sharded, so every
    # generate/forward is a collective and all ranks must run the same batches.
    ds_plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    lockstep = world > 1 and not gen.ds3_gather_for_generation and getattr(ds_plugin, "zero_stage", 0) == 3
    if lockstep and sp.kl_to_base > 0 and not is_peft_model(accelerator.unwrap_model(trainer.model_wrapped)):
        raise ValueError(
            "`selfplay.kl_to_base` with full fine-tuning under ZeRO-3 needs the gathered weights: "
            "set `selfplay.generation.ds3_gather_for_generation: true` (or use LoRA)."
        )
    if lockstep:
        LOG.info("self-play: generating with sharded ZeRO-3 weights (synced_gpus, lockstep batches)")

    def pad(items, filler):
        return pad_for_lockstep(items, filler, accelerator) if lockstep else items

    seed = (trainer.args.seed + 1_000_003 * (iteration + 1) + rank) % 2**31
    sampling = {
        "eos_token_ids": eos_ids,
        "max_new_tokens": gen.max_new_tokens,
        "do_sample": gen.do_sample,
        "temperature": gen.temperature,
        "top_p": gen.top_p,
        "seed": seed,
    }
    server = trainer.vllm_server
    if server is not None:
        # The vLLM server samples; θ_t's weights go there once per iteration.
        with unwrap_model_for_generation(trainer.model_wrapped, accelerator) as model:
            server.push_weights(model)
        generated = server.generate(prompts, n=1, **sampling)

    with unwrap_model_for_generation(
        trainer.model_wrapped, accelerator, gather_deepspeed3_params=gen.ds3_gather_for_generation
    ) as model:
        if server is None:
            generated = generate_responses(
                model,
                pad(prompts, store.prompts[0]),
                pad_token_id=pad_id,
                batch_size=gen.batch_size,
                show_progress=accelerator.is_main_process,
                synced_gpus=lockstep,
                **sampling,
            )[: len(prompts)]
        pools, new = [], []
        for i, real, (tokens, truncated) in zip(shard, reals, generated):
            opponent = Opponent(iteration, tokens, truncated, classify(tokens, real, eos_ids))
            pools.append(store.retained(i, iteration) + [opponent])
            new.append(opponent)
        # Score y (once) and every pooled y' under θ_t; one flat batched pass.
        flat = [(k, o) for k, pool in enumerate(pools) for o in pool if o.status == USABLE]
        scores = score_responses(
            model,
            pad(prompts + [prompts[k] for k, _ in flat], store.prompts[0]),
            pad(reals + [o.tokens for _, o in flat], store.reals[0]),
            pad_token_id=pad_id,
            batch_size=gen.batch_size,
            show_progress=accelerator.is_main_process,
        )
        ref_real = scores[: len(shard)]
        for (_, opponent), score in zip(flat, scores[len(shard) :]):
            opponent.ref_logp = score
        base_real = [store.base_logp_real[i] for i in shard]
        if sp.kl_to_base > 0:
            base_real = score_under_starting_model(
                trainer, model, prompts, reals, ref_real, base_real, new, at_start, pad
            )

    part = [(shard, ref_real, base_real, pools)]
    gathered = gather_object(part) if world > 1 else part
    all_ref_real = [0.0] * len(store)
    all_base_real: list[float | None] = [None] * len(store)
    all_pools: list[list[Opponent]] = [[] for _ in range(len(store))]
    for part_shard, part_ref, part_base, part_pools in gathered:
        for i, ref, base, pool in zip(part_shard, part_ref, part_base, part_pools):
            all_ref_real[i] = ref
            all_base_real[i] = base
            all_pools[i] = pool
    store.set_iteration(iteration, all_ref_real, all_pools, all_base_real)

    if accelerator.is_main_process:
        path = os.path.join(trainer.args.output_dir, "selfplay", f"iter_{iteration}.jsonl")
        store.export_jsonl(path, lambda ids: tokenizer.decode(ids, skip_special_tokens=False))
    trainer.log_refresh_summary()


def score_under_starting_model(trainer, model, prompts, reals, ref_real, base_real, new, at_start, pad):
    """lp_θ0 of the real responses (once per run) and of this iteration's new y'.

    θ_0 never changes, so older pooled opponents keep the value computed when
    they were generated. At the very start of a fresh run θ_t = θ_0 and the θ_t
    scores are reused; the starting weights are snapshotted for later iterations.
    """
    usable = [(k, o) for k, o in enumerate(new) if o.status == USABLE]  # k: position in the shard
    if at_start:
        trainer.starting_model.snapshot(model)
        for _, opponent in usable:
            opponent.base_logp = opponent.ref_logp
        return list(ref_real)
    missing = [k for k, lp in enumerate(base_real) if lp is None]
    store = trainer.opponents
    with trainer.starting_model.active(model):
        scores = score_responses(
            model,
            pad([prompts[k] for k in missing] + [prompts[k] for k, _ in usable], store.prompts[0]),
            pad([reals[k] for k in missing] + [o.tokens for _, o in usable], store.reals[0]),
            pad_token_id=trainer.pad_token_id,
            batch_size=trainer.selfplay_config.generation.batch_size,
        )
    base_real = list(base_real)
    for k, score in zip(missing, scores):
        base_real[k] = score
    for (_, opponent), score in zip(usable, scores[len(missing) :]):
        opponent.base_logp = score
    return base_real
