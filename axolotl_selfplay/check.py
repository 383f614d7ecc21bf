"""`axolotl-selfplay check CONFIG.yml`: what `axolotl train` checks before its model loads, in seconds.

The console script (cli.py) first runs the checks that need neither torch nor Axolotl
(config_file.py). Then this module runs the code `axolotl train` runs, up to the model:
1. Axolotl's config loading (`load_cfg`): the plugins, our `register()` (the
   `selfplay:` block, its compatibility checks, the LSP reward functions) and
   Axolotl's own validation.
2. The plugin's data preparation, the very function its `load_datasets` hook
   calls: for SPIN, `datasets:` through Axolotl's loading, split choice and
   tokenization with every row checked (data/spin.py); for LSP, the seed
   prompts, the chat template and the reward model's config (data/lsp.py).
Then it prints a one-screen summary, or the error `axolotl train` would stop
with, and exits non-zero. Only the tokenizer is loaded, never model weights.
The console script (cli.py) quiets Axolotl's logging before this module imports
Axolotl. Like `axolotl preprocess`, it leaves Axolotl's tokenized dataset in
`dataset_prepared_path`, so the next `axolotl train` does not tokenize again.
"""

from __future__ import annotations

import logging
import sys
import traceback

import axolotl
import datasets
import numpy as np
from axolotl.cli.config import load_cfg
from axolotl.loaders import load_tokenizer

from .config import LSP_NO_DATA, SELFPLAY_RL_TYPES, task_weights
from .data.columns import GAME_SEED_COLUMN
from .data.lsp import prepare_lsp_games
from .data.rows import inspect_sources
from .data.spin import prepare_spin_data
from .data.split import generation_end_ids, split_prompt_response
from .distributed import launched_world_size


def run_check_command(args) -> int:
    try:
        summary = run_check(args.config, quiet=not args.verbose)
    except Exception as error:  # noqa: BLE001 - every failure is reported the same way
        if args.verbose:
            traceback.print_exc()
        print(f"axolotl-selfplay check: {args.config}: FAILED\n{error}", file=sys.stderr)
        return 1
    print(summary)
    return 0


def run_check(config: str, quiet: bool = True) -> str:
    """Everything `axolotl train` checks before loading the model; the summary, or an exception."""
    if quiet:
        datasets.disable_progress_bars()
        # Axolotl's advice to preprocess before training: `check` is such a step already.
        logging.getLogger("axolotl.utils.data.sft").addFilter(lambda r: "VRAM instability" not in r.getMessage())
    cfg = load_cfg(str(config))
    selfplay = cfg.get("selfplay")
    if not selfplay:
        raise ValueError(
            f"this config does not ask for self-play (no `rl: {' | '.join(SELFPLAY_RL_TYPES)}`): "
            "`axolotl-selfplay check` checks self-play configs."
        )
    head = f"axolotl-selfplay check: {config}: OK (rl: {selfplay['type']}, Axolotl {axolotl.__version__}, no model weights loaded)"
    if selfplay["type"] == "lsp":
        return "\n".join([head, *_lsp_lines(cfg, prepare_lsp_games(cfg))])
    data = prepare_spin_data(cfg)
    # Loaded from Axolotl's cache, the rows did not pass by entry by entry: read the
    # entries once more for the per-entry figures.
    entries = data.entries or inspect_sources(cfg)
    return "\n".join([head, *_spin_lines(cfg, data, entries)])


def _percentiles(values: list[int]) -> str:
    if not values:
        return "-"
    p50, p90, p99 = (int(np.percentile(values, q)) for q in (50, 90, 99))
    return f"p50 {p50} / p90 {p90} / p99 {p99} / max {max(values)}"


