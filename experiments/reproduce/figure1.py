"""Paper Figure 1: two runs that both train, with (almost) the same loss curve, but opposite
Alpha distributions: one undershoots the valley floor (Alpha < 0), the other overshoots it
(Alpha > 0).

The noisy quadratic (``data=noisy_quadratic model=logreg``: least squares in 100 dimensions,
label noise 1) with plain SGD and batch 32; three small and three large learning rates.  The
script keeps the runs that train (final training loss at most a quarter of the initial one),
picks the pair (one small, one large) with median Alpha of opposite sign whose training-loss
curves are closest, and shows their loss, their Alpha histograms and their distance from the
initialization.

    python experiments/reproduce/figure1.py   # about 1 minute on 2 cores
"""

from __future__ import annotations

import itertools
import statistics

import numpy as np
from common import alphas, figure, run_all, save, series, table, write_markdown

SMALL = [0.002, 0.005, 0.01]
LARGE = [0.6, 0.7, 0.75]
COLORS = ("#3b6fb6", "#c8423b")
SETTINGS = [
    "data=noisy_quadratic",
    "model=logreg",
    "optimizer=sgd",
    "cockpit.instruments=[Loss,Alpha,Distance,UpdateSize]",
    "cockpit.track.schedule=interval",
    "cockpit.track.interval=2",
    "trainer.steps=1000",
    "trainer.eval_every=25",
    "cockpit.layerwise=false",
]
#: A run trains when its final training loss is at most this fraction of the initial one.
TRAINS = 0.25


def distance(a: list[dict], b: list[dict]) -> float:
    """Mean absolute difference of the log training losses at the common evaluation steps."""
    return float(
        np.mean(np.abs(np.log(series(a, "train_loss")[1]) - np.log(series(b, "train_loss")[1])))
    )


def trains(records: list[dict]) -> bool:
    losses = series(records, "train_loss")[1]
    return bool(np.isfinite(losses).all() and losses[-1] <= TRAINS * losses[0])


def main() -> None:
    lrs = SMALL + LARGE
    jobs = [(f"figure1/lr-{lr:g}", [*SETTINGS, f"optimizer.lr={lr}"]) for lr in lrs]
    runs = dict(zip(lrs, run_all(jobs)))
    medians = {lr: statistics.median(alphas(records)) for lr, (_, records) in runs.items()}
    pairs = [
        (s, g)
        for s, g in itertools.product(SMALL, LARGE)
        if medians[s] < 0 < medians[g] and trains(runs[s][1]) and trains(runs[g][1])
    ]
    small, large = min(pairs, key=lambda p: distance(runs[p[0]][1], runs[p[1]][1]))
    gap = distance(runs[small][1], runs[large][1])

    fig = figure(15, 4.2)
    loss_ax, alpha_ax, distance_ax = fig.subplots(1, 3)
    bins = np.linspace(-1.5, 1.5, 31)
    rows = []
    for color, lr in zip(COLORS, (small, large)):
        summary, records = runs[lr]
        label = f"lr = {lr:g}"
        loss_ax.plot(*series(records, "train_loss"), color=color, marker="o", ms=3, label=label)
        values = np.asarray(alphas(records))
        alpha_ax.hist(
            np.clip(values, bins[0], bins[-1]), bins=bins, color=color, alpha=0.6, label=label
        )
        distance_ax.plot(*series(records, "Distance"), color=color, label=label)
        losses = series(records, "train_loss")[1]
        rows.append(
            [
                f"{lr:g}",
                medians[lr],
                float(values.mean()),
                float((values > 0).mean()),
                float(losses[0]),
                float(losses[-1]),
                summary["final"]["test_loss"],
                float(series(records, "Distance")[1][-1]),
            ]
        )
    loss_ax.set(xlabel="step", ylabel="training loss (full training set)", yscale="log")
    loss_ax.set_title("Loss curves look alike", fontsize=10, loc="left")
    alpha_ax.set(xlabel=r"$\alpha$ (clipped to $\pm$1.5)", ylabel="readings")
    alpha_ax.set_title(r"$\alpha$ distributions are opposite", fontsize=10, loc="left")
    distance_ax.set(xlabel="step", ylabel=r"$\|\theta_t - \theta_0\|$")
    distance_ax.set_title("Distance from the initialization", fontsize=10, loc="left")
    for ax in (loss_ax, alpha_ax, distance_ax):
        ax.legend(fontsize=9)
    fig.tight_layout()
    save(fig, "figure1.png")

    candidates = ", ".join(
        f"{lr:g}: {medians[lr]:+.2f}{'' if trains(runs[lr][1]) else ' (does not train)'}"
        for lr in lrs
    )
    header = [
        "lr",
        "median Alpha",
        "mean Alpha",
        "share Alpha > 0",
        "initial training loss",
        "final training loss",
        "final test loss",
        "final distance",
    ]
    (_, small_records), (_, large_records) = runs[small], runs[large]
    first = [float(series(r, "train_loss")[1][0]) for r in (small_records, large_records)]
    below = float((np.asarray(alphas(small_records)) < 0).mean())
    above = float((np.asarray(alphas(large_records)) > 0).mean())
    ratio = rows[1][-1] / rows[0][-1]
    evaluations = len(series(small_records, "train_loss")[1])
    body = f"""
Noisy quadratic (least squares in 100 dimensions, 2000 training examples, label noise 1, so the
best possible loss is about 1), plain SGD with batch 32, 1000 steps; Alpha every 2 steps. Median
Alpha of the six candidate learning rates: {candidates}. The pair with the closest
training-loss curves among those that train and have median Alpha of opposite sign: lr {small:g}
and lr {large:g} (mean absolute difference of the log losses at the {evaluations} evaluations: {gap:.3f}).

{table(header, rows)}

![figure 1](figure1.png)

Reproduced on the noisy quadratic. (A search over learning rates from 0.01 to 1.5 on the digits
MLP and CNN found no such pair: there, every overshooting rate that still trains also trains much
faster than any undershooting one.) Both runs train, from a training loss of {first[0]:.3g} and {first[1]:.3g} at the first
evaluation (after one update: the large rate's first step already halves the loss) to about 1.5
within 150 steps, and then stay at the same
level, close to the noise floor of about 1: the small rate's curve smooth and still creeping down,
the large rate's bouncing around it. The curves alone cannot say whether the learning rate should
go up or down. Alpha can: {below:.0%} of the small rate's readings are below 0 (steps that stop
short of the valley floor along the update), {above:.0%} of the large rate's are above 0 (steps
that cross it), and the large rate travels {ratio:.1f} times as far from the initialization. The
undershooting distribution sits closer to 0 than the idealized -1 of the paper's illustration:
Alpha is fitted to noisy mini-batch observations of loss and slope from two different batches,
which pulls it towards 0 when a step changes the loss by less than the mini-batch noise, as the
small rate's steps do once the loss is near its floor.
"""
    write_markdown("figure1", "Figure 1: same loss curve, opposite Alpha", body)


if __name__ == "__main__":
    main()
