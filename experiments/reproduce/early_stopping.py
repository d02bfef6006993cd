"""Evidence-based early stopping (Mahsereci et al. 2017; paper App. B.4) on a small data set.

Least squares with 20 weights on 100 training examples with label noise 1 (``data=noisy_quadratic
data.dim=20 data.train_size=100``), full-batch gradient descent (``data.batch_size=100``, plain
SGD, lr 0.1).  The ``EarlyStopping`` reading compares the gradient with the noise its 100 samples
leave in it; the controller stops once the average of 10 readings has been positive for 10 steps.
The script trains once with ``controller=early_stopping`` (it stops) and once with
``controller=none`` for the full 1500 steps (what would have happened), and draws both:

    python experiments/reproduce/early_stopping.py   # about 30 s; writes docs/images/early_stopping.png

The stopped run from the shell:

    python experiments/train.py data=noisy_quadratic data.dim=20 data.train_size=100 \\
        data.batch_size=100 model=logreg optimizer=sgd optimizer.lr=0.1 controller=early_stopping
"""

from __future__ import annotations

import numpy as np
from common import ROOT, figure, run_all, series

PICTURE = ROOT / "docs" / "images" / "early_stopping.png"
PROBLEM = [
    "data=noisy_quadratic",
    "data.dim=20",
    "data.train_size=100",
    "data.batch_size=100",
    "model=logreg",
    "optimizer=sgd",
    "optimizer.lr=0.1",
    "cockpit.instruments=[Loss,EarlyStopping]",
    "cockpit.track.schedule=interval",
    "trainer.eval_every=5",
    "trainer.steps=1500",
    "cockpit.layerwise=false",
]
WINDOW = 10  # the controller's default window


def main() -> None:
    (_, stopped), (_, full) = run_all(
        [
            ("early_stopping/stopped", [*PROBLEM, "controller=early_stopping"]),
            ("early_stopping/full", [*PROBLEM, "controller=none"]),
        ]
    )
    (action,) = [a for r in stopped for a in r.get("actions", [])]
    stop = action["step"]
    steps, test = series(full, "test_loss")
    _, train = series(full, "train_loss")
    best = int(steps[np.argmin(test)])
    at_stop = int(np.searchsorted(steps, stop))

    fig = figure(12, 4.2)
    loss_ax, reading_ax = fig.subplots(1, 2)
    loss_ax.plot(steps, train, color="#3b6fb6", label="training loss (100 examples)")
    loss_ax.plot(steps, test, color="#c8423b", label="test loss (1000 examples)")
    loss_ax.axvline(stop, color="black", ls="--", lw=1, label=f"stopped at step {stop}")
    loss_ax.plot(
        [best], [test.min()], "o", color="#c8423b", ms=5, label=f"lowest test loss, step {best}"
    )
    loss_ax.set(xlabel="step", ylabel="loss", yscale="log")
    loss_ax.set_title("Full run (controller=none) and the stop", fontsize=10, loc="left")
    loss_ax.legend(fontsize=8)

    reading_steps, reading = series(full, "EarlyStopping")
    trailing = np.convolve(reading, np.ones(WINDOW) / WINDOW, mode="valid")
    reading_ax.plot(
        reading_steps, reading, ".", color="#888888", ms=3, label="EarlyStopping reading"
    )
    reading_ax.plot(
        reading_steps[WINDOW - 1 :],
        trailing,
        color="black",
        lw=1.2,
        label=f"mean of the last {WINDOW}",
    )
    reading_ax.axhline(0, color="#4a9a5b", lw=1)
    reading_ax.axvline(stop, color="black", ls="--", lw=1)
    reading_ax.set(xlabel="step", ylabel="criterion (readings below -2 not shown)", ylim=(-2, 1.1))
    reading_ax.set_title("Gradient vs its noise: stop when > 0", fontsize=10, loc="left")
    reading_ax.legend(fontsize=8, loc="lower right")
    for ax in (loss_ax, reading_ax):
        ax.set_xscale("symlog", linthresh=10)
        ax.set_xlim(0, steps[-1])
    fig.tight_layout()
    PICTURE.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PICTURE, dpi=100, facecolor="white", bbox_inches="tight")
    print(f"wrote {PICTURE.relative_to(ROOT)}")
    print(f"{action['why']} (step {stop})")
    print(
        f"at the stop: training loss {train[at_stop]:.4g}, test loss {test[at_stop]:.4g}; lowest "
        f"test loss {test.min():.4g} at step {best}; after 1500 steps: training {train[-1]:.4g}, "
        f"test {test[-1]:.4g}"
    )


if __name__ == "__main__":
    main()
