"""The bare API in a hand-written loop: the small CNN on scikit-learn's bundled 8x8 digits,
tracked with the full cockpit, no Hydra.

Prints a table of the first and newest readings and writes the log to ``demo_log/cockpit.jsonl``.
``make demo`` runs the configured entry point ``experiments/train.py`` instead (same model and data);
run this one with ``python experiments/demo.py --steps 300``.
"""

from __future__ import annotations

import argparse
import math
import warnings
from pathlib import Path

import torch
from tqdm import tqdm

from cockpit_optim import MonitoredOptimizer, ReadingWarning, load_log, schedules
from cockpit_optim.experiment import build_model, load_data
from cockpit_optim.experiment.config import DigitsCNNConfig, DigitsConfig


def summarize(record: dict) -> list[tuple[str, str]]:
    rows = []
    for key, value in record.items():
        if isinstance(value, float):
            rows.append((key, f"{value:.4g}" if math.isfinite(value) else str(value)))
        elif key in ("GradHist1d", "GradHist2d"):
            rows.append((key, f"{value['binned']:,}/{value['population']:,} binned"))
        elif key in ("step", "batch_size") or key.endswith(("_hvps", "_curvature", "_converged")):
            rows.append((key, str(value)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--instruments", default="full")
    parser.add_argument("--log-dir", default="demo_log")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    data = load_data(DigitsConfig(seed=args.seed))
    x, y = data.batch(data.train, slice(None))
    model, loss_fn = build_model(DigitsCNNConfig(), data.info), data.loss_fn()
    log_dir = Path(args.log_dir)
    (log_dir / "cockpit.jsonl").unlink(missing_ok=True)
    opt = MonitoredOptimizer(
        torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9),
        model,
        loss_fn,
        instruments=args.instruments,
        track=schedules.logarithmic(end=args.steps - 2, points=40),
        log_dir=log_dir,
    )
    warnings.simplefilter("ignore", ReadingWarning)
    for step in tqdm(range(args.steps), desc="training", unit="step"):
        start = (step * args.batch_size) % (len(y) - args.batch_size)
        xb, yb = x[start : start + args.batch_size], y[start : start + args.batch_size]
        opt.zero_grad()
        loss = loss_fn(model(xb), yb)
        loss.backward()
        opt.step()
    opt.close()  # completes the last record (its Alpha waits for a next step) and detaches

    with torch.no_grad():
        accuracy = float((model(x).argmax(1) == y).float().mean())
        test_x, test_y = data.batch(data.test, slice(None))
        test_accuracy = float((model(test_x).argmax(1) == test_y).float().mean())
    records = load_log(log_dir)
    print(
        f"\n{len(records)} records in {log_dir / 'cockpit.jsonl'}; train accuracy {accuracy:.3f}, "
        f"test accuracy {test_accuracy:.3f}"
    )
    first, last = records[0], records[-1]
    print(
        f"\n{'reading':<16}{'first (step ' + str(first['step']) + ')':>22}"
        f"{'newest (step ' + str(last['step']) + ')':>24}"
    )
    earlier = dict(summarize(first))
    for key, value in summarize(last):
        if key != "step":
            print(f"{key:<16}{earlier.get(key, ''):>22}{value:>24}")


if __name__ == "__main__":
    main()
