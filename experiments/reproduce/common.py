"""Shared helpers of the paper reproductions: composing ``conf/`` with overrides, running the
trainer (in worker processes, one thread each), reading histograms, writing figures and tables
into ``experiments/results/``."""

from __future__ import annotations

import math
import multiprocessing
import os
import statistics
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "experiments" / "results"
RUNS = ROOT / "runs" / "reproduce"
MAX_PNG_BYTES = 300_000
QUIET = [
    "trainer.progress=false",
    "trainer.threads=1",
    "trainer.checkpoint_every=null",
    "cockpit.plot_every=null",
]


def config(*overrides: str):
    """``conf/train.yaml`` composed with ``overrides`` (Hydra's compose API)."""
    from hydra import compose, initialize_config_dir

    from cockpit_optim.experiment import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def _run(job: tuple[str, Sequence[str]]) -> tuple[dict, list[dict]]:
    import contextlib
    import io
    import warnings

    from cockpit_optim import ReadingWarning
    from cockpit_optim.experiment import Trainer

    name, overrides = job
    warnings.simplefilter("ignore", ReadingWarning)
    with contextlib.redirect_stdout(io.StringIO()):
        trainer = Trainer(config(*QUIET, *overrides), RUNS / name)
        summary = trainer.run()
    return summary, trainer.optimizer.history


def run_all(jobs: Sequence[tuple[str, Sequence[str]]]) -> list[tuple[dict, list[dict]]]:
    """Train every ``(name, overrides)`` job in ``runs/reproduce/<name>``; returns
    ``(summary, records)`` per job, in order.  Two worker processes, one thread each."""
    workers = min(len(jobs), os.cpu_count() or 1, 2)
    pool = multiprocessing.get_context("spawn").Pool(workers)
    results = []
    try:
        for index, result in enumerate(pool.imap(_run, jobs), start=1):
            print(f"  [{index}/{len(jobs)}] {jobs[index - 1][0]}", flush=True)
            results.append(result)
    finally:
        pool.close()
        pool.join()
    return results


# ----------------------------------------------------------------------------- readings
def series(records: Sequence[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """Steps and finite values of the scalar reading ``key``."""
    pairs = [
        (r["step"], float(r[key]))
        for r in records
        if isinstance(r.get(key), int | float) and math.isfinite(r[key])
    ]
    steps, values = zip(*pairs) if pairs else ((), ())
    return np.asarray(steps), np.asarray(values)


def alphas(records: Sequence[dict]) -> list[float]:
    return [float(v) for v in series(records, "Alpha")[1]]


def mean_alpha(records: Sequence[dict]) -> float:
    values = alphas(records)
    return statistics.fmean(values) if values else math.nan


def histogram(record: dict, layer: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Edges and counts of a record's ``GradHist1d`` (network-wide, or of one parameter)."""
    hist = record["GradHist1d"]
    counts = hist["counts"] if layer is None else hist["layers"][layer]["counts"]
    return np.asarray(hist["edges"], dtype=float), np.asarray(counts, dtype=float)


def rms(edges: np.ndarray, counts: np.ndarray) -> float:
    """Root mean square of the binned elements (bin centres)."""
    centres = (edges[:-1] + edges[1:]) / 2
    return float(np.sqrt((counts * centres**2).sum() / max(counts.sum(), 1.0)))


# ------------------------------------------------------------------------------- output
def figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, facecolor="white")
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, name: str) -> Path:
    """Write ``experiments/results/<name>`` (PNG), checking the size budget."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    fig.savefig(path, dpi=100, facecolor="white", bbox_inches="tight")
    size = path.stat().st_size
    if size > MAX_PNG_BYTES:
        raise RuntimeError(f"{path} has {size:,} bytes, more than {MAX_PNG_BYTES:,}")
    print(f"wrote {path.relative_to(ROOT)} ({size // 1000} kB)")
    return path


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table; floats with 4 significant digits."""

    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:.4g}" if math.isfinite(value) else str(value)
        return str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_markdown(name: str, title: str, body: str) -> Path:
    """Write ``experiments/results/<name>.md`` and print it."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.md"
    path.write_text(f"## {title}\n\n{body.strip()}\n")
    print(f"\n{path.read_text()}")
    return path
