"""Per-step overhead of ``MonitoredOptimizer`` relative to a plain SGD step.

Every configuration is timed in one process, interleaved with the plain baseline: for each problem
one model per configuration is built from the same initialization and warmed up, then in each of
``--rounds`` rounds every configuration (the plain loop included) runs ``--steps`` timed steps in
turn.  The reported number is the median over rounds of ``config time / plain time`` with both times
taken in the same round, which cancels most of the drift of a shared machine.

Configurations:

* ``plain``: bare ``torch.optim.SGD`` loop (``zero_grad``, forward, loss, ``backward``, ``step``),
* ``economy`` / ``business`` / ``full``: ``MonitoredOptimizer(..., instruments=cfg, track=1)``,
* ``untracked``: ``instruments="full"`` with ``track=10**9``; steps 0 (tracked) and 1 (which completes
  the Alpha reading of step 0) are the warm-up, so only untracked steps are timed,
* with ``--instruments [NAME ...]``: each named instrument (all of ``cockpit_optim.instruments.FULL``
  without names) alone, ``track=1``,
* with ``--compare``: ``cockpit:economy`` / ``cockpit:business`` / ``cockpit:full``, the same
  configurations of the original Cockpit 1.0.2 (``pip install -e ".[compare]"``; see
  ``compare_cockpit.py``), timed in the same rounds; the table adds a row ``<config>: original /
  ours`` (median over rounds of the original's time over this package's, both from the same round)
  and ``same:<config>``, this package with the original's (shorter) instrument list, with its own
  ``same:<config>: original / ours`` row.
  It is skipped on a problem whose per-sample gradients (which the original materializes) would not
  fit into this machine's memory.

Problems (batch 128, random inputs and labels, ``CrossEntropyLoss``, SGD with ``lr=0.01``):

* ``mlp``: 784-256-10 MLP on MNIST-shaped inputs (203,530 parameters),
* ``3c3d``: DeepOBS CIFAR-10 3C3D on CIFAR-shaped inputs (895,210 parameters),
* ``mlp-large`` (only with ``--problems``): 784-8192-8192-10 MLP (73,629,706 parameters, about a
  second per plain step; see ``problems.py``).  Every runner keeps its own copy of the model and
  state; ``full`` on it may need more memory than the machine has (``benchmark_memory.py``
  measures it).

With ``--ops``, one more row counts the aten operations dispatched in one tracked step (after the
warm-up; ``torch.profiler`` on the CPU, nested calls included): a proxy, measurable on any machine,
for the kernel launches a GPU step needs.  The first-call compile time of the fused histogram loop
(numba; cached on disk after the first run) is printed when it ran.

``--steps`` is the minimum number of timed steps per round: a configuration whose last warm-up step
is short runs as many steps as fill ``--min-block-seconds`` (a 1-ms plain MLP step timed three times
would measure mostly timer and scheduler noise; ``--min-block-seconds 0`` times exactly ``--steps``).
A configuration whose last warm-up step takes longer than ``--slow-threshold`` seconds is timed with
one step per round; the output says so.

Examples::

    python experiments/benchmark_overhead.py --problems mlp --rounds 3 --json /tmp/ratios.json
    python experiments/benchmark_overhead.py --problems mlp-large --configs economy business
    python experiments/benchmark_overhead.py --configs economy business full --compare
    python experiments/benchmark_overhead.py --problems mlp --configs economy --instruments GradHist1d --ops
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import io
import json
import math
import pstats
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import compare_cockpit
import torch
from problems import (
    ALL_PROBLEMS,
    BATCH_SIZE,
    PROBLEMS,
    Problem,
    build_problem,
    per_sample_gradient_bytes,
    physical_memory_bytes,
)
from torch import Tensor, nn
from tqdm import tqdm

from cockpit_optim import MonitoredOptimizer, ReadingWarning
from cockpit_optim.engine import fused_histogram
from cockpit_optim.instruments import FULL

LR = 0.01
CONFIGS = ("economy", "business", "full", "untracked")
WARMUP_STEPS = 2
MAX_BLOCK_STEPS = 1000


# ------------------------------------------------------------------------------- runners
@dataclass
class Runner:
    """One configuration on its own copy of the model; ``step()`` is one training step."""

    name: str
    step: Callable[[], None]
    optimizer: torch.optim.Optimizer
    steps: int = 0
    reduced: bool = False
    warmup_seconds: list[float] = field(default_factory=list)
    times: list[float] = field(default_factory=list)  # mean seconds per step, one per round
    reading_warnings: int = 0


def make_step(
    model: nn.Module, x: Tensor, y: Tensor, config: str, seed: int, track: int = 1
) -> tuple[Callable[[], None], torch.optim.Optimizer]:
    """A training step of ``model`` on ``(x, y)`` for ``config`` (``plain``, a configuration name,
    ``instr:<Name>`` or ``cockpit:<configuration>``) with tracking interval ``track``."""
    if config.startswith("cockpit:"):
        return compare_cockpit.make_step(model, x, y, config.removeprefix("cockpit:"), LR)
    loss_fn = nn.CrossEntropyLoss()
    sgd = torch.optim.SGD(model.parameters(), lr=LR)
    if config == "plain":
        optimizer: torch.optim.Optimizer = sgd
    elif config == "untracked":
        optimizer = MonitoredOptimizer(sgd, model, loss_fn, "full", track=10**9, seed=seed)
    elif config.startswith("same:"):
        names = compare_cockpit.ORIGINAL_INSTRUMENTS[config.removeprefix("same:")]
        optimizer = MonitoredOptimizer(sgd, model, loss_fn, names, track=track, seed=seed)
    elif config.startswith("instr:"):
        name = config.removeprefix("instr:")
        optimizer = MonitoredOptimizer(sgd, model, loss_fn, [name], track=track, seed=seed)
    else:
        optimizer = MonitoredOptimizer(sgd, model, loss_fn, config, track=track, seed=seed)

    def step() -> None:
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()

    return step, optimizer


def make_runner(problem: Problem, config: str, seed: int, track: int = 1) -> Runner:
    """``config`` (see :func:`make_step`) on a copy of the problem's model."""
    model = copy.deepcopy(problem.model)
    step, optimizer = make_step(model, problem.inputs, problem.labels, config, seed, track)
    return Runner(config, step, optimizer)


