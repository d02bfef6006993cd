"""``cockpit-optim``: draw, animate or summarize a cockpit log from the shell."""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .export.convert import add_parser as add_export_parser
from .export.convert import run_command as export_command
from .log import LOG_NAME
from .plotting import animate, plot
from .plotting.animate import GIF_DPI
from .plotting.gauges import controller_actions
from .plotting.panels import DPI
from .plotting.sources import latest, records_from

__all__ = ["main", "summary"]

SKIPPED = {"step", "Time"}  # shown in the header instead of the table
ACTIONS_LISTED = 10
TREND_WINDOW = 20  # newest finite readings the trend test looks at
TREND_MIN = 8  # fewer readings: no trend is judged
TREND_P = 0.01  # significance level of the trend test


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cockpit-optim", description="Draw, animate or summarize a cockpit log."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    log_help = f"log file or folder holding {LOG_NAME}"

    plot = commands.add_parser("plot", help="draw the cockpit view (PNG, PDF, SVG)")
    plot.add_argument("log", metavar="LOG", help=log_help)
    plot.add_argument(
        "-o",
        "--output",
        help="image to write (default: next to the log, cockpit_linear-steps.png, "
        "cockpit_log-steps.png or cockpit_layerwise_step<N>.png; never the run's own pictures)",
    )
    plot.add_argument("--layerwise", action="store_true", help="one histogram per parameter")
    plot.add_argument("--log-steps", action="store_true", help="log-spaced step axis")
    plot.add_argument("--dpi", type=float, default=DPI, help=f"pixels per inch ({DPI})")
    plot.add_argument(
        "--last-fraction",
        type=float,
        default=0.1,
        metavar="F",
        help="newest fraction of Alpha readings in the second histogram (0.1)",
    )

    animate = commands.add_parser("animate", help="write a GIF of the cockpit over training")
    animate.add_argument("log", metavar="LOG", help=log_help)
    animate.add_argument("-o", "--output", help="GIF to write (default: next to the log)")
    animate.add_argument("--frames", type=int, default=30, help="number of frames (30)")
    animate.add_argument("--fps", type=float, default=4.0, help="frames per second (4)")
    animate.add_argument("--log-steps", action="store_true", help="log-spaced step axis")
    animate.add_argument(
        "--dpi", type=float, default=GIF_DPI, help=f"pixels per inch ({GIF_DPI:g}: 16 x 12 inches)"
    )

    table = commands.add_parser("summary", help="table of the newest readings and their trends")
    table.add_argument("log", metavar="LOG", help=log_help)
    add_export_parser(commands, log_help)
    return parser


def _name(args: argparse.Namespace, records: Sequence[dict]) -> str:
    """Default picture name: says what it shows, and never that of a picture a run draws itself
    (``cockpit.png``, ``cockpit_layerwise.png``)."""
    if args.layerwise:
        record = latest(records, "GradHist1d")
        return (
            f"cockpit_layerwise_step{record['step']}.png"
            if record
            else "cockpit_layerwise_no-histogram.png"
        )
    return f"cockpit_{'log' if args.log_steps else 'linear'}-steps.png"


def _default_output(log: str, name: str) -> Path:
    path = Path(log)
    return (path if path.is_dir() else path.parent) / name


