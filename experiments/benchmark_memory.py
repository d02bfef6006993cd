"""Peak memory of tracked training steps relative to plain SGD steps.

Every (problem, configuration) pair is measured in a fresh subprocess (this script with
``--worker``), so that nothing of another measurement carries over: no allocator caches, no lazily
built state, no high-water mark.  The worker builds the model and one batch (the baseline: their
tensors; plain SGD keeps no state), then the optimizer (plain SGD, or ``MonitoredOptimizer(...,
instruments=config, track=1)``) and runs two training steps: step 0, tracked, and step 1, tracked
and completing step 0's Alpha reading (the steady state of ``track=1``).  Reported per
configuration, each with its ratio to the plain steps':

* step extra: the peak, over the two steps, of the bytes held by tensors beyond the baseline
  (gradients, activations, the monitor's state and temporaries, including those freed within the
  step),
* total: baseline + step extra,
* process peak RSS: the worker's resident-set high-water mark (``ru_maxrss``),

and, for scale, the B x D x 4 bytes that materialized per-sample gradients would take.

How tensor bytes are counted.  On CUDA, ``torch.cuda.max_memory_allocated`` with the peak reset
after the baseline.  On CPU PyTorch keeps no allocation statistics, so the worker runs the steps
under ``torch.profiler`` with ``profile_memory=True``, which records every allocation and release of
PyTorch's CPU allocator with its size, and takes the maximum of their running sum.  That counts
tensors exactly, transient peaks included, regardless of how the C allocator and the OS recycle
pages.  It misses memory that PyTorch does not allocate (NumPy arrays, Python objects, scratch space
of the BLAS and oneDNN libraries) and allocations made inside worker threads of parallel kernels;
the engine computes with tensors on the calling thread, so little is missed.  The RSS high-water
mark covers everything but is coarse: it includes the interpreter and libraries (hundreds of MB),
memory the allocator has freed but kept, and the profiler's own records; it is a cross-check of the
totals, not a measure of the step.

A CPU worker may grow by at most 90% of the memory free when it starts (``RLIMIT_AS``): beyond
that its allocations fail, rather than the kernel's out-of-memory killer stopping it or another
process.  The monitor skips a reading that fails and trains on; a row with a failed reading (or a
failed worker) reports the failure instead of numbers.

    python experiments/benchmark_memory.py [--problems mlp 3c3d mlp-large] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from benchmark_overhead import make_step
from problems import ALL_PROBLEMS, build_problem, per_sample_gradient_bytes
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile
from tqdm import tqdm

from cockpit_optim import ReadingWarning

CONFIGS = ("economy", "business", "full")
STEPS = 2
MB = 1e6


# ------------------------------------------------------------------------------- worker
def limit_memory(headroom: int) -> None:
    """Let this process's address space grow by at most ``headroom`` bytes (Linux)."""
    status = Path("/proc/self/status").read_text()
    match = re.search(r"^VmSize:\s+(\d+) kB", status, re.MULTILINE)
    assert match is not None, "no VmSize in /proc/self/status"
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (int(match.group(1)) * 1024 + headroom, hard))


def profiled_peak(prof: profile) -> int:
    """Maximum of the running sum of the CPU allocations and releases recorded by ``prof``."""
    events = [
        e
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    ]
    running = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        running += event.nbytes()
        peak = max(peak, running)
    return peak


def run_steps(model: nn.Module, x: Tensor, y: Tensor, config: str, seed: int) -> list[str]:
    """Build the optimizer and run ``STEPS`` steps; the messages of failed readings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ReadingWarning)
        step, _ = make_step(model, x, y, config, seed)
        for _ in range(STEPS):
            step()
    return [str(w.message) for w in caught if issubclass(w.category, ReadingWarning)]


def measure(problem_name: str, config: str, seed: int, device: torch.device) -> dict:
    """Baseline and peak extra tensor bytes of ``STEPS`` steps of ``config``, peak RSS bytes, and
    the readings that failed (the monitor skips a failing reading and trains on)."""
    problem = build_problem(problem_name, seed)
    model = problem.model.to(device)
    x, y = problem.inputs.to(device), problem.labels.to(device)
    baseline = sum(t.nbytes for t in (*model.parameters(), *model.buffers(), x, y))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        failed = run_steps(model, x, y, config, seed)
        torch.cuda.synchronize(device)
        extra = torch.cuda.max_memory_allocated(device) - start
    else:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            failed = run_steps(model, x, y, config, seed)
        extra = profiled_peak(prof)
    return {
        "baseline": baseline,
        "extra": extra,
        "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # KiB on Linux
        "per_sample": per_sample_gradient_bytes(problem),
        "failed_readings": failed,
    }


# ------------------------------------------------------------------------------- parent
def run_worker(problem: str, config: str, args: argparse.Namespace) -> dict | str:
    """The worker's measurements, or why it failed."""
    command = [sys.executable, __file__, "--worker", problem, config]
    command += ["--seed", str(args.seed), "--threads", str(args.threads), "--device", args.device]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return f"worker exited with {done.returncode}: {last}"
    return json.loads(next(x for x in reversed(done.stdout.splitlines()) if x.startswith("{")))


