"""``experiments/train.py`` and its configs: composition, validation errors, short runs per
data/model pair, evaluation metrics in the records, exact resume, and a Hydra multirun."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cockpit_optim.controllers import (
    AdaptiveBatchSampler,
    AlphaLR,
    CABSBatchSize,
    EvidenceEarlyStopping,
    GradientTestBatchSize,
)
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import DictConfig
from PIL import Image
from test_experiment_data import needs_torchvision

from cockpit_optim import load_log
from cockpit_optim.experiment import ConfigError, register_configs, train, validate
from cockpit_optim.experiment.trainer import (
    CHECKPOINT,
    Trainer,
    build_controllers,
    build_optimizer,
)

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
CHEAP = "cockpit.instruments=[Loss,GradNorm,Distance,UpdateSize,Time]"
FAST = ["trainer.progress=false", "trainer.threads=1", "cockpit.track.schedule=interval"]


@pytest.fixture(autouse=True)
def _threads():
    """The runs set one thread (trainer.threads=1); give the next tests their setting back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def config(*overrides: str) -> DictConfig:
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def run(folder: Path, *overrides: str) -> dict:
    return train(config(*FAST, *overrides), folder)


# ---------------------------------------------------------------------------- composition
def test_defaults_are_the_demo():
    cfg = config()
    validate(cfg)
    assert (cfg.data.name, cfg.model.name, cfg.cockpit.name) == ("digits", "digits_cnn", "full")
    assert cfg.cockpit.track.schedule == "logarithmic"
    assert cfg.controller.name == "none"


@pytest.mark.parametrize(
    "group", ["data", "model", "optimizer", "cockpit", "controller", "trainer"]
)
def test_every_group_option_composes_and_validates(group):
    for option in options(group):
        cfg = config(f"{group}={option}")
        validate(cfg)
        if group != "trainer":
            assert cfg[group].name == option


def test_every_optimizer_and_controller_option_builds():
    params = [torch.nn.Parameter(torch.zeros(3))]
    for option in options("optimizer"):
        cfg = config(f"optimizer={option}").optimizer
        optimizer = build_optimizer(cfg, params)
        assert optimizer.param_groups[0]["lr"] == cfg.lr
    sampler = AdaptiveBatchSampler(100, 10)
    kinds = {"none": [], "cabs": [CABSBatchSize], "gradient_test": [GradientTestBatchSize],
             "alpha_lr": [AlphaLR], "early_stopping": [EvidenceEarlyStopping]}  # fmt: skip
    for option in options("controller"):
        built = build_controllers(config(f"controller={option}").controller, sampler)
        assert [type(c) for c in built] == kinds[option]
    cabs = build_controllers(config("controller=cabs").controller, sampler)[0]
    assert cabs.max_batch_size == 100  # capped at the data set size


def test_cockpit_options_select_their_instruments():
    assert list(config("cockpit=off").cockpit.instruments) == []
    for name in ("economy", "business", "full"):
        assert list(config(f"cockpit={name}").cockpit.instruments) == [name]


def test_misspelt_key_fails_at_composition():
    with pytest.raises(ConfigCompositionException) as error:
        config("optimizer.lrr=0.1")
    assert "lrr" in str(error.value.__cause__) or "lrr" in str(error.value)


def test_unknown_model_lists_the_choices():
    with pytest.raises(MissingConfigException) as error:
        config("model=resnet")
    message = str(error.value)
    assert "resnet" in message
    assert all(name in message for name in options("model"))


def test_bad_enum_value_lists_the_choices():
    with pytest.raises(ConfigCompositionException) as error:
        config("model.activation=swish")
    assert "relu, sigmoid, tanh, gelu" in str(error.value.__cause__)


def test_unknown_instrument_lists_the_valid_names():
    cfg = config("cockpit.instruments=[economy,HessMaxEw]")
    with pytest.raises(ConfigError, match=r"'HessMaxEw'.*economy.*HessMaxEV"):
        validate(cfg)


def test_unknown_name_set_directly_lists_the_choices():
    cfg = config("data.name=imagenet")
    with pytest.raises(ConfigError, match=r"imagenet.*cifar10.*digits"):
        validate(cfg)


