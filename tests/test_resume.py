"""Resuming experiments: the run's own config (never Hydra's defaults), ``.hydra/`` untouched,
checkpoints loaded with ``weights_only=True`` and written atomically, a stopped run stays stopped."""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from cockpit_optim.controllers import EvidenceEarlyStopping
from omegaconf import OmegaConf
from test_train import FAST, config, run

from cockpit_optim import load_log
from cockpit_optim.experiment import ConfigError, Trainer
from cockpit_optim.experiment.runs import resume_config, resume_folder
from cockpit_optim.experiment.trainer import CHECKPOINT

ROOT = Path(__file__).resolve().parents[1]
TRAIN = [sys.executable, str(ROOT / "experiments" / "train.py")]


def _hydra_files(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run_dir / ".hydra").iterdir())}


def _strip_time(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "Time"} for r in records]


def test_the_readme_resume_command_takes_the_runs_own_config(tmp_path):
    folder = tmp_path / "run"
    started = ["model=mlp", "model.hidden=[8]", "optimizer=sgd", "cockpit=economy", *FAST]
    first = subprocess.run(
        [*TRAIN, f"hydra.run.dir={folder}", "trainer.steps=6", *started],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert first.returncode == 0, first.stderr[-2000:]
    assert not (folder / "train.log").exists()  # Hydra's log file stays empty: not written
    hydra = _hydra_files(folder)
    before = load_log(folder)

    resumed = subprocess.run(
        [*TRAIN, f"hydra.run.dir={folder}", "trainer.resume=true", "trainer.steps=9"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]  # was: refused (model differs)
    assert f"resumed {folder} at step 6" in resumed.stdout
    assert _hydra_files(folder) == hydra  # was: overwritten with the defaults
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["steps"] == 9
    assert summary["config"]["model"] == {
        "name": "mlp",
        "_target_": "cockpit_optim.experiment.models.mlp_for",
        "hidden": [8],
        "activation": "relu",
    }
    assert summary["config"]["optimizer"]["name"] == "sgd"
    after = load_log(folder)
    assert _strip_time(after[: len(before)]) == _strip_time(before)
    # the resumed steps 6 to 8, but the last (its Alpha would complete at step 9)
    assert [r["step"] for r in after[len(before) :]] == [6, 7]


def _saved_run(tmp_path: Path, *overrides: str) -> Path:
    """A run folder as Hydra leaves it (``.hydra/config.yaml`` of the composed config)."""
    (tmp_path / ".hydra").mkdir()
    OmegaConf.save(config(*overrides), tmp_path / ".hydra" / "config.yaml")
    return tmp_path


def test_resume_config_changes_only_trainer_settings(tmp_path):
    folder = _saved_run(tmp_path, "model=mlp", "optimizer.lr=0.3", "data.batch_size=16")
    cfg = resume_config(
        folder, [f"hydra.run.dir={folder}", "trainer.steps=77", "trainer.resume=true"]
    )
    assert (cfg.model.name, cfg.optimizer.lr, cfg.data.batch_size) == ("mlp", 0.3, 16)
    assert (cfg.trainer.steps, cfg.trainer.resume) == (77, True)
    assert OmegaConf.to_container(cfg, enum_to_str=True) == OmegaConf.to_container(
        config("model=mlp", "optimizer.lr=0.3", "data.batch_size=16", "trainer.steps=77",
               "trainer.resume=true"), enum_to_str=True
    )  # fmt: skip
    for refused in ("model=logreg", "optimizer.lr=0.1", "~trainer.seed", "trainer.steps=3,4"):
        with pytest.raises(
            ConfigError, match=rf"cannot resume .*{re.escape(refused)}.*only trainer"
        ):
            resume_config(folder, [refused])
    with pytest.raises(ConfigError, match=r"trainer\.steps"):  # types are checked as at composition
        resume_config(folder, ["trainer.steps=many"])
    with pytest.raises(ConfigError, match=r"no \.hydra/config\.yaml"):
        resume_config(tmp_path / "elsewhere")


def test_a_checkpoint_without_newer_default_fields_resumes(tmp_path):
    """A checkpoint whose config lacks fields added to the schemas later (here the data and model
    ``_target_``) is compared on the schemas: the missing fields take their defaults."""
    run(tmp_path, "trainer.steps=3", "cockpit=off")
    state = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    for group in ("data", "model"):
        del state["config"][group]["_target_"]
    torch.save(state, tmp_path / CHECKPOINT)
    resumed = run(tmp_path, "trainer.steps=5", "cockpit=off", "trainer.resume=true")
    assert resumed["steps"] == 5
    with pytest.raises(ConfigError, match="the config of model differs"):
        Trainer(config(*FAST, "cockpit=off", "model=mlp", "trainer.resume=true"), tmp_path)


def test_resume_folder_reads_the_command_line():
    assert resume_folder(["hydra.run.dir=runs/a", "trainer.resume=true"]) == Path("runs/a")
    assert resume_folder(["hydra.run.dir=runs/a", "trainer.resume=false"]) is None
    assert resume_folder(["model=mlp"]) is None
    assert resume_folder(["-m", "trainer.resume=true", "optimizer.lr=0.1,0.2"]) is None
    with pytest.raises(ConfigError, match=r"hydra.run.dir=<run folder>"):
        resume_folder(["trainer.resume=true"])


# --------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("controller", ["alpha_lr", "cabs"])
def test_checkpoints_load_with_weights_only(tmp_path, controller):
    trainer = Trainer(
        config(*FAST, "cockpit=full", f"controller={controller}", "model=mlp",
               "model.hidden=[8]", "trainer.steps=8", "cockpit.plot_every=null"),
        tmp_path,
    )  # fmt: skip
    batches = iter(trainer.sampler)
    for _ in range(3):
        trainer.train_step(next(batches))
    trainer.save_checkpoint()
    assert trainer.optimizer.state_dict()["monitor"]["pending"] is not None  # Alpha waits
    state = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert state["step"] == 3 and state["optimizer"]["monitor"]["step"] == 3


class _Payload:
    """Unpickling this runs code (it creates a file)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    run(tmp_path, "trainer.steps=3", "cockpit=off")
    state = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    marker = tmp_path / "code-ran"
    state["model"] = _Payload(str(marker))
    torch.save(state, tmp_path / CHECKPOINT)
    with pytest.raises(ConfigError, match="holds objects other than tensors"):
        Trainer(config(*FAST, "trainer.resume=true", "cockpit=off"), tmp_path)
    assert not marker.exists()  # was: torch.load(..., weights_only=False) ran it


def test_checkpoints_are_written_atomically(tmp_path, monkeypatch):
    trainer = Trainer(config(*FAST, "cockpit=off", "trainer.steps=4"), tmp_path)
    synced = []
    fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or fsync(fd))
    trainer.save_checkpoint()
    assert len(synced) == 2  # the file, then the folder holding the rename
    good = (tmp_path / CHECKPOINT).read_bytes()

    def full_disk(state, handle):
        handle.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    trainer.step = 2
    with pytest.warns(UserWarning, match="previous checkpoint stays"):
        trainer.save_checkpoint()
    assert (tmp_path / CHECKPOINT).read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT]


# ---------------------------------------------------------------------------- stopping
def test_an_early_stopped_run_resumed_stays_stopped(tmp_path, monkeypatch):
    def stop_at_step_4(self, record, optimizer):
        if record["step"] >= 4 and not optimizer.should_stop:
            optimizer.should_stop = True
            optimizer.stop_reason = f"stopped at step {record['step']}"
        return []

    settings = ["controller=early_stopping", "cockpit=economy", "trainer.steps=30"]
    monkeypatch.setattr(EvidenceEarlyStopping, "observe", stop_at_step_4)
    stopped = run(tmp_path, *settings, "trainer.checkpoint_every=null")
    monkeypatch.undo()
    assert stopped["steps"] < 10 and stopped["stop_reason"] == "stopped at step 4"
    log = load_log(tmp_path)

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        resumed = run(tmp_path, *settings, "trainer.resume=true")
    assert resumed["steps"] == stopped["steps"]  # was: trained on to step 30
    assert resumed["stop_reason"] == stopped["stop_reason"]
    assert _strip_time(load_log(tmp_path)) == _strip_time(log)
