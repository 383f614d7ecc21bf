"""SPIN's rollout: at the start of iteration t the current policy θ_t becomes the opponent.

`OpponentRollout(model, iteration)`, for the examples of one OpponentStore (the
training rows; a second rollout serves the evaluation rows):
1. samples y' for every prompt with θ_t (each rank its round-robin shard of the
   prompts), through the `Sampler` (`hf`: the training model; `vllm`: the
   server, which first receives θ_t's weights), except the y' given by
   `selfplay.opponents_from` at iteration 0 (data/opponents_from.py),
2. scores lp_θt(y|x) and lp_θt(y'|x) in the same no-grad pass, the older
   opponents kept by `history` included, so no reference model is ever held,
3. with `kl_to_base` > 0 also scores the real and the new responses under θ_0,
4. gathers every rank's metadata (lengths, statuses, log-probs), so each rank
   returns the same `IterationOpponents`; the tokens of y' stay on the rank that
   generated them, which holds them in the store (store.py).

The trainer installs the result in its OpponentStore (trainer.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from accelerate.utils import gather_object
from trl.models import unwrap_model_for_generation

from .. import get_logger
from ..distributed import pad_for_lockstep, sharded_generation
from ..modeling import is_peft_model
from ..sampling.sampler import Sampler
from ..sampling.spec import SamplingSpec, cut_at_eos
from ..scoring.logprobs import score_responses
from ..scoring.starting_model import StartingModel
from .store import USABLE, Opponent, OpponentStore, classify, is_empty

LOG = get_logger(__name__)


@dataclass
class IterationOpponents:
    """One iteration's opponents and reference log-probs for every example."""

    iteration: int
    ref_logp_real: list[float]  # lp_θt(y|x)
    base_logp_real: list[float | None]  # lp_θ0(y|x); None without kl_to_base
    pools: list[list[Opponent]]  # the new y' and the retained older ones, all scored under θ_t (tokens: this rank's shard only)


