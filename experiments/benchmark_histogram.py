"""Accuracy and cost of the GradHist1d element budget (``max_elements``).

For each problem, one batch's exact histogram (``max_elements=None``) is compared with subsampled
histograms over the same edges: the L1 distance between the normalized histograms (under- and
overflow included), mean and worst over repeated draws, at the first tracked step and at the next
one (whose draws are sized by the first), and the time of a step tracking GradHist1d alone relative
to a plain step, measured in the same process: with the compiled histogram loop (numba, when
installed) and with the torch path it replaces (identical counts, so identical L1).  The first
call of the compiled loop (compiling, or loading numba's on-disk cache) is timed and printed.

    python experiments/benchmark_histogram.py [--budgets 16 17 18 19 20] [--draws 5]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
import warnings
from collections.abc import Iterator, Sequence

import torch
from problems import PROBLEMS, build_problem
from torch import nn
from tqdm import tqdm

from cockpit_optim import MonitoredOptimizer, ReadingWarning
from cockpit_optim.engine import fused_histogram
from cockpit_optim.instruments import GradHist1d
from cockpit_optim.instruments.histograms import DEFAULT_MAX_ELEMENTS


def histograms(problem, instrument: GradHist1d, seed: int) -> list[tuple[list[int], dict]]:
    """``(under, counts..., over)`` and the record of two tracked steps on the same batch (lr 0)."""
    model = problem.fresh_model()
    loss_fn = nn.CrossEntropyLoss()
    opt = MonitoredOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.0),
        model,
        loss_fn,
        instruments=[instrument],
        seed=seed,
    )
    for _ in range(2):
        opt.zero_grad()
        loss_fn(model(problem.inputs), problem.labels).backward()
        opt.step()
    opt.remove_hooks()
    records = [r["GradHist1d"] for r in opt.history]
    return [([r["underflow"], *r["counts"], r["overflow"]], r) for r in records]


def l1(counts: list[int], reference: list[int]) -> float:
    a, b = torch.tensor(counts, dtype=torch.float64), torch.tensor(reference, dtype=torch.float64)
    return float((a / a.sum() - b / b.sum()).abs().sum())


@contextlib.contextmanager
def torch_path(on: bool) -> Iterator[None]:
    """Bin with torch operations instead of the compiled loop while ``on``."""
    before = fused_histogram.disabled
    if on:
        fused_histogram.disabled = "benchmark: torch path"
    try:
        yield
    finally:
        fused_histogram.disabled = before


def step_ratio(problem, budget: int | None, steps: int) -> float:
    """Median over rounds of (GradHist1d-only step time / plain step time)."""
    loss_fn, plain_loss = nn.CrossEntropyLoss(), nn.CrossEntropyLoss()
    plain_model, tracked_model = problem.fresh_model(), problem.fresh_model()
    plain = torch.optim.SGD(plain_model.parameters(), lr=0.0)
    tracked = MonitoredOptimizer(
        torch.optim.SGD(tracked_model.parameters(), lr=0.0),
        tracked_model,
        loss_fn,
        instruments=[GradHist1d(max_elements=budget)],
    )

    def run(opt, model, loss) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            opt.zero_grad()
            loss(model(problem.inputs), problem.labels).backward()
            opt.step()
        return time.perf_counter() - start

    run(plain, plain_model, plain_loss)
    run(tracked, tracked_model, loss_fn)
    ratios = [
        run(tracked, tracked_model, loss_fn) / run(plain, plain_model, plain_loss) for _ in range(5)
    ]
    tracked.remove_hooks()
    return statistics.median(ratios)


def timed(problem, budget: int | None, steps: int) -> tuple[float, float]:
    """:func:`step_ratio` with the compiled loop, then with the torch path."""
    ratio = step_ratio(problem, budget, steps)
    with torch_path(True):
        return ratio, step_ratio(problem, budget, steps)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", nargs="+", choices=PROBLEMS, default=list(PROBLEMS))
    parser.add_argument(
        "--budgets", nargs="+", type=int, default=[16, 17, 18, 19, 20], help="log2 of max_elements"
    )
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="steps per timing round")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", ReadingWarning)

    rows = []
    work = len(args.problems) * (2 + (len(args.budgets) + 1) * (args.draws + 1))
    with tqdm(total=work, desc="histogram budget", file=None) as bar:
        for name in args.problems:
            problem = build_problem(name, seed=0)
            reference, record = histograms(problem, GradHist1d(max_elements=None), seed=0)[0]
            bar.update()
            fixed = (record["edges"][0], record["edges"][-1])
            exact_ratio = timed(problem, None, args.steps)
            bar.update()
            exact = [(record["population"], 0.0, 0.0)] * 2
            rows.append((name, "exact", exact, exact_ratio))
            budgets = [(f"2^{power}", 2**power) for power in args.budgets]
            for label, budget in [*budgets, ("default", DEFAULT_MAX_ELEMENTS)]:
                errors, binned = ([], []), ([], [])
                for draw in range(args.draws):
                    steps = histograms(
                        problem, GradHist1d(range=fixed, max_elements=budget), seed=draw
                    )
                    for step, (counts, sampled) in enumerate(steps):
                        errors[step].append(l1(counts, reference))
                        binned[step].append(sampled["binned"])
                    bar.update()
                ratio = timed(problem, budget, args.steps)
                bar.update()
                per_step = [
                    (round(statistics.mean(b)), statistics.mean(e), max(e))
                    for b, e in zip(binned, errors)
                ]
                rows.append((name, label, per_step, ratio))

    print(
        "\n| problem | max_elements | first step: binned | L1 mean | L1 worst "
        "| next step: binned | L1 mean | L1 worst | step / plain | torch path: step / plain |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, label, per_step, (ratio, torch_ratio) in rows:
        cells = " | ".join(f"{b:,} | {m:.2%} | {w:.2%}" for b, m, w in per_step)
        print(f"| {name} | {label} | {cells} | {ratio:.2f}x | {torch_ratio:.2f}x |")
    print(
        f"\nL1 over {args.draws} draws per budget against the exact histogram of one batch "
        f"(batch 128, 100 bins, adaptive range), threads={args.threads}."
    )
    if fused_histogram.compile_seconds is not None:
        print(
            f"Compiled histogram loop: first call {fused_histogram.compile_seconds:.1f} s "
            "(compiling, or loading numba's on-disk cache)."
        )
    else:
        print("Compiled histogram loop not used (numba not installed): both columns are torch.")


if __name__ == "__main__":
    main()
