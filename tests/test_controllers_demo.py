"""Controllers on the shipped demo problems through ``experiments/train.py``'s trainer: CABS on
the digits demo, evidence-based early stopping on the documented small noisy quadratic."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from cockpit_optim.experiment import register_configs
from cockpit_optim.experiment.trainer import Trainer

CONF = Path(__file__).resolve().parents[1] / "conf"
QUIET = [
    "trainer.progress=false",
    "trainer.threads=1",
    "trainer.checkpoint_every=null",
    "cockpit.plot_every=null",
    "cockpit.layerwise=false",
    "cockpit.track.schedule=interval",
]


@pytest.fixture(autouse=True)
def _as_a_user_runs_it():
    """float32 parameters (the default outside the test suite); the thread count restored."""
    threads, dtype = torch.get_num_threads(), torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    yield
    torch.set_num_threads(threads)
    torch.set_default_dtype(dtype)


def config(*overrides: str) -> DictConfig:
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=[*QUIET, *overrides])


def test_cabs_changes_the_batch_more_than_once_on_the_demo(tmp_path):
    # the demo (digits, small CNN, momentum SGD) with controller=cabs; only the readings CABS needs
    cfg = config("controller=cabs", "cockpit.instruments=[Loss,CABS]", "trainer.steps=300")
    assert cfg.optimizer.name == "momentum" and cfg.data.name == "digits"
    trainer = Trainer(cfg, tmp_path)
    with pytest.warns(UserWarning, match="effective learning rate"):
        trainer.run()
    history = trainer.optimizer.history
    changes = [a for r in history for a in r.get("actions", []) if a["what"] == "batch_size"]
    assert len(changes) >= 3
    assert changes[0]["from"] == 64 and changes[0]["step"] == 0
    sizes = [r["batch_size"] for r in history]
    assert len(set(sizes)) >= 4 and max(sizes[1:]) > min(sizes[1:])
    for before, after in itertools.pairwise(changes):  # each change continues from the last one
        assert after["from"] == before["to"]
    assert all(16 <= a["to"] <= len(trainer.data.train) for a in changes)


def test_evidence_early_stopping_fires_on_the_documented_small_data_set(tmp_path):
    # docs/controllers.md: full-batch least squares, 20 weights, 100 examples, label noise 1
    cfg = config(
        "data=noisy_quadratic",
        "data.dim=20",
        "data.train_size=100",
        "data.batch_size=100",
        "model=logreg",
        "optimizer=sgd",
        "optimizer.lr=0.1",
        "controller=early_stopping",
        "cockpit.instruments=[Loss,EarlyStopping]",
        "trainer.steps=300",
        "trainer.eval_every=100",
    )
    trainer = Trainer(cfg, tmp_path)
    summary = trainer.run()
    opt, history = trainer.optimizer, trainer.optimizer.history
    assert opt.should_stop and opt.stop_reason.startswith("EvidenceEarlyStopping at step")
    assert summary["stop_reason"] == opt.stop_reason
    # the stop, recomputed from the readings: the first step with 10 consecutive positive
    # means of the last 10 readings
    steps = np.array([r["step"] for r in history])
    values = np.array([r["EarlyStopping"] for r in history])
    assert np.isfinite(values).all() and values[0] < 0
    means = np.convolve(values, np.ones(10) / 10, mode="valid")
    positive = np.convolve((means > 0).astype(int), np.ones(10, dtype=int), mode="valid")
    assert (positive == 10).any()
    expected = steps[9 + 9 + int(np.argmax(positive == 10))]
    ((action,),) = [r["actions"] for r in history if r.get("actions")]
    assert action["what"] == "stop" and action["step"] == expected == steps[-1]
    assert 25 <= expected <= 45  # docs/controllers.md reports step 33
    assert trainer.step == expected + 1 < 300