def run_steps(runner: Runner, count: int) -> float:
    """Run ``count`` steps of ``runner``; mean seconds per step (ReadingWarnings are counted)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ReadingWarning)
        start = time.perf_counter()
        for _ in range(count):
            runner.step()
        elapsed = time.perf_counter() - start
    for w in caught:
        if issubclass(w.category, ReadingWarning):
            runner.reading_warnings += 1
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return elapsed / count


def check_untracked(runner: Runner) -> None:
    """The ``untracked`` configuration must have recorded step 0 only (the warm-up)."""
    optimizer = runner.optimizer
    if isinstance(optimizer, MonitoredOptimizer) and runner.name == "untracked":
        recorded = [r["step"] for r in optimizer.history]
        assert recorded == [0], f"untracked configuration recorded steps {recorded}"


# ---------------------------------------------------------------------------- benchmark
def benchmark_problem(
    problem: Problem, configs: Sequence[str], args: argparse.Namespace, bar: tqdm
) -> list[Runner]:
    """Warm up every configuration, then ``args.rounds`` interleaved timing rounds."""
    runners = [make_runner(problem, c, args.seed) for c in ("plain", *configs)]
    bar.total += len(runners) * WARMUP_STEPS
    for runner in runners:
        bar.set_postfix_str(f"{problem.name} {runner.name} warm-up")
        for _ in range(WARMUP_STEPS):
            runner.warmup_seconds.append(run_steps(runner, 1))
            bar.update(1)
        last = runner.warmup_seconds[-1]
        runner.reduced = last > args.slow_threshold
        fill = math.ceil(args.min_block_seconds / max(last, 1e-6))
        runner.steps = 1 if runner.reduced else max(args.steps, min(fill, MAX_BLOCK_STEPS))
        bar.total += runner.steps * args.rounds
        bar.refresh()
    for r in range(args.rounds):
        for runner in runners:
            bar.set_postfix_str(f"{problem.name} {runner.name} round {r + 1}/{args.rounds}")
            runner.times.append(run_steps(runner, runner.steps))
            bar.update(runner.steps)
    for runner in runners:
        check_untracked(runner)
    return runners


def ratios(runners: Sequence[Runner]) -> dict[str, list[float]]:
    """Per configuration, ``time / plain time`` of each round."""
    plain = runners[0].times
    return {r.name: [t / p for t, p in zip(r.times, plain)] for r in runners[1:]}


def speedups(runners: Sequence[Runner]) -> dict[str, list[float]]:
    """Per configuration timed in both tools, ``original time / our time`` of each round."""
    by_name = {r.name: r for r in runners}
    out = {}
    for name, runner in by_name.items():
        original = by_name.get(f"cockpit:{name.removeprefix('same:')}")
        if original is not None and not name.startswith("cockpit:"):
            out[name] = [o / t for t, o in zip(runner.times, original.times)]
    return out


def original_configs(problem: Problem, configs: Sequence[str]) -> list[str]:
    """``same:<config>`` (ours with the original's instrument list) and ``cockpit:<config>``
    runners for ``configs``; none if the per-sample gradients that the original materializes would
    not fit into memory."""
    if per_sample_gradient_bytes(problem) >= physical_memory_bytes():
        return []
    chosen = [c for c in configs if c in compare_cockpit.CONFIGS]
    return [f"same:{c}" for c in chosen] + [f"cockpit:{c}" for c in chosen]


def count_ops(problem: Problem, config: str, args: argparse.Namespace) -> int:
    """aten operations dispatched in one step of ``config`` after warm-up (nested ones included)."""
    runner = make_runner(problem, config, args.seed)
    run_steps(runner, WARMUP_STEPS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ReadingWarning)
        activities = [torch.profiler.ProfilerActivity.CPU]
        with torch.profiler.profile(activities=activities) as profiler:
            runner.step()
    return sum(1 for event in profiler.events() if event.name.startswith("aten::"))


def profile_step(problem: Problem, config: str, args: argparse.Namespace, top: int) -> str:
    """cProfile of one step of ``config`` after warm-up: the ``top`` functions by cumulative time."""
    runner = make_runner(problem, config, args.seed)
    run_steps(runner, WARMUP_STEPS)
    profiler = cProfile.Profile()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ReadingWarning)
        profiler.enable()
        start = time.perf_counter()
        runner.step()
        elapsed = time.perf_counter() - start
        profiler.disable()
    stream = io.StringIO()
    pstats.Stats(profiler, stream=stream).sort_stats("cumulative").print_stats(top)
    header = f"### Profile: {problem.name} / {config}, one step, {elapsed:.3f} s (under cProfile)"
    return f"{header}\n\n```\n{stream.getvalue().strip()}\n```"


# ------------------------------------------------------------------------------- output
def markdown_table(
    results: dict[str, list[Runner]],
    problems: Sequence[str],
    configs: Sequence[str],
    ops: dict[str, dict[str, int]] | None = None,
) -> str:
    """Rows: configurations (and speed-ups over the original, if timed); columns: problems; cells:
    median ratio to plain (n/a where a configuration was not run)."""
    medians = {
        p: {k: statistics.median(v) for k, v in ratios(results[p]).items()} for p in problems
    }
    faster = {
        p: {k: statistics.median(v) for k, v in speedups(results[p]).items()} for p in problems
    }
    plain_ms = {p: 1e3 * statistics.median(results[p][0].times) for p in problems}
    lines = [
        "| configuration | " + " | ".join(problems) + " |",
        "|---|" + "---|" * len(problems),
        "| plain (ms/step) | " + " | ".join(f"{plain_ms[p]:.1f} ms" for p in problems) + " |",
    ]
    for config in configs:
        cells = []
        for p in problems:
            runner = next((r for r in results[p] if r.name == config), None)
            mark = "*" if runner is not None and runner.reduced else ""
            cells.append(f"{medians[p][config]:.2f}x{mark}" if runner is not None else "n/a")
        lines.append(f"| {config} | " + " | ".join(cells) + " |")
    for config in dict.fromkeys(k for p in problems for k in faster[p]):
        cells = [f"{faster[p][config]:.2f}x" if config in faster[p] else "n/a" for p in problems]
        lines.append(f"| {config}: original / ours | " + " | ".join(cells) + " |")
    for config in dict.fromkeys(k for p in problems for k in (ops or {}).get(p, {})):
        cells = [f"{ops[p][config]:,}" if config in ops.get(p, {}) else "n/a" for p in problems]
        lines.append(f"| aten ops / step: {config} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def notes(results: dict[str, list[Runner]], args: argparse.Namespace) -> list[str]:
    """Lines on reduced work, skipped comparisons and ReadingWarnings."""
    out = []
    for problem, runners in results.items():
        compared = args.compare and any(c in compare_cockpit.CONFIGS for c in args.configs)
        if compared and not any(r.name.startswith("cockpit:") for r in runners):
            out.append(
                f"* {problem}: original Cockpit not run, its per-sample gradients "
                "would not fit into this machine's memory."
            )
        for r in runners:
            if r.reduced:
                out.append(
                    f"* {problem} / {r.name}: warm-up step took {r.warmup_seconds[-1]:.1f} s "
                    f"(> {args.slow_threshold:g} s), timed with 1 step per round instead of "
                    f"{args.steps}."
                )
            if r.reading_warnings:
                out.append(
                    f"{problem} / {r.name}: {r.reading_warnings} ReadingWarning(s) (silenced)."
                )
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", nargs="+", choices=ALL_PROBLEMS, default=list(PROBLEMS))
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    parser.add_argument("--rounds", type=int, default=5, help="timing rounds (default 5)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round (default 3)")
    parser.add_argument(
        "--min-block-seconds",
        type=float,
        default=0.2,
        help="run more than --steps steps per round if they take less than this (default 0.2)",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--instruments",
        nargs="*",
        default=None,
        metavar="NAME",
        help="also time each named instrument alone (no names: every instrument of FULL, slow)",
    )
    parser.add_argument(
        "--ops",
        action="store_true",
        help="also count the aten operations of one step per configuration (torch.profiler)",
    )
    parser.add_argument(
        "--slow-threshold",
        type=float,
        default=20.0,
        help="seconds per warm-up step above which a configuration is timed with 1 step per round",
    )
    parser.add_argument(
        "--compare",
        action="store_true",
        help="also time economy/business/full of the original Cockpit 1.0.2 (cockpit-for-pytorch)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the raw ratios here")
    parser.add_argument(
        "--profile",
        nargs="+",
        default=[],
        metavar="CONFIG",
        help="after the benchmark, cProfile one step of these configurations on each problem",
    )
    parser.add_argument("--profile-top", type=int, default=10, help="functions shown per profile")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.steps < 1 or args.threads < 1:
        parser.error("--rounds, --steps and --threads must be positive")
    if args.compare and (reason := compare_cockpit.unavailable()) is not None:
        parser.exit(2, f"{reason}\n")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    configs = list(args.configs)
    if args.instruments is not None:
        configs += [f"instr:{name}" for name in args.instruments or FULL]
    problems = list(args.problems)
    start = time.perf_counter()
    results: dict[str, list[Runner]] = {}
    with tqdm(total=0, unit="step", file=sys.stderr, dynamic_ncols=True) as bar:
        for name in problems:
            problem = build_problem(name, args.seed)
            originals = original_configs(problem, configs) if args.compare else []
            results[name] = benchmark_problem(problem, configs + originals, args, bar)
    elapsed = time.perf_counter() - start
    rows = list(dict.fromkeys(r.name for p in problems for r in results[p][1:]))
    ops = {}
    if args.ops:
        for name in problems:
            problem = build_problem(name, args.seed)
            ops[name] = {c: count_ops(problem, c, args) for c in ("plain", *configs)}

    print(markdown_table(results, problems, rows, ops))
    print()
    print(
        f"Median over {args.rounds} rounds of (config / plain) per-step time in the same round; "
        f"threads={args.threads}, batch size={BATCH_SIZE}, rounds={args.rounds}, "
        f"steps per round >= {args.steps} (blocks >= {args.min_block_seconds:g} s), torch {torch.__version__}; benchmark took {elapsed:.0f} s."
    )
    if args.compare:
        print(
            "cockpit:<config> is the original Cockpit 1.0.2; its configurations hold fewer "
            "instruments (economy: no CABS, EarlyStopping, MeanGSNR, Time), see compare_cockpit.py; "
            "same:<config> is this package with the original's instrument list."
        )
    for line in notes(results, args):
        print(line)
    if fused_histogram.compile_seconds is not None:
        print(
            f"Fused histogram loop: first call {fused_histogram.compile_seconds:.1f} s "
            "(compiling, or loading numba's on-disk cache)."
        )

    if args.json is not None:
        raw = {
            "threads": args.threads,
            "batch_size": BATCH_SIZE,
            "rounds": args.rounds,
            "steps": args.steps,
            "torch": torch.__version__,
            "seconds": elapsed,
            "fused_histogram_first_call_seconds": fused_histogram.compile_seconds,
            "problems": {
                p: {
                    "plain_seconds": results[p][0].times,
                    "ratios": ratios(results[p]),
                    "speedups_over_original": speedups(results[p]),
                    "seconds": {r.name: r.times for r in results[p]},
                    "steps": {r.name: r.steps for r in results[p]},
                    "warmup_seconds": {r.name: r.warmup_seconds for r in results[p]},
                    "reading_warnings": {r.name: r.reading_warnings for r in results[p]},
                    "aten_ops": ops.get(p, {}),
                }
                for p in problems
            },
        }
        args.json.write_text(json.dumps(raw, indent=2))

    for config in args.profile:
        for name in problems:
            print()
            print(profile_step(build_problem(name, args.seed), config, args, args.profile_top))


if __name__ == "__main__":
    main()