def _format(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def _trend(values: Sequence[float]) -> str:
    """Kendall's tau of the newest (up to ``TREND_WINDOW``) finite readings against their order:
    "up"/"down" only when its two-sided p-value is below ``TREND_P``, else "flat". The change is the
    median of the newer half against that of the older half (relative when both have the same
    sign, else absolute)."""
    from scipy.stats import kendalltau  # slow to import; only summary needs it

    window = list(values[-TREND_WINDOW:])
    if len(window) < TREND_MIN:
        return "-"
    if max(window) == min(window):
        return "flat"
    tau, p_value = kendalltau(range(len(window)), window)
    if not p_value < TREND_P:
        return f"flat (p={p_value:.2g})"
    half = len(window) // 2
    before, recent = statistics.median(window[:half]), statistics.median(window[-half:])
    change = recent - before
    word = "up" if tau > 0 else "down"
    if before != 0 and recent * before > 0:
        return f"{change / abs(before):+.0%} {word} (p={p_value:.1g})"
    return f"{change:+.3g} {word} (p={p_value:.1g})"


def summary(records: Sequence[dict]) -> str:
    """A text table of every scalar reading: newest value, its step, trend and nan count."""
    rows: dict[str, list[tuple[int, object]]] = {}
    for record in records:
        for key, value in record.items():
            if key not in SKIPPED and isinstance(value, int | float | str):
                rows.setdefault(key, []).append((record["step"], value))
    lines = [("reading", "newest", "step", "trend", "nan")]
    for key, readings in rows.items():
        step, newest = readings[-1]
        if isinstance(newest, str | bool):
            lines.append((key, str(newest), str(step), "", ""))
            continue
        numbers = [float(v) for _, v in readings if isinstance(v, int | float)]
        finite = [v for v in numbers if math.isfinite(v)]
        missing = len(numbers) - len(finite)
        lines.append(
            (
                key,
                _format(float(newest)),
                str(step),
                _trend(finite),
                str(missing) if missing else "",
            )
        )
    widths = [max(len(row[i]) for row in lines) for i in range(5)]
    table = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in lines]
    table.insert(1, "  ".join("-" * w for w in widths))
    table += _notes(records)
    return "\n".join(table)


def _notes(records: Sequence[dict]) -> list[str]:
    notes = [
        "",
        f"trend: Kendall's tau of the newest (up to {TREND_WINDOW}, at least {TREND_MIN}) finite "
        f"readings against their order; up/down when p < {TREND_P}, with the change of the median "
        "of their newer half against the older half",
    ]
    for key in ("GradHist1d", "GradHist2d"):
        newest = next((r for r in reversed(records) if isinstance(r.get(key), dict)), None)
        if newest is not None:
            hist = newest[key]
            outside = hist.get("outside", hist.get("underflow", 0) + hist.get("overflow", 0))
            notes.append(
                f"{key} (step {newest['step']}): {hist.get('binned', 0):,} of "
                f"{hist.get('population', 0):,} elements binned, {outside:,} outside the range"
            )
    actions = controller_actions(records)
    if actions:
        shown = actions[-ACTIONS_LISTED:]
        newest = f", the newest {len(shown)}" if len(shown) < len(actions) else ""
        notes += ["", f"controller actions ({len(actions)}{newest}):"]
        for step, action in shown:
            change = f"{_value(action.get('from'))} -> {_value(action.get('to'))}"
            notes.append(
                f"  step {step}: {action.get('controller', '?')} set {action.get('what', '?')} "
                f"{change} ({action.get('why', '')})"
            )
    return notes


def _value(value: object) -> str:
    return _format(value) if isinstance(value, float) else str(value)


def _header(path: str, records: Sequence[dict]) -> str:
    steps = [r["step"] for r in records]
    text = f"{path}: {len(records)} records, steps {min(steps)} to {max(steps)}"
    times = [r["Time"] for r in records if isinstance(r.get("Time"), int | float)]
    if len(times) > 1:
        text += f", {max(times) - min(times):.1f} s between the first and newest reading"
    return text


def _run(args: argparse.Namespace) -> None:
    if args.command == "export":
        print(export_command(args))
        return
    records = records_from(args.log)
    if not records:
        raise ValueError(f"{args.log}: the log has no records")
    if args.command == "summary":
        print(_header(args.log, records))
        print(summary(records))
        return
    if args.dpi <= 0:
        raise ValueError(f"--dpi must be positive, got {args.dpi}")
    if args.command == "plot":
        output = (
            Path(args.output) if args.output else _default_output(args.log, _name(args, records))
        )
        options = {"last_fraction": args.last_fraction, "log_steps": args.log_steps}
        plot(records, output, layerwise=args.layerwise, dpi=args.dpi, **options)
    else:
        output = Path(args.output) if args.output else _default_output(args.log, "cockpit.gif")
        animate(
            records,
            output,
            frames=args.frames,
            fps=args.fps,
            dpi=args.dpi,
            log_steps=args.log_steps,
        )
    print(output)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``cockpit-optim``; returns the exit status (0 ok, 2 unusable input)."""
    args = _parser().parse_args(argv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            _run(args)
            status = 0
        except (OSError, ValueError, TypeError) as error:
            print(f"cockpit-optim: error: {error}", file=sys.stderr)
            status = 2
    for warning in caught:
        print(f"cockpit-optim: warning: {warning.message}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
