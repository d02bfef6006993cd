"""Controllers on the shipped demo problems through ``experiments/train.py``'s trainer: CABS on
the digits demo, evidence-based early stopping on the documented small noisy quadratic."""

from __future__ import annotations

import itertools
from pathlib import Path

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
def _threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


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
