"""CUDA check: readings on the GPU against the same steps on the CPU, and tracked-step ratios.

For each problem (``problems.py``, batch 128), two copies of the model train the same steps with the
same monitor seed, one on the CPU and one on CUDA (TF32 off), each with every instrument of ``full``
except the subsampled histograms, plus exact GradHist1d (``max_elements=None``). Printed per reading:
the largest relative difference over the steps (the float32 arithmetic differs in order only), and
for the exact histogram the fraction of elements binned differently. On CUDA alone: the L1 distance
of the default (subsampled) GradHist1d from the exact one, HessTrace's Hutchinson estimate (a model
that is not an ``nn.Sequential``) against the exact value, the number of host synchronizations in a
tracked step (``torch.cuda.set_sync_debug_mode``), and the median over rounds of (tracked step /
plain step) for economy, business and full, with synchronized timers.  ``--profile`` adds, per
problem and configuration, the wall time of a tracked step against its GPU kernel time and the
number of kernel launches (``torch.profiler``), and the kernels that take the most time.

    python experiments/check_cuda.py [--problems mlp 3c3d] [--steps 3] [--rounds 5] [--profile]
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time
import warnings
from collections.abc import Sequence

import torch
from problems import PROBLEMS, build_problem
from torch import nn
from torch.profiler import ProfilerActivity, profile

from cockpit_optim import MonitoredOptimizer, ReadingWarning
from cockpit_optim.instruments import FULL, GradHist1d

SCALARS = [n for n in FULL if n not in ("GradHist1d", "GradHist2d", "Time")]


def readings(model: nn.Module, x, y, device: str, steps: int) -> list[dict]:
    """Records of ``steps`` tracked SGD steps of ``model`` on ``device``."""
    model = copy.deepcopy(model).to(device)
    loss_fn = nn.CrossEntropyLoss()
    optimizer = MonitoredOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.01),
        model,
        loss_fn,
        [*SCALARS, GradHist1d(max_elements=None)],
        seed=0,
    )
    x, y = x.to(device), y.to(device)
    for _ in range(steps + 1):  # the last step completes the previous step's Alpha
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        optimizer.step()
    optimizer.close()
    return list(optimizer.history)[:steps]


def compare(problem_name: str, steps: int) -> list[str]:
    """Markdown rows: reading, largest relative CPU/CUDA difference over the steps."""
    problem = build_problem(problem_name, 0)
    cpu = readings(problem.model, problem.inputs, problem.labels, "cpu", steps)
    gpu = readings(problem.model, problem.inputs, problem.labels, "cuda", steps)
    rows = []
    for name in SCALARS:
        worst = 0.0
        for a, b in zip(cpu, gpu):
            u, v = a.get(name, math.nan), b.get(name, math.nan)
            if math.isnan(u) and math.isnan(v):
                continue
            worst = max(worst, abs(u - v) / max(abs(u), 1e-12))
        rows.append(f"| {problem_name} | {name} | {worst:.2e} |")
    moved = max(
        sum(abs(p - q) for p, q in zip(a["GradHist1d"]["counts"], b["GradHist1d"]["counts"]))
        / 2
        / max(1, a["GradHist1d"]["binned"])
        for a, b in zip(cpu, gpu)
    )
    rows.append(f"| {problem_name} | GradHist1d exact: elements in another bin | {moved:.2e} |")
    return rows


def subsample_l1(problem_name: str, steps: int) -> float:
    """Largest L1 distance, over ``steps`` steps, between the normalized default (subsampled) and
    exact GradHist1d of the same batch on CUDA (same edges: both use the adaptive range)."""
    problem = build_problem(problem_name, 0)
    x, y = problem.inputs.cuda(), problem.labels.cuda()
    loss_fn = nn.CrossEntropyLoss()
    models = [copy.deepcopy(problem.model).cuda() for _ in range(2)]
    monitors = [
        MonitoredOptimizer(
            torch.optim.SGD(model.parameters(), lr=0.0), model, loss_fn, [instrument], seed=0
        )
        for model, instrument in zip(models, (GradHist1d(), GradHist1d(max_elements=None)))
    ]
    worst = 0.0
    for _ in range(steps):
        records = []
        for model, monitor in zip(models, monitors):
            monitor.zero_grad()
            loss_fn(model(x), y).backward()
            monitor.step()
            hist = monitor.history[-1]["GradHist1d"]
            counts = [hist["underflow"], *hist["counts"], hist["overflow"]]
            records.append([c / sum(counts) for c in counts])
        worst = max(worst, sum(abs(a - b) for a, b in zip(*records)))
    for monitor in monitors:
        monitor.close()
    return worst


class _Wrapped(nn.Module):
    """A model that is not an ``nn.Sequential``: its Hessian diagonal is a Hutchinson estimate."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


def hutchinson_check(problem_name: str) -> str:
    """HessTrace on CUDA: the Hutchinson estimate (wrapped model) against the exact value."""
    problem = build_problem(problem_name, 0)
    x, y = problem.inputs.cuda(), problem.labels.cuda()
    values = []
    for wrap in (False, True):
        model = copy.deepcopy(problem.model).cuda()
        monitored = _Wrapped(model) if wrap else model
        loss_fn = nn.CrossEntropyLoss()
        opt = MonitoredOptimizer(
            torch.optim.SGD(model.parameters(), lr=0.0), monitored, loss_fn, ["HessTrace"]
        )
        opt.zero_grad()
        loss_fn(monitored(x), y).backward()
        opt.step()
        values.append(opt.history[0])
        opt.close()
    exact, estimate = values[0]["HessTrace"], values[1]["HessTrace"]
    stderr = values[1]["HessTrace_stderr"]
    return (
        f"| {problem_name} | {exact:.4g} | {estimate:.4g} +- {stderr:.2g} "
        f"| {abs(estimate - exact) / stderr:.2f} |"
    )


