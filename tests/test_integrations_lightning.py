"""Lightning: CockpitCallback on a real LightningModule (digits MLP), readings vs brute force."""

from __future__ import annotations

import csv
import math
import warnings

import pytest
import torch
from cockpit_optim.controllers import AdaptiveBatchSampler, CABSBatchSize
from models import StopAt
from reference import first_order, individual
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from cockpit_optim import CockpitError, MonitoredOptimizer, ReadingWarning

pl = pytest.importorskip("lightning.pytorch")

from cockpit_optim.integrations.lightning import CockpitCallback  # noqa: E402

FIRST_ORDER = ("Loss", "NormTest", "InnerTest", "OrthoTest", "CABS", "EarlyStopping", "MeanGSNR")


def digits(n: int = 96) -> TensorDataset:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x[:n] / 16.0, dtype=torch.get_default_dtype())
    return TensorDataset(x, torch.tensor(y[:n]))


class DigitsMLP(pl.LightningModule):
    """A small MLP; remembers every micro-batch and the parameters it saw (for the references)."""

    def __init__(self, monitored: bool = False, lr: float = 0.1) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(64, 12), nn.ReLU(), nn.Linear(12, 10))
        self.loss_fn = nn.CrossEntropyLoss()
        self.monitored, self.lr = monitored, lr
        self.seen: list[tuple] = []

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        params = {n: p.detach().clone() for n, p in self.named_parameters()}
        self.seen.append((x.detach().clone(), y.clone(), params))
        return self.loss_fn(self(x), y)

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=self.lr)
        if self.monitored:
            return MonitoredOptimizer(opt, self, self.loss_fn)
        return opt


class DigitsData(pl.LightningDataModule):
    def __init__(self, batch_size: int = 16, sampler: AdaptiveBatchSampler | None = None):
        super().__init__()
        self.batch_size, self.sampler, self.data = batch_size, sampler, digits()

    def train_dataloader(self):
        if self.sampler is not None:
            return DataLoader(self.data, batch_sampler=self.sampler)
        return DataLoader(self.data, batch_size=self.batch_size)


def _fit(module, callbacks=(), data=None, **trainer_options):
    options = {
        "max_steps": 4,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "accelerator": "cpu",
        "devices": 1,
    }
    options.update(trainer_options)
    trainer = pl.Trainer(callbacks=list(callbacks), **options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ReadingWarning)
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        trainer.fit(module, datamodule=data or DigitsData())
    return trainer


def _check_against_brute_force(module, history, accumulate: int = 1, rel: float = 1e-7):
    """Each record against per-sample gradients of the step's concatenated micro-batches."""
    assert history, "no records"
    for record in history:
        t = record["step"]
        micro = module.seen[t * accumulate : (t + 1) * accumulate]
        x = torch.cat([m[0] for m in micro])
        y = torch.cat([m[1] for m in micro])
        params = {n: p.to(x.dtype) for n, p in micro[0][2].items()}
        losses, grads = individual(module, module.loss_fn, params, x, y)
        expected = first_order(losses, grads, record["lr"])
        assert record["batch_size"] == x.shape[0]
        for key in FIRST_ORDER:
            assert record[key] == pytest.approx(expected[key], rel=rel), (t, key)


def test_callback_readings_equal_brute_force():
    module, callback = DigitsMLP(), CockpitCallback(instruments="economy")
    trainer = _fit(module, [callback])
    assert trainer.global_step == 4
    history = callback.monitor.history
    assert [r["step"] for r in history] == [0, 1, 2, 3]  # closed: the last Alpha completed
    assert math.isnan(history[-1]["Alpha"]) and math.isfinite(history[0]["Alpha"])
    _check_against_brute_force(module, history)


def test_monitored_optimizer_from_configure_optimizers():
    module = DigitsMLP(monitored=True)
    callback = CockpitCallback()  # adopts the module's monitor and closes it at the end
    _fit(module, [callback])
    assert callback.monitor is module.trainer.optimizers[0]
    _check_against_brute_force(module, callback.monitor.history)


def test_monitored_optimizer_without_the_callback():
    module = DigitsMLP(monitored=True)
    trainer = _fit(module)
    (monitor,) = trainer.optimizers
    assert isinstance(monitor, MonitoredOptimizer)
    assert [r["step"] for r in monitor.history] == [0, 1, 2]  # step 3 waits for close()
    _check_against_brute_force(module, monitor.history)