def ratio(value: float, plain: float) -> str:
    """``value / plain`` as ``1.23x``."""
    return f"{value / plain:.2f}x" if plain > 0 else "n/a"


def markdown_table(problem: str, results: dict[str, dict | str]) -> str:
    """Rows: plain and the configurations; absolute sizes in MB with ratios to plain.  A row whose
    worker or readings failed says so, with the first error below the table."""
    plain = results["plain"]
    if isinstance(plain, str):
        return f"### {problem}\n\nplain step failed: {plain}"
    lines = [
        f"### {problem} (model + batch: {plain['baseline'] / MB:,.0f} MB; per-sample gradients "
        f"would take {plain['per_sample'] / MB:,.0f} MB)",
        "",
        "| configuration | step extra | x plain | total | x plain | process peak RSS | x plain |",
        "|---|---|---|---|---|---|---|",
    ]
    base = plain["baseline"]
    errors = []
    for config, r in results.items():
        if isinstance(r, str) or r["failed_readings"]:
            lines.append(f"| {config} | failed | | | | | |")
            if isinstance(r, str):
                errors.append(f"* {config}: {r}")
            else:
                limit = f" (memory limit: {r['headroom'] / MB:,.0f} MB)" if r["headroom"] else ""
                errors.append(f"* {config}: {r['failed_readings'][0]}{limit}")
            continue
        total, plain_total = base + r["extra"], base + plain["extra"]
        lines.append(
            f"| {config} | {r['extra'] / MB:,.1f} MB | {ratio(r['extra'], plain['extra'])} "
            f"| {total / MB:,.1f} MB | {ratio(total, plain_total)} "
            f"| {r['rss'] / MB:,.0f} MB | {ratio(r['rss'], plain['rss'])} |"
        )
    return "\n".join([*lines, "", *errors] if errors else lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", nargs="+", choices=ALL_PROBLEMS, default=list(ALL_PROBLEMS))
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cuda counts with torch.cuda.max_memory_allocated (default: cuda if available)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the raw numbers here")
    parser.add_argument(
        "--worker",
        nargs=2,
        metavar=("PROBLEM", "CONFIG"),
        help="internal: measure one pair in this process and print it as JSON",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.worker is not None:
        headroom = None
        if args.device == "cpu":  # CUDA reserves address space far beyond what it uses
            headroom = int(0.9 * os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
            limit_memory(headroom)
        result = measure(*args.worker, args.seed, torch.device(args.device))
        print(json.dumps({**result, "headroom": headroom}))
        return

    jobs = [(p, c) for p in args.problems for c in ("plain", *args.configs)]
    results: dict[str, dict[str, dict | str]] = {p: {} for p in args.problems}
    with tqdm(jobs, unit="run", file=sys.stderr, dynamic_ncols=True) as bar:
        for problem, config in bar:
            bar.set_postfix_str(f"{problem} {config}")
            results[problem][config] = run_worker(problem, config, args)

    for problem in args.problems:
        print(markdown_table(problem, results[problem]))
        print()
    counted = "torch.cuda.max_memory_allocated" if args.device == "cuda" else "torch.profiler"
    print(
        f"Peak over {STEPS} steps (track=1) of each configuration, one fresh process per row; "
        f"tensor bytes from {counted}, device={args.device}, threads={args.threads}, "
        f"torch {torch.__version__}."
    )
    if args.json is not None:
        args.json.write_text(json.dumps({"device": args.device, "results": results}, indent=2))


if __name__ == "__main__":
    main()
