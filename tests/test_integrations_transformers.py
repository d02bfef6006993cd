"""Hugging Face Trainer: CockpitCallback on real Trainer runs, readings vs brute force."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from models import StopAt
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


# ------------------------------------------------------------------ a causal language model
VOCAB, LENGTH = 50, 16


def _gpt2():
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=2,
        vocab_size=VOCAB,
        n_positions=32,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    model = transformers.GPT2LMHeadModel(config)
    model.seen = []

    def remember(module, args, kwargs):
        if module.training and torch.is_grad_enabled() and "labels" in kwargs:
            params = {n: p.detach().clone() for n, p in module.named_parameters()}
            batch = {k: kwargs[k].clone() for k in ("input_ids", "attention_mask", "labels")}
            module.seen.append((batch, params))

    model.register_forward_pre_hook(remember, with_kwargs=True)
    return model


def _token_rows(n: int = 24) -> list[dict]:
    """Generated token sequences of lengths 6..16, padded to 16 (labels -100 on the padding)."""
    gen = torch.Generator().manual_seed(5)
    rows = []
    for _ in range(n):
        length = int(torch.randint(6, LENGTH + 1, (1,), generator=gen))
        ids = torch.zeros(LENGTH, dtype=torch.long)
        ids[:length] = torch.randint(1, VOCAB, (length,), generator=gen)
        mask = (torch.arange(LENGTH) < length).long()
        labels = torch.where(mask.bool(), ids, torch.full_like(ids, -100))
        rows.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return rows


def _token_reference(model, micro_batches):
    """Per-token losses and gradients (autograd loop, float32, no autocast) over the targets that
    enter the shifted cross-entropy of every micro-batch."""
    from torch.func import functional_call

    losses, grads = [], []
    for batch, params in micro_batches:
        leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        out = functional_call(
            model, leaves, (), {"input_ids": batch["input_ids"],
                                "attention_mask": batch["attention_mask"]}
        )  # fmt: skip
        logits, targets = out.logits[:, :-1], batch["labels"][:, 1:]
        keep = targets != -100
        token_losses = nn.functional.cross_entropy(logits[keep], targets[keep], reduction="none")
        names = list(leaves)
        for loss in token_losses:
            g = torch.autograd.grad(loss, [leaves[k] for k in names], retain_graph=True,
                                    allow_unused=True)  # fmt: skip
            grads.append(torch.cat([
                (gi if gi is not None else torch.zeros_like(leaves[k])).reshape(-1)
                for gi, k in zip(g, names)
            ]))  # fmt: skip
            losses.append(loss.detach())
    return torch.stack(losses).double(), torch.stack(grads).double()


def _check_gpt2(model, history, accumulation, rel):
    assert history
    for record in history:
        t = record["step"]
        micro = model.seen[t * accumulation : (t + 1) * accumulation]
        losses, grads = _token_reference(model, micro)
        expected = first_order(losses, grads, record["lr"])
        assert record["batch_size"] == losses.shape[0]  # tokens that enter the loss
        for key in FIRST_ORDER:
            assert record[key] == pytest.approx(expected[key], rel=rel), (t, key)


@pytest.fixture
def float32():
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    yield
    torch.set_default_dtype(dtype)


def test_gpt2_with_padding_and_accumulation(tmp_path, float32):
    model = _gpt2()
    callback = CockpitCallback(instruments="economy")  # the model's own loss: CausalLMLoss
    trainer = _train(
        model,
        callback,
        tmp_path,
        data=_token_rows(),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        max_steps=3,
    )
    assert trainer.state.global_step == 3 and len(model.seen) == 6
    _check_gpt2(model, callback.monitor.history, accumulation=2, rel=1e-5)  # measured 6e-7


def test_gpt2_bf16_with_clipping(tmp_path, float32):
    model = _gpt2()
    callback = CockpitCallback(instruments="economy")
    trainer = _train(
        model,
        callback,
        tmp_path,
        data=_token_rows(),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        max_steps=2,
        bf16=True,
        max_grad_norm=1.0,
    )
    history = callback.monitor.history
    assert [r["step"] for r in history] == [0, 1]
    # GradNorm is the norm the optimizer uses: the Trainer's (unclipped) norm, clipped to 1;
    # step 0 is clipped (1.19 -> 1), and the other readings are still those of the loss.
    logged = {h["step"]: h["grad_norm"] for h in trainer.state.log_history if "grad_norm" in h}
    assert logged[1] > 1.0
    for record in history:
        clipped = min(logged[record["step"] + 1], 1.0)
        assert record["GradNorm"] == pytest.approx(clipped, rel=1e-5)
    _check_gpt2(model, history, accumulation=2, rel=5e-2)  # the real-loop bf16 tolerance


def test_readings_reach_report_to_mlflow(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "trainer")
    model = Classifier()
    callback = CockpitCallback(instruments=["Loss", "GradNorm"], loss_fn=model.loss_fn)
    _train(model, callback, tmp_path, report_to=["mlflow"])
    client = mlflow.tracking.MlflowClient((tmp_path / "mlruns").as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("trainer").experiment_id])
    got = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "cockpit/Loss")}
    assert got == {r["step"]: pytest.approx(r["Loss"], rel=1e-12) for r in callback.monitor.history}
    assert "loss" in run.data.metrics  # the Trainer's own logging, in the same run