def _spin_lines(cfg, data, entries) -> list[str]:
    sp, schedule = cfg.selfplay, data.schedule
    train, evaluation = data.meta.train_dataset, data.meta.eval_dataset
    rows = sum(e.rows for e in entries)
    usable = sum(e.usable for e in entries)
    dropped: dict[str, int] = {}
    for entry in entries:
        for reason, source_rows in entry.dropped.items():
            dropped[reason] = dropped.get(reason, 0) + len(source_rows)
    why = "; ".join(f"{n} {reason}" for reason, n in dropped.items())
    lines = [
        f"data       {rows} rows in {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}: {usable} usable, {rows - usable} dropped by Axolotl{f' ({why})' if why else ''}"
    ]
    lines += [f"             {e.label}: {e.rows} rows, {e.usable} usable" for e in entries]
    cut = sum(len(e.cut) for e in entries)
    if cut:
        lines.append(
            f"             {cut} real replies cut at sequence_len {cfg.sequence_len} (excess_length_strategy: truncate)"
        )
    lines.append(
        f"           {len(train)} training rows, {len(evaluation) if evaluation is not None else 0} evaluation rows"
        f"{' (from the dataset_prepared_path cache)' if not data.entries else ''}"
    )
    prompts = [n for e in entries for n in e.prompt_lengths]
    replies = [n for e in entries for n in e.response_lengths]
    lines.append(
        f"tokens     prompt {_percentiles(prompts)}; reply {_percentiles(replies)} (sequence_len {cfg.sequence_len})"
    )
    lines.append(f"prompts    end with {_prompt_ending(cfg, train)!r} (the chat template's generation prompt)")
    epochs = sp["epochs_per_iteration"]
    world = launched_world_size()
    lines.append(
        f"schedule   {schedule.iterations} iterations × {epochs} epoch{'s' if epochs > 1 else ''} × "
        f"{schedule.steps_per_epoch} steps = {schedule.total_steps} optimizer steps (micro_batch_size "
        f"{cfg.micro_batch_size} × gradient_accumulation_steps {cfg.gradient_accumulation_steps or 1} × {world} process{'es' if world > 1 else ''})"
    )
    if schedule.warning():
        lines.append(
            f"           max_steps {schedule.max_steps}: only {schedule.iterations_run} of {schedule.iterations} iterations run (see the warning above)"
        )
    gen = sp["generation"]
    lines.append(
        f"opponents  {len(train)} per iteration ({gen['max_new_tokens']} new tokens at most, generation.batch_size "
        f"{gen['batch_size']}, backend {gen['backend']}), {len(train) * schedule.iterations_run} in all"
    )
    if data.supplied is not None:
        lines.append(f"           iteration 0: {data.supplied.summary()}")
    if evaluation is not None and len(evaluation):
        lines.append(
            f"evaluation {len(evaluation)} held-out rows: {len(evaluation)} more opponents generated per iteration, "
            "scored with the self-play objective (eval_rewards/*, eval_logps/*, eval_nll/real)"
        )
    return lines


def _prompt_ending(cfg, train) -> str:
    """The last characters of the first training prompt: where generation starts (split as
    the trainer splits it)."""
    tokenizer = load_tokenizer(cfg)
    prompt, _ = split_prompt_response(train[0]["input_ids"], train[0]["labels"], generation_end_ids(cfg, tokenizer))
    return "…" + tokenizer.decode(prompt)[-40:]


def _lsp_lines(cfg, meta) -> list[str]:
    lsp, gen = cfg.selfplay["lsp"], cfg.selfplay["generation"]
    games = meta.train_dataset
    n, g = lsp["num_queries"], lsp["num_answers"]
    per_step = len(games) // cfg.max_steps
    seeds = sorted(set(games[GAME_SEED_COLUMN]) - {""})
    entries = [d for d in cfg.datasets if str(d.get("path")) != LSP_NO_DATA]
    rewards = [
        f"{name} (weight {w})"
        for name, w in zip(
            [*lsp["reward_funcs"], *([lsp["reward_model"]] if lsp.get("reward_model") else [])],
            task_weights(lsp),
        )
    ]
    return [
        f"games      {cfg.max_steps} steps × {per_step} games = {len(games)} games of {n} queries × {g} answers",
        f"seeds      {f'{len(seeds)} distinct seed prompts from {len(entries)} entries, cycled' if seeds else 'none (the Challenger prompt has no {seed} slot)'}",
        f"rewards    {', '.join(rewards) or 'none'}; self-reward (judge) {'on' if lsp['self_reward'] else 'off'}",
        f"prompts    the Challenger prompt renders with the chat template; {lsp['max_query_tokens']} query / {gen['max_new_tokens']} answer tokens at most",
        f"per step   {per_step * n * (g + 1)} policy generations{f', {per_step * n * g} judge generations' if lsp['self_reward'] else ''}",
    ]