def test_training_length_must_be_steps_or_epochs():
    with pytest.raises(ConfigError, match="exactly one"):
        validate(config("trainer.steps=null"))
    with pytest.raises(ConfigError, match="exactly one"):
        validate(config("trainer.epochs=2"))


def test_incompatible_model_and_data_fail_clearly(tmp_path):
    with pytest.raises(ConfigError, match="3c3d cannot take inputs of shape"):
        Trainer(config(*FAST, "model=3c3d"), tmp_path)
    with pytest.raises(ConfigError, match="use transformer"):
        Trainer(config(*FAST, "data=sequence", "model=mlp"), tmp_path)


# ------------------------------------------------------------------------------------ runs
def test_short_run_writes_log_pictures_summary_and_checkpoint(tmp_path):
    summary = run(
        tmp_path,
        "trainer.steps=12",
        "trainer.eval_every=5",
        "cockpit=economy",
        "cockpit.track.interval=2",
    )
    for name in ("cockpit.jsonl", "cockpit.png", "cockpit_layerwise.png", CHECKPOINT):
        assert (tmp_path / name).is_file(), name
    with Image.open(tmp_path / "cockpit.png") as image:
        assert image.format == "PNG"
    assert json.loads((tmp_path / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert summary["steps"] == 12 and summary["config"]["model"]["name"] == "digits_cnn"
    assert set(summary["final"]) == {"train_loss", "train_accuracy", "test_loss", "test_accuracy"}
    records = load_log(tmp_path)
    # tracked: even steps and the evaluation steps (multiples of 5), not the last step (its
    # record could not complete Alpha)
    assert [r["step"] for r in records] == [0, 2, 4, 5, 6, 8, 10]
    evaluated = [r["step"] for r in records if "test_accuracy" in r]
    assert evaluated == [0, 5, 10]
    assert all("Alpha" in r and "GradHist1d" in r for r in records)


@pytest.mark.parametrize(
    ("data", "model", "extra"),
    [
        ("digits", "mlp", ["model.hidden=[16]"]),
        ("digits", "logreg", []),
        ("noisy_quadratic", "logreg", ["optimizer=sgd", "optimizer.lr=0.05"]),
        ("synthetic", "mlp", ["model.hidden=[16,16]", "model.activation=tanh"]),
        ("sequence", "transformer", [CHEAP, "optimizer=adam", "data.train_size=256"]),
    ],
)
def test_few_steps_per_data_and_model(tmp_path, data, model, extra):
    summary = run(tmp_path, f"data={data}", f"model={model}", "trainer.steps=6", *extra)
    records = load_log(tmp_path)
    assert len(records) >= 5 and summary["records"] == len(records)
    assert all(torch.isfinite(torch.tensor(r["Loss"])) for r in records)
    assert "test_loss" in records[0]
    assert ("test_accuracy" in summary["final"]) == (data != "noisy_quadratic")


def test_cockpit_off_records_only_the_evaluations(tmp_path):
    run(tmp_path, "cockpit=off", "trainer.steps=9", "trainer.eval_every=4")
    records = load_log(tmp_path)
    assert [r["step"] for r in records] == [0, 4, 8]
    assert set(records[0]) == {
        "step",
        "lr",
        "train_loss",
        "train_accuracy",
        "test_loss",
        "test_accuracy",
    }


def test_cockpit_off_still_tracks_what_a_controller_reads(tmp_path):
    run(tmp_path, "cockpit=off", "controller=alpha_lr", "trainer.steps=8")
    records = load_log(tmp_path)
    assert [r["step"] for r in records] == list(range(7))  # Alpha of step 7 would stay open
    assert all({"Alpha", "Loss"} <= set(r) for r in records)


def test_epochs_with_a_batch_size_controller(tmp_path):
    summary = run(
        tmp_path,
        "trainer.steps=null",
        "trainer.epochs=2",
        "data.train_subset=256",
        "data.batch_size=32",
        "controller=gradient_test",
        "controller.theta=0.3",
        "cockpit.instruments=[Loss]",
    )
    records = load_log(tmp_path)
    actions = [a for r in records for a in r.get("actions", [])]
    assert actions and all(a["what"] == "batch_size" for a in actions)
    assert summary["batch_size"] == actions[-1]["to"] > 32
    assert summary["epochs"] == 2
    assert {"NormTest", "GradNorm"} <= set(records[-1])  # read by the controller


def _strip_time(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "Time"} for r in records]


def test_resume_after_a_kill_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    settings = [
        "trainer.steps=24",
        "trainer.eval_every=5",
        "trainer.checkpoint_every=10",
        "cockpit=economy",
        "data.train_subset=320",  # 5 batches per epoch: the kill is mid-epoch
    ]
    straight = run(tmp_path / "straight", *settings)

    class Killed(Exception):
        pass

    step = Trainer.train_step

    def dying(self, indices):
        if self.step == 17:
            raise Killed
        return step(self, indices)

    monkeypatch.setattr(Trainer, "train_step", dying)
    with pytest.raises(Killed):
        run(tmp_path / "killed", *settings)
    monkeypatch.undo()
    log = tmp_path / "killed" / "cockpit.jsonl"
    assert max(r["step"] for r in load_log(log)) > 10  # records after the checkpoint
    with open(log, "a") as handle:  # a line cut short by the kill
        handle.write('{"step": 16, "Loss": 0.')
    resumed = run(tmp_path / "killed", *settings, "trainer.resume=true")

    assert _strip_time(load_log(log)) == _strip_time(load_log(tmp_path / "straight"))
    assert resumed["final"] == straight["final"] and resumed["steps"] == 24
    ends = [
        torch.load(tmp_path / d / CHECKPOINT, weights_only=True) for d in ("straight", "killed")
    ]
    for name, tensor in ends[0]["model"].items():
        assert torch.equal(tensor, ends[1]["model"][name]), name
    assert ends[0]["sampler"] == ends[1]["sampler"]


def test_resume_refuses_a_changed_model(tmp_path):
    run(tmp_path, "trainer.steps=3", "cockpit=off")
    with pytest.raises(ConfigError, match="model"):
        Trainer(config(*FAST, "trainer.resume=true", "model=mlp"), tmp_path)


def test_multirun_sweep_with_the_basic_launcher(tmp_path):
    command = [
        sys.executable,
        str(ROOT / "experiments" / "train.py"),
        "-m",
        "optimizer.lr=0.01,0.1",
        "trainer.steps=4",
        "cockpit=economy",
        *FAST,
        f"hydra.sweep.dir={tmp_path}",
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    lrs = [
        json.loads((tmp_path / job / "summary.json").read_text())["config"]["optimizer"]["lr"]
        for job in ("0", "1")
    ]
    assert lrs == [0.01, 0.1]
    assert (tmp_path / "1" / "cockpit.png").is_file()


@pytest.mark.slow
@needs_torchvision
@pytest.mark.parametrize(
    ("data", "model"), [("mnist", "3c3d"), ("fashion_mnist", "mlp"), ("cifar10", "allcnnc")]
)
def test_few_steps_on_generated_torchvision_files(tmp_path, monkeypatch, data, model):
    import torchvision.datasets.cifar
    from test_experiment_data import _cifar, _mnist

    monkeypatch.setattr(  # generated CIFAR files keep the layout, not the MD5 sums
        torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: Path(path).is_file()
    )
    root = tmp_path / "data"
    if data == "cifar10":
        _cifar(root, hundred=False)
    else:
        _mnist(root, "MNIST" if data == "mnist" else "FashionMNIST")
    summary = run(
        tmp_path / "run",
        f"data={data}",
        f"data.data_dir={root}",
        "data.batch_size=4",
        f"model={model}",
        "cockpit=economy",
        "trainer.steps=3",
    )
    assert summary["steps"] == 3 and len(load_log(tmp_path / "run")) == 2
    assert 0.0 <= summary["final"]["test_accuracy"] <= 1.0


def test_importing_the_package_has_no_hydra_side_effects():
    code = (
        "import sys, cockpit_optim.experiment; "
        "assert not [m for m in sys.modules if m.split('.')[0] in ('hydra', 'torchvision')]"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