def test_missing_loss_fn_names_the_argument():
    module = DigitsMLP()
    del module.loss_fn
    module.loss_fn = None
    with pytest.raises(CockpitError, match=r"CockpitCallback\(loss_fn=\.\.\.\)"):
        _fit(module, [CockpitCallback()])


def test_controller_stops_the_trainer():
    callback = CockpitCallback(instruments=["Loss", "GradNorm"], controllers=[StopAt(1)])
    trainer = _fit(DigitsMLP(), [callback], max_steps=20)
    assert trainer.should_stop
    assert trainer.global_step == 2  # the record of step 1 completes within step 1
    assert callback.monitor.history[1]["actions"][0]["what"] == "stop"


def test_batch_size_controller_drives_the_datamodule_sampler():
    sampler = AdaptiveBatchSampler(96, batch_size=16, shuffle=False, drop_last=True)
    cabs = CABSBatchSize(sampler, min_batch_size=24, max_batch_size=24)
    data = DigitsData(16, sampler)
    module = DigitsMLP()
    callback = CockpitCallback(instruments=["Loss", "GradNorm"], controllers=[cabs])
    _fit(module, [callback], data=data, max_steps=5)
    sizes = [r["batch_size"] for r in callback.monitor.history]
    assert sizes == [16, 24, 24, 24, 24]  # the new size from the next batch on (and epoch)
    assert [len(m[1]) for m in module.seen] == sizes
    assert data.batch_size == 24
    assert callback.monitor.history[0]["actions"][0]["what"] == "batch_size"


def test_readings_reach_the_trainers_loggers(tmp_path):
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    csv_logger = CSVLogger(tmp_path, name="csv")
    tb_logger = TensorBoardLogger(tmp_path, name="tb")
    callback = CockpitCallback(instruments="economy")
    _fit(DigitsMLP(), [callback], logger=[csv_logger, tb_logger])
    history = callback.monitor.history
    with open(f"{csv_logger.log_dir}/metrics.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("cockpit/Loss")]
    assert [int(r["step"]) for r in rows] == [r["step"] for r in history]
    for row, record in zip(rows, history):
        assert float(row["cockpit/Loss"]) == pytest.approx(record["Loss"], rel=1e-12)
        assert float(row["cockpit/GradNorm/net.0.weight"]) == pytest.approx(
            record["GradNorm_params"]["net.0.weight"], rel=1e-12
        )
    events = EventAccumulator(tb_logger.log_dir, size_guidance={"histograms": 0, "scalars": 0})
    events.Reload()
    assert "cockpit/GradHist1d" in events.Tags()["histograms"]
    got = [e.value for e in events.Scalars("cockpit/Loss")]
    assert got == pytest.approx([r["Loss"] for r in history], rel=1e-6)


@pytest.fixture
def float32():
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    yield
    torch.set_default_dtype(dtype)


def test_accumulated_batches_form_one_step(float32):
    module, callback = DigitsMLP(), CockpitCallback(instruments="economy")
    trainer = _fit(module, [callback], accumulate_grad_batches=2, max_steps=3)
    assert trainer.global_step == 3 and len(module.seen) == 6
    history = callback.monitor.history
    assert [r["batch_size"] for r in history] == [32, 32, 32]
    _check_against_brute_force(module, history, accumulate=2, rel=1e-6)  # measured 4e-8


def test_bf16_mixed_accumulation_and_clipping(float32):
    module, callback = DigitsMLP(), CockpitCallback(instruments="economy")
    clip = 0.05
    _fit(
        module,
        [callback],
        accumulate_grad_batches=2,
        precision="bf16-mixed",
        gradient_clip_val=clip,
        max_steps=3,
    )
    history = callback.monitor.history
    assert [r["step"] for r in history] == [0, 1, 2]
    # GradNorm is the norm of what the optimizer uses (clipped); the rest are of the loss.
    assert [r["GradNorm"] for r in history] == pytest.approx([clip] * 3, rel=1e-3)
    # bf16 keeps 8 mantissa bits: measured up to 2.7e-2 (InnerTest), the real-loop tolerance
    _check_against_brute_force(module, history, accumulate=2, rel=5e-2)