class OpponentRollout:
    def __init__(
        self,
        store: OpponentStore,
        sampler: Sampler,
        spec: SamplingSpec,
        accelerator,
        starting_model: StartingModel,
        *,
        kl_to_base: float,
        batch_size: int,
        gather_deepspeed3_params: bool,
        seed: int,
    ):
        self.store = store
        self.sampler = sampler
        self.spec = spec
        self.accelerator = accelerator
        self.starting_model = starting_model
        self.kl_to_base = kl_to_base
        self.batch_size = batch_size
        self.gather = gather_deepspeed3_params
        self.seed = seed

    def __call__(
        self, model_wrapped, iteration: int, at_start: bool, supplied: dict[int, list[int]] | None = None
    ) -> IterationOpponents:
        """`at_start`: the first refresh of a fresh run, when the policy still is θ_0.
        `supplied`: y' given for some examples (`selfplay.opponents_from`), scored like
        sampled ones; only the other examples are sampled."""
        accelerator, store = self.accelerator, self.store
        rank, world = accelerator.process_index, accelerator.num_processes
        shard = store.shard()  # round-robin: the examples whose tokens this rank holds
        prompts = [list(store.prompts[i]) for i in shard]
        reals = [list(store.reals[i]) for i in shard]
        # any prompt and response pad a rank's lists in lockstep (their results are dropped)
        filler_prompt, filler_real = (prompts[0], reals[0]) if shard else ([self.sampler.pad_token_id],) * 2
        supplied = supplied or {}
        to_sample = [k for k, i in enumerate(shard) if i not in supplied]  # positions in the shard
        # ZeRO-3 with sharded weights: every forward is a collective, so all ranks run
        # the same number of batches; the padded results are dropped.
        lockstep = sharded_generation(accelerator, model_wrapped, self.gather)
        if not self.gather:
            self._check_sharded_scoring(model_wrapped)  # config.py refuses this before the model loads
        if lockstep:
            LOG.info("self-play: generating with sharded weights (synced_gpus, lockstep batches)")

        def pad(items, filler):
            return pad_for_lockstep(items, filler, accelerator) if lockstep else items

        # Own seeded RNG stream per (seed, iteration, rank): reproducible, training RNG untouched.
        seed = (self.seed + 1_000_003 * (iteration + 1) + rank) % 2**31
        if self.sampler.on_server:
            # θ_t's weights go to the vLLM server once per iteration (gathered under ZeRO-3).
            with unwrap_model_for_generation(model_wrapped, accelerator) as model:
                self.sampler.sync_weights(model, version=iteration)
        with unwrap_model_for_generation(model_wrapped, accelerator, gather_deepspeed3_params=self.gather) as model:
            to_prompt = [prompts[k] for k in to_sample]
            if not self.sampler.on_server:
                to_prompt = pad(to_prompt, filler_prompt)
            samples = (
                self.sampler.sample(
                    model,
                    to_prompt,
                    self.spec,
                    seed=seed,
                    synced_gpus=lockstep,
                    show_progress=accelerator.is_main_process,
                    description="self-play: generating opponents",
                )
                if to_prompt
                else []
            )
            responses = dict(zip(to_sample, samples))  # the lockstep padding's samples fall off
            for k, i in enumerate(shard):
                if i in supplied:  # cut at the end of turn, as sampling does
                    responses[k] = cut_at_eos(list(supplied[i]), self.sampler.eos_token_ids)
            pools, new = [], []
            for k, (i, real) in enumerate(zip(shard, reals)):
                tokens, truncated = responses[k]
                opponent = Opponent(
                    iteration,
                    tokens,
                    truncated,
                    classify(tokens, real),
                    empty=is_empty(tokens, self.sampler.eos_token_ids),
                )
                pools.append(store.retained(i, iteration) + [opponent])
                new.append(opponent)
            # y (once) and every pooled y' under θ_t, in one flat batched pass.
            flat = [(k, o) for k, pool in enumerate(pools) for o in pool if o.status == USABLE]
            scores = score_responses(
                model,
                pad(prompts + [prompts[k] for k, _ in flat], filler_prompt),
                pad(reals + [list(o.tokens) for _, o in flat], filler_real),
                pad_token_id=self.sampler.pad_token_id,
                batch_size=self.batch_size,
                show_progress=accelerator.is_main_process,
            )
            ref_real = scores[: len(shard)]
            for (_, opponent), score in zip(flat, scores[len(shard) :]):
                opponent.ref_logp = score
            base_real = [store.base_logp_real[i] for i in shard]
            if self.kl_to_base > 0:
                base_real = self._score_under_starting_model(
                    model, prompts, reals, ref_real, base_real, new, at_start, pad, (filler_prompt, filler_real)
                )

        self.sampled, self.supplied = len(to_sample), len(shard) - len(to_sample)  # this rank's, for the log
        # Metadata to every rank; the tokens stay here.
        part = [(shard, ref_real, base_real, [[o.without_tokens() for o in pool] for pool in pools])]
        gathered = gather_object(part) if world > 1 else [(shard, ref_real, base_real, pools)]
        result = IterationOpponents(iteration, [0.0] * len(store), [None] * len(store), [[] for _ in range(len(store))])
        for part_shard, part_ref, part_base, part_pools in gathered:
            for i, ref, base, pool in zip(part_shard, part_ref, part_base, part_pools):
                result.ref_logp_real[i] = ref
                result.base_logp_real[i] = base
                result.pools[i] = pool
        for i, pool in zip(shard, pools):
            result.pools[i] = pool
        return result

    def _check_sharded_scoring(self, model_wrapped) -> None:
        # θ_0 is swapped in tensor by tensor: FSDP2's parameters are DTensors whose local
        # shards swap as they are, ZeRO-3's partitioned ones hold no data outside a gather
        # (in one process too, where generation is not in lockstep).
        zero3 = getattr(getattr(self.accelerator.state, "deepspeed_plugin", None), "zero_stage", 0) == 3
        if zero3 and self.kl_to_base > 0 and not self._adapter_disabled_start(model_wrapped):
            raise ValueError(
                "`selfplay.kl_to_base` under ZeRO-3 with `selfplay.generation.ds3_gather_for_generation: false` "
                "needs the gathered weights to swap θ_0 in (full fine-tuning, or a LoRA run started from "
                "`lora_model_dir`): set `selfplay.generation.ds3_gather_for_generation: true`."
            )

    def _adapter_disabled_start(self, model_wrapped) -> bool:
        model = self.accelerator.unwrap_model(model_wrapped)
        return is_peft_model(model) and not self.starting_model.cfg.get("lora_model_dir")

    def _score_under_starting_model(self, model, prompts, reals, ref_real, base_real, new, at_start, pad, fillers):
        """lp_θ0 of the real responses (once per run) and of this iteration's new y'.

        θ_0 never changes, so older pooled opponents keep the value computed when
        they were generated. At the very start of a fresh run θ_t = θ_0 and the θ_t
        scores are reused; the starting weights are snapshotted for later iterations.
        """
        usable = [(k, o) for k, o in enumerate(new) if o.status == USABLE]  # k: position in the shard
        if at_start:
            self.starting_model.snapshot(model)
            for _, opponent in usable:
                opponent.base_logp = opponent.ref_logp
            return list(ref_real)
        missing = [k for k, lp in enumerate(base_real) if lp is None]
        with self.starting_model.active(model):
            scores = score_responses(
                model,
                pad([prompts[k] for k in missing] + [prompts[k] for k, _ in usable], fillers[0]),
                pad([reals[k] for k in missing] + [list(o.tokens) for _, o in usable], fillers[1]),
                pad_token_id=self.sampler.pad_token_id,
                batch_size=self.batch_size,
            )
        base_real = list(base_real)
        for k, score in zip(missing, scores):
            base_real[k] = score
        for (_, opponent), score in zip(usable, scores[len(missing) :]):
            opponent.base_logp = score
        return base_real

