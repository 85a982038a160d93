"""The PDL options measured against plain PDL by `train_step.py` and `axolotl_step.py` (`--variants`): their settings,
the prior table the `prior` option reads, the paired timing loop and the tables of ratios.

Every option is timed against plain PDL in adjacent steps (order alternated pair by pair, ratio per pair, median),
and measured for peak memory in its own process, like the scripts' PDL-against-CE rows. A step's time is taken on two
clocks: wall-clock, and the CPU time of the benchmark's process (every thread), which other jobs on a shared machine
disturb far less (they take cores away, which lengthens the wall-clock step, but not this process's CPU work). The
options only change the engine's part of a step, so `engine_times` also times that part alone, per option.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from pdl_plugin.settings import EQUATION_3

# Plain PDL, equation (3), whatever the package's defaults: the baseline every option is measured against
PLAIN = EQUATION_3
# Each option's `pdl_*` settings on top of the recipe's plain PDL ones
OPTIONS = {
    "floor": {"pdl_min_weight": 1.0},
    "ce_mix": {"pdl_ce_mix": 0.5},
    "prior": {"pdl_prior_mix": 0.5},  # + pdl_prior_path, the table `write_prior` makes in the run's folder
}
PRIOR_FILENAME = "bench-prior.safetensors"


def parse_options(text: str | None) -> list[str]:
    """`--variants floor,ce_mix` -> ["floor", "ce_mix"]; `all` -> every option; None or "" -> none."""
    if not text:
        return []
    names = list(OPTIONS) if text == "all" else [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in OPTIONS]
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; choose from {list(OPTIONS)} or 'all'")
    return names


def option_settings(name: str, workdir: str | Path) -> dict:
    """The `pdl_*` settings of option `name` on plain PDL (the prior's table lies in `workdir`)."""
    settings = {**PLAIN, **OPTIONS[name]}
    if name == "prior":
        settings["pdl_prior_path"] = str(prior_path(workdir))
    return settings


def prior_path(workdir: str | Path) -> Path:
    return Path(workdir) / PRIOR_FILENAME


def write_prior(workdir: str | Path, tokenizer, rows: int, token_ids) -> Path:
    """An all-tokens prior table for `tokenizer`'s `rows` output rows: how often each row occurs in `token_ids`."""
    import torch

    from pdl_plugin.frequency import FrequencyTable, tokenizer_fingerprint

    ids = torch.as_tensor(token_ids, dtype=torch.long).flatten()
    counts = torch.bincount(ids[(ids >= 0) & (ids < rows)], minlength=rows)
    table = FrequencyTable(counts, tokenizer_fingerprint(tokenizer), "all_tokens", "bench-prior", kind="all_tokens")
    return table.save(prior_path(workdir))


CLOCKS = ("wall", "CPU")  # the two times a benchmark step returns, in this order


def timed(run: Callable[[], object]) -> tuple[float, float]:
    """(wall-clock seconds, CPU seconds of this process) of `run()`."""
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


def paired_times(step: Callable[[str, int], tuple[float, ...]], reference: str, others: Sequence[str],
                 rounds: int) -> dict[str, list[tuple[tuple[float, ...], tuple[float, ...]]]]:
    """Per other variant, `rounds` pairs of adjacent steps (reference's times, other's times), the order alternating
    from pair to pair and from variant to variant. `step(variant, round)` runs one step and returns its times
    (`CLOCKS`)."""
    pairs: dict[str, list] = {name: [] for name in others}
    for round_ in range(rounds):
        for index, name in enumerate(others):
            order = (reference, name) if (round_ + index) % 2 == 0 else (name, reference)
            took = {variant: step(variant, round_) for variant in order}
            pairs[name].append((took[reference], took[name]))
    return pairs


def ratios(pairs: Sequence[tuple[Sequence[float], Sequence[float]]], clock: str, invert: bool = False) -> list[float]:
    """Per pair: the other's time / the reference's on `clock` (`invert`: reference / other)."""
    i = CLOCKS.index(clock)
    return [ref[i] / other[i] if invert else other[i] / ref[i] for ref, other in pairs]


def spread(values: Sequence[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}, {max(values):.3f})"


def options_table(time_pairs: dict[str, list], memory: dict[str, dict[str, list[float]]],
                  reference: str = "pdl") -> list[str]:
    """Markdown rows: each option's step-time ratios (wall, CPU) and memory ratios against plain PDL, median (min,
    max), and whether the targets hold on the medians: time <= 1.02 (wall, CPU), memory <= 1.01 (the first measure,
    the process's peak; the others are reported). `memory[measure][variant]` are per-repetition figures (MB),
    paired by repetition."""
    measures = list(memory)
    lines = [(f"| option vs plain PDL | step time, wall (n) | step time, CPU | {' | '.join(measures)} "
              "| targets met (wall, CPU, memory) |"), "|---|---|---|" + "---|" * len(measures) + "---|"]
    for name, pairs in time_pairs.items():
        cells, met = [], []
        for clock in CLOCKS:
            values = ratios(pairs, clock)
            cells.append(spread(values) + (f" (n={len(values)})" if clock == "wall" else ""))
            met.append(statistics.median(values) <= 1.02)
        for measure in measures:
            values = [o / r for o, r in zip(memory[measure].get(name, []), memory[measure].get(reference, []))]
            cells.append(spread(values) if values else "not measured")
            if measure == measures[0]:
                met.append(statistics.median(values) <= 1.01 if values else None)
        verdict = ", ".join("-" if ok is None else "yes" if ok else "no" for ok in met)
        lines.append(f"| {name} | {' | '.join(cells)} | {verdict} |")
    return lines


def engine_times(engines: dict, micro_batches: Sequence, repeats: int = 100) -> dict[str, float]:
    """Median CPU seconds of the engine's share of one optimizer step, per variant: `step_denominator` over the step's
    micro-batch labels (shifted, -100 untrained), then per micro-batch `loss` on log-probs of its trained targets and
    its backward. The model's work, the same for every variant, is left out: this is what an option can change."""
    import torch

    targets = [labels[labels != -100] for labels in micro_batches]
    log_probs = [-torch.rand(len(t), dtype=torch.float32) * 5 for t in targets]

    def run(engine) -> None:
        denominator = engine.step_denominator(micro_batches, "cpu", 0)
        for lp, t in zip(log_probs, targets):
            lp = lp.clone().requires_grad_(True)
            engine.loss(lp, t, step=0, training=True, num_items_in_batch=denominator).backward()

    out = {}
    for _ in range(2):  # warm-up, then measured; variants interleaved round by round
        times = {name: [] for name in engines}
        for _ in range(repeats):
            for name, engine in engines.items():
                times[name].append(timed(lambda engine=engine: run(engine))[1])
        out = {name: statistics.median(values) for name, values in times.items()}
    return out


def engine_line(engine_seconds: dict[str, float], step_seconds: float, reference: str = "pdl") -> str:
    """The engine's CPU time per step per variant, and each option's difference as a share of a plain PDL step's CPU
    time `step_seconds`."""
    ref = engine_seconds[reference]
    parts = [f"{reference} {ref * 1e6:.0f}"] + [
        f"{name} {value * 1e6:.0f} ({(value - ref) / step_seconds * 100:+.4f}% of a PDL step)"
        for name, value in engine_seconds.items() if name != reference]
    return "engine's share of a step (step_denominator + loss + its backward), median CPU us: " + ", ".join(parts)


def print_step_ratios(pairs: dict[str, list], baseline: str, label: str, options: Sequence[str]) -> float:
    """Print the paired step times (PDL against the host's own loss `baseline`, named `label`, and each option
    against plain PDL) on both clocks; returns plain PDL's median CPU seconds per step."""
    from _common import ratio_line

    pdl_steps = [pdl for pairs_ in pairs.values() for pdl, _ in pairs_]
    cpu_step = statistics.median(pdl[1] for pdl in pdl_steps)
    print(f"step time (s): {baseline} median {statistics.median(other[0] for _, other in pairs[baseline]):.3f}, "
          f"PDL median {statistics.median(pdl[0] for pdl in pdl_steps):.3f}; CPU s: PDL median {cpu_step:.3f}")
    print(ratio_line(f"step time, PDL / {label}", ratios(pairs[baseline], "wall", invert=True)))
    print(ratio_line(f"step time (CPU), PDL / {label}", ratios(pairs[baseline], "CPU", invert=True)))
    for option in options:
        print(ratio_line(f"step time, {option} / PDL", ratios(pairs[option], "wall")))
        print(ratio_line(f"step time (CPU), {option} / PDL", ratios(pairs[option], "CPU")))
    return cpu_step
