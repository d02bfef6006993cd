"""Training-time overhead of ``MonitoredOptimizer`` against the tracking interval (paper, Figure 7).

For each problem, configuration (economy, business, full) and tracking interval ``k``, the overhead
is the time of a window of consecutive training steps with ``track=k`` over the time of as many
plain SGD steps, both measured in the same round of one process.  Each (configuration, interval)
pair and each interval's plain baseline trains its own copy of the model (SGD, ``lr=0.01``; the step
of ``benchmark_overhead.py``: ``zero_grad``, forward, loss, ``backward``, ``step``).  In every one
of ``--rounds`` rounds each interval's plain window runs, then its configurations' windows; the
reported number is the median over rounds of the ratio within a round.

A window covers whole tracking periods and starts at a tracked step (asserted): its length is
``k * ceil(n / k)`` steps, with ``n`` the larger of ``--min-steps`` and the number of plain steps
that fill ``--min-window-seconds`` (a 16-step window of a 1-ms MLP step would mostly time noise).  A
period is the tracked step, the step after it (which completes the tracked step's Alpha reading
with the losses and projections of its own batch: part of the real cost, measured as is) and
``k - 2`` untracked steps; with ``k = 1`` every step does both.  Warm-up: two steps of every plain
runner; steps 0 (tracked) and 1 (the Alpha completion) of every monitored runner, then its
untracked steps up to the next multiple of ``k``.

Problems: ``mlp`` and ``3c3d`` (see ``problems.py``).  ``mlp-large`` is left out: its 20 runners
(one model copy and monitor state each) would not fit into memory, and a 256-step window of it
takes minutes.  Prints one markdown table per problem (rows: configurations, columns: intervals),
writes a heat map (``--png``) and, with ``--json``, the raw per-round times and ratios.

    python experiments/benchmark_interval.py [--problems mlp 3c3d] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from benchmark_overhead import WARMUP_STEPS, Runner, make_runner, run_steps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator
from problems import BATCH_SIZE, PROBLEMS, Problem, build_problem
from tqdm import tqdm

from cockpit_optim import MonitoredOptimizer

CONFIGS = ("economy", "business", "full")
INTERVALS = (1, 4, 16, 64, 256)
PNG = Path(__file__).resolve().parent / "results" / "overhead_intervals.png"


def aligned(steps: int, k: int) -> int:
    """The smallest multiple of ``k`` that is at least ``steps``."""
    return k * math.ceil(steps / k)


def check_aligned(runner: Runner, k: int) -> None:
    """A monitored runner's next step must be tracked (a window starts a period)."""
    if isinstance(runner.optimizer, MonitoredOptimizer):
        count = runner.optimizer.step_count
        assert count % k == 0, f"{runner.name}, track={k}: window starts at step {count}"


class IntervalGrid:
    """The runners of one problem, keyed by ``(configuration or "plain", interval)``."""

    def __init__(
        self, problem: Problem, configs: Sequence[str], intervals: Sequence[int], seed: int
    ) -> None:
        self.problem = problem
        self.configs = list(configs)
        self.intervals = list(intervals)
        self.runners = {
            (c, k): make_runner(problem, c, seed, track=k)
            for k in intervals
            for c in ("plain", *configs)
        }
        self.windows: dict[int, int] = {}

    def warm_up(self, bar: tqdm) -> None:
        """Warm every runner up; monitored runners end right before a tracked step."""
        counts = {
            (c, k): WARMUP_STEPS if c == "plain" else aligned(WARMUP_STEPS, k)
            for c, k in self.runners
        }
        bar.total += sum(counts.values())
        for (config, k), runner in self.runners.items():
            bar.set_postfix_str(f"{self.problem.name} {config} track={k} warm-up")
            for _ in range(counts[config, k]):
                runner.warmup_seconds.append(run_steps(runner, 1))
                bar.update(1)

    def size_windows(self, min_steps: int, min_seconds: float) -> None:
        """Set each interval's window length from the plain warm-up step time."""
        plain = statistics.median(
            self.runners["plain", k].warmup_seconds[-1] for k in self.intervals
        )
        steps = max(min_steps, math.ceil(min_seconds / max(plain, 1e-6)))
        self.windows = {k: aligned(steps, k) for k in self.intervals}

    def run_round(self, label: str, bar: tqdm) -> None:
        """One window of every runner, each interval's plain window first."""
        for k in self.intervals:
            for config in ("plain", *self.configs):
                runner = self.runners[config, k]
                bar.set_postfix_str(f"{self.problem.name} {config} track={k} {label}")
                check_aligned(runner, k)
                runner.times.append(run_steps(runner, self.windows[k]))
                bar.update(self.windows[k])

    def ratios(self, config: str, k: int) -> list[float]:
        """Per round, window time of ``config`` over the plain window time."""
        plain = self.runners["plain", k].times
        return [t / p for t, p in zip(self.runners[config, k].times, plain)]

    def medians(self) -> np.ndarray:
        """Median ratios, rows: configurations, columns: intervals."""
        return np.array(
            [[statistics.median(self.ratios(c, k)) for k in self.intervals] for c in self.configs]
        )

    def plain_seconds(self) -> float:
        """Median seconds per plain step over all plain windows."""
        return statistics.median(t for k in self.intervals for t in self.runners["plain", k].times)

    def reading_warnings(self) -> int:
        """ReadingWarnings raised (and silenced) in all windows."""
        return sum(r.reading_warnings for r in self.runners.values())


