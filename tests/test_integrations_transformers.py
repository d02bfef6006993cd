"""Hugging Face Trainer: CockpitCallback on real Trainer runs, readings vs brute force."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from reference import first_order, individual
from torch import nn

from cockpit_optim import MonitoredOptimizer, ReadingWarning

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")
from cockpit_optim.integrations.transformers import CockpitCallback  # noqa: E402

FIRST_ORDER = ("Loss", "NormTest", "InnerTest", "OrthoTest", "CABS", "EarlyStopping", "MeanGSNR")


class Classifier(nn.Module):
    """A model that computes its loss inside ``forward`` (as Trainer models do) with a loss
    module; remembers each batch and the parameters it saw."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
        self.loss_fn = nn.CrossEntropyLoss()
        self.seen: list[tuple] = []

    def forward(self, x, labels=None):
        if self.training and torch.is_grad_enabled():
            params = {n: p.detach().clone() for n, p in self.net.named_parameters()}
            self.seen.append((x.detach().clone(), labels.clone(), params))
        logits = self.net(x)
        return {"loss": self.loss_fn(logits, labels), "logits": logits}


def _rows(n: int = 64) -> list[dict]:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(n, 6, generator=gen)
    y = torch.randint(0, 3, (n,), generator=gen)
    return [{"x": x[i], "labels": y[i]} for i in range(n)]


def _arguments(tmp_path, **options):
    defaults = {
        "output_dir": str(tmp_path / "out"),
        "per_device_train_batch_size": 8,
        "max_steps": 4,
        "learning_rate": 0.1,
        "optim": "sgd",
        "lr_scheduler_type": "constant",
        "max_grad_norm": 0.0,
        "report_to": [],
        "use_cpu": True,
        "save_strategy": "no",
        "logging_steps": 1,
        "disable_tqdm": True,
        "seed": 0,
        "dataloader_drop_last": True,
    }
    defaults.update(options)
    return transformers.TrainingArguments(**defaults)


def _train(model, callback, tmp_path, data=None, **options):
    trainer = transformers.Trainer(
        model=model,
        args=_arguments(tmp_path, **options),
        train_dataset=data or _rows(),
        callbacks=[callback],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ReadingWarning)
        trainer.train()
    return trainer


def _check_classifier(model, history, rel=1e-7):
    assert history
    for record in history:
        x, y, params = model.seen[record["step"]]
        params = {n: p.to(x.dtype) for n, p in params.items()}
        losses, grads = individual(model.net, model.loss_fn, params, x, y)
        expected = first_order(losses, grads, record["lr"])
        assert record["batch_size"] == x.shape[0]
        for key in FIRST_ORDER:
            assert record[key] == pytest.approx(expected[key], rel=rel), (record["step"], key)


def test_callback_wraps_the_trainers_optimizer(tmp_path):
    model = Classifier()
    callback = CockpitCallback(instruments="economy", loss_fn=model.loss_fn)
    trainer = _train(model, callback, tmp_path)
    assert trainer.state.global_step == 4
    assert trainer.optimizer.optimizer is callback.monitor
    history = callback.monitor.history
    assert [r["step"] for r in history] == [0, 1, 2, 3]  # closed at the end of training
    assert math.isnan(history[-1]["Alpha"]) and math.isfinite(history[0]["Alpha"])
    _check_classifier(model, history)


def test_monitored_optimizer_through_optimizers(tmp_path):
    model = Classifier()
    monitor = MonitoredOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model, model.loss_fn)
    callback = CockpitCallback()  # adopts it and closes it at the end
    trainer = transformers.Trainer(
        model=model,
        args=_arguments(tmp_path),
        train_dataset=_rows(),
        callbacks=[callback],
        optimizers=(monitor, None),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ReadingWarning)
        trainer.train()
    assert callback.monitor is monitor
    assert [r["step"] for r in monitor.history] == [0, 1, 2, 3]
    _check_classifier(model, monitor.history)


class StopAt:
    """A real controller: stops training at the record of step ``step``."""

    instruments = ("Loss",)

    def __init__(self, step: int) -> None:
        self.step = step

    def observe(self, record, optimizer):
        if record["step"] != self.step:
            return []
        optimizer.should_stop, optimizer.stop_reason = True, "test"
        return [{"controller": "StopAt", "step": self.step, "what": "stop", "from": False,
                 "to": True, "why": "test"}]  # fmt: skip


def test_controller_stops_training(tmp_path):
    model = Classifier()
    callback = CockpitCallback(
        instruments=["Loss", "GradNorm"], controllers=[StopAt(1)], loss_fn=model.loss_fn
    )
    trainer = _train(model, callback, tmp_path, max_steps=20)
    assert trainer.state.global_step == 2


def test_readings_reach_report_to_tensorboard(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    model = Classifier()
    callback = CockpitCallback(instruments="economy", loss_fn=model.loss_fn)
    _train(model, callback, tmp_path, report_to=["tensorboard"])
    events = EventAccumulator(str(tmp_path / "tb" / "cockpit"), size_guidance={"scalars": 0})
    events.Reload()
    got = [e.value for e in events.Scalars("cockpit/Loss")]
    assert got == pytest.approx([r["Loss"] for r in callback.monitor.history], rel=1e-6)
    assert "cockpit/GradHist1d" in events.Tags()["histograms"]