def host_syncs(problem_name: str, steps: int = 3) -> dict[str, list[int]]:
    """Synchronizing CUDA calls per tracked step (after a warm-up step), per configuration."""
    problem = build_problem(problem_name, 0)
    x, y = problem.inputs.cuda(), problem.labels.cuda()
    out = {}
    for config in ("economy", "business", "full"):
        model = copy.deepcopy(problem.model).cuda()
        loss_fn = nn.CrossEntropyLoss()
        opt = MonitoredOptimizer(
            torch.optim.SGD(model.parameters(), lr=0.01), model, loss_fn, config
        )
        counts = []
        for step in range(steps + 1):
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                opt.step()
                torch.cuda.set_sync_debug_mode("default")
            syncs = [w for w in caught if "synchroniz" in str(w.message)]
            if step:
                counts.append(len(syncs))
        opt.close()
        out[config] = counts
    return out


def profile_steps(problem_name: str, configs: Sequence[str] = ("economy", "business")) -> str:
    """Wall time, GPU kernel time and kernel launches per tracked step, with the top kernels."""
    problem = build_problem(problem_name, 0)
    x, y = problem.inputs.cuda(), problem.labels.cuda()
    out = []
    for config in configs:
        model = copy.deepcopy(problem.model).cuda()
        loss_fn = nn.CrossEntropyLoss()
        opt = MonitoredOptimizer(
            torch.optim.SGD(model.parameters(), lr=0.01), model, loss_fn, config
        )

        def step(model=model, opt=opt, loss_fn=loss_fn) -> None:
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()

        for _ in range(4):
            step()
        torch.cuda.synchronize()
        activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA]
        with profile(activities=activities) as prof:
            for _ in range(3):
                step()
            torch.cuda.synchronize()
        events = prof.key_averages()
        kernel_ms = sum(e.self_device_time_total for e in events) / 3 / 1e3
        launches = sum(e.count for e in events if "LaunchKernel" in e.key) / 3
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(10):
            step()
        torch.cuda.synchronize()
        wall_ms = (time.perf_counter() - start) / 10 * 1e3
        out.append(
            f"{problem_name} {config}: wall {wall_ms:.2f} ms per tracked step, GPU kernels "
            f"{kernel_ms:.2f} ms, {launches:.0f} kernel launches\n"
            + events.table(sort_by="self_device_time_total", row_limit=8, max_name_column_width=50)
        )
        opt.close()
    return "\n".join(out)


def step_ratios(problem_name: str, rounds: int) -> dict[str, float]:
    """Median over rounds of (tracked step time / plain step time) on CUDA, interleaved."""
    problem = build_problem(problem_name, 0)
    x, y = problem.inputs.cuda(), problem.labels.cuda()
    runners = {}
    for config in ("plain", "economy", "business", "full"):
        model = copy.deepcopy(problem.model).cuda()
        loss_fn = nn.CrossEntropyLoss()
        sgd = torch.optim.SGD(model.parameters(), lr=0.01)
        opt = sgd if config == "plain" else MonitoredOptimizer(sgd, model, loss_fn, config)

        def step(model=model, opt=opt, loss_fn=loss_fn) -> None:
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()

        runners[config] = step
    times: dict[str, list[float]] = {c: [] for c in runners}
    for _ in range(3):
        for step in runners.values():
            step()
    for _ in range(rounds):
        for config, step in runners.items():
            count = 20 if config == "plain" else 5
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(count):
                step()
            torch.cuda.synchronize()
            times[config].append((time.perf_counter() - start) / count)
    plain = times.pop("plain")
    ratios = {c: statistics.median(t / p for t, p in zip(v, plain)) for c, v in times.items()}
    ratios["plain_ms"] = 1e3 * statistics.median(plain)
    return ratios


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", nargs="+", choices=PROBLEMS, default=list(PROBLEMS))
    parser.add_argument("--steps", type=int, default=3, help="tracked steps compared (default 3)")
    parser.add_argument("--rounds", type=int, default=5, help="timing rounds (default 5)")
    parser.add_argument("--profile", action="store_true", help="also profile tracked steps")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("no CUDA device")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    warnings.simplefilter("ignore", ReadingWarning)
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}\n")
    print("| problem | reading | largest relative difference CPU vs CUDA |\n|---|---|---|")
    for name in args.problems:
        print("\n".join(compare(name, args.steps)), flush=True)
    print("\n| problem | default GradHist1d vs exact: largest L1 |\n|---|---|")
    for name in args.problems:
        print(f"| {name} | {subsample_l1(name, args.steps):.4f} |", flush=True)
    print("\n| problem | HessTrace exact | Hutchinson estimate | deviation / stderr |")
    print("|---|---|---|---|")
    for name in args.problems:
        print(hutchinson_check(name), flush=True)
    print(
        "\n| problem | host syncs per tracked step: economy | business | full |\n|---|---|---|---|"
    )
    for name in args.problems:
        s = host_syncs(name)
        print(f"| {name} | {s['economy']} | {s['business']} | {s['full']} |", flush=True)
    print("\n| problem | plain step | economy | business | full |\n|---|---|---|---|---|")
    for name in args.problems:
        r = step_ratios(name, args.rounds)
        print(
            f"| {name} | {r['plain_ms']:.2f} ms | {r['economy']:.2f}x | {r['business']:.2f}x "
            f"| {r['full']:.2f}x |",
            flush=True,
        )
    if args.profile:
        for name in args.problems:
            print("\n```\n" + profile_steps(name) + "\n```", flush=True)


if __name__ == "__main__":
    main()