# ------------------------------------------------------------------------------- output
def markdown_table(grid: IntervalGrid) -> str:
    """One problem: rows configurations, columns tracking intervals."""
    medians = grid.medians()
    lines = [
        f"### {grid.problem.name} (plain step {1e3 * grid.plain_seconds():.1f} ms)",
        "",
        "| configuration | " + " | ".join(f"track={k}" for k in grid.intervals) + " |",
        "|---|" + "---|" * len(grid.intervals),
        "| window (steps) | " + " | ".join(str(grid.windows[k]) for k in grid.intervals) + " |",
    ]
    for config, row in zip(grid.configs, medians):
        lines.append(f"| {config} | " + " | ".join(f"{r:.2f}x" for r in row) + " |")
    return "\n".join(lines)


def heat_map(grids: Sequence[IntervalGrid], path: Path) -> None:
    """One panel per problem: configurations x intervals, colour = ratio on a log scale."""
    medians = [g.medians() for g in grids]
    low = min(float(m.min()) for m in medians)
    high = max(float(m.max()) for m in medians)
    norm = LogNorm(vmin=min(low, 1.0), vmax=max(high, 1.01 * low, 1.0 + 1e-3))
    cmap = "magma_r"
    first = grids[0]
    width = 1.0 * len(first.intervals) * len(grids) + 2.0
    fig = Figure(figsize=(width, 0.55 * len(first.configs) + 1.9), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(grids), squeeze=False)[0]
    for ax, grid, values in zip(axes, grids, medians):
        image = ax.imshow(values, cmap=cmap, norm=norm, aspect="auto")
        ax.set_xticks(range(len(grid.intervals)), [str(k) for k in grid.intervals])
        ax.set_yticks(range(len(grid.configs)), grid.configs)
        ax.set_xlabel("tracking interval k (steps)")
        ax.set_title(grid.problem.name)
        for (i, j), value in np.ndenumerate(values):
            red, green, blue, _ = image.cmap(norm(value))
            dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5
            color = "white" if dark else "black"
            ax.text(j, i, f"{value:.2f}x", ha="center", va="center", fontsize=9, color=color)
    axes[0].set_ylabel("configuration")
    bar = fig.colorbar(image, ax=list(axes), label="time / plain SGD time (log scale)")
    bar.ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}x"))
    bar.ax.yaxis.set_minor_formatter(FuncFormatter(lambda value, _: ""))
    fig.suptitle("Training-time overhead of MonitoredOptimizer with track=k")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, facecolor="white")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", nargs="+", choices=PROBLEMS, default=list(PROBLEMS))
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    parser.add_argument("--intervals", nargs="+", type=int, default=list(INTERVALS))
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds (default 3)")
    parser.add_argument(
        "--min-steps", type=int, default=16, help="least steps per window (default 16)"
    )
    parser.add_argument(
        "--min-window-seconds",
        type=float,
        default=0.2,
        help="lengthen windows to at least this many seconds of plain steps (default 0.2)",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--png", type=Path, default=PNG, help=f"heat map (default {PNG})")
    parser.add_argument("--json", type=Path, default=None, help="write the raw numbers here")
    args = parser.parse_args(argv)
    if min(args.rounds, args.min_steps, args.threads, *args.intervals) < 1:
        parser.error("--rounds, --min-steps, --threads and --intervals must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    intervals = sorted(set(args.intervals))
    start = time.perf_counter()
    grids: list[IntervalGrid] = []
    with tqdm(total=0, unit="step", file=sys.stderr, dynamic_ncols=True) as bar:
        for name in args.problems:
            grid = IntervalGrid(build_problem(name, args.seed), args.configs, intervals, args.seed)
            grid.warm_up(bar)
            grid.size_windows(args.min_steps, args.min_window_seconds)
            bar.total += args.rounds * (1 + len(args.configs)) * sum(grid.windows.values())
            for r in range(args.rounds):
                grid.run_round(f"round {r + 1}/{args.rounds}", bar)
            grids.append(grid)
    elapsed = time.perf_counter() - start

    for grid in grids:
        print(markdown_table(grid))
        print()
    print(
        f"Median over {args.rounds} rounds of (window time with track=k / plain window time) in "
        f"the same round; threads={args.threads}, batch size={BATCH_SIZE}, "
        f"torch {torch.__version__}; benchmark took {elapsed:.0f} s."
    )
    for grid in grids:
        if count := grid.reading_warnings():
            print(f"* {grid.problem.name}: {count} ReadingWarning(s) (silenced).")
    heat_map(grids, args.png)
    print(f"Heat map: {args.png}")

    if args.json is not None:
        raw = {
            "threads": args.threads,
            "batch_size": BATCH_SIZE,
            "rounds": args.rounds,
            "intervals": intervals,
            "torch": torch.__version__,
            "seconds": elapsed,
            "problems": {
                g.problem.name: {
                    "windows": g.windows,
                    "ratios": {c: {k: g.ratios(c, k) for k in intervals} for c in g.configs},
                    "seconds_per_step": {
                        f"{c}/track={k}": r.times for (c, k), r in g.runners.items()
                    },
                }
                for g in grids
            },
        }
        args.json.write_text(json.dumps(raw, indent=2))


if __name__ == "__main__":
    main()
