"""Offline export: replay a finished log into writers (``cockpit-optim export LOG ...``)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from io import BytesIO
from typing import Any

from ..plotting import plot
from ..plotting.sources import Source, records_from

__all__ = ["add_parser", "export", "run_command"]


def export(source: Source, writers: Sequence[Any], *, image: bool = True) -> int:
    """Write every record of ``source`` (a log file, a run folder, a record list or a
    ``MonitoredOptimizer``) to each writer, add the cockpit view of all records as an image at the
    last step (``image=True``), and close the writers. Returns the number of records."""
    records = records_from(source)
    for record in records:
        for writer in writers:
            writer.write(record)
    if image and records:
        buffer = BytesIO()
        figure = plot(records)
        figure.savefig(buffer, format="png", dpi=60)
        for writer in writers:
            writer.image(buffer.getvalue(), records[-1]["step"])
    for writer in writers:
        writer.close()
    return len(records)


def add_parser(commands: Any, log_help: str) -> None:
    """The ``export`` subcommand of ``cockpit-optim``."""
    parser = commands.add_parser(
        "export", help="write a log to TensorBoard, Weights & Biases or MLflow"
    )
    parser.add_argument("log", metavar="LOG", help=log_help)
    parser.add_argument("--tensorboard", metavar="DIR", help="TensorBoard log folder")
    parser.add_argument(
        "--wandb", metavar="PROJECT", help="W&B project (WANDB_MODE=offline works offline)"
    )
    parser.add_argument(
        "--mlflow", metavar="URI", help="MLflow tracking URI (e.g. file:///path/mlruns)"
    )
    parser.add_argument("--experiment", help="MLflow experiment name")
    parser.add_argument("--name", help="name of the new W&B / MLflow run")
    parser.add_argument("--no-image", action="store_true", help="leave out the cockpit image")


def run_command(args: argparse.Namespace) -> str:
    """Carry out ``cockpit-optim export`` and describe what was written."""
    if not (args.tensorboard or args.wandb or args.mlflow):
        raise ValueError("export: name at least one of --tensorboard, --wandb, --mlflow")
    try:
        writers, targets = _writers(args)
    except ImportError as error:  # a missing extra: a usage error of the command
        raise ValueError(str(error)) from error
    count = export(args.log, writers, image=not args.no_image)
    return f"{count} records -> " + ", ".join(targets)


def _writers(args: argparse.Namespace) -> tuple[list[Any], list[str]]:
    writers, targets = [], []
    if args.tensorboard:
        from .tensorboard import TensorBoardWriter

        writers.append(TensorBoardWriter(args.tensorboard))
        targets.append(f"TensorBoard {os.fspath(args.tensorboard)}")
    if args.wandb:
        from .wandb import WandbWriter

        writers.append(WandbWriter(project=args.wandb, name=args.name))
        targets.append(f"W&B project {args.wandb}")
    if args.mlflow:
        from .mlflow import MLflowWriter

        writer = MLflowWriter(args.mlflow, args.experiment, run_name=args.name)
        writers.append(writer)
        targets.append(f"MLflow run {writer.run_id}")
    return writers, targets
