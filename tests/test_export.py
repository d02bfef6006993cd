"""Exporters: TensorBoard event files, W&B offline runs and MLflow file stores, read back."""

from __future__ import annotations

import json
import math
import struct
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from models import make_problem
from reference import flat_params, individual

from cockpit_optim import MonitoredOptimizer, ReadingWarning, load_log
from cockpit_optim.cli import main
from cockpit_optim.export import TensorBoardWriter, export
from cockpit_optim.export.records import histograms, scalars
from cockpit_optim.instruments import GradHist1d

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import (
    EventAccumulator,
)

STEPS = 4
ECONOMY_SCALARS = (
    "Loss", "GradNorm", "Distance", "UpdateSize", "Alpha", "NormTest", "InnerTest", "OrthoTest",
    "CABS", "EarlyStopping", "MeanGSNR", "Time",
)  # fmt: skip
RANGE = (-(2.0**-4), 2.0**-4)  # narrow (elements fall out on both sides); edges exact in binary


class HalveOnce:
    """A real controller: halves the learning rate at step 1 (so records carry an action)."""

    instruments = ("Loss",)

    def observe(self, record, optimizer):
        if record["step"] != 1:
            return []
        old = optimizer.param_groups[0]["lr"]
        optimizer.param_groups[0]["lr"] = old / 2
        why = f"Loss = {record['Loss']:.3g}"
        return [
            {
                "controller": "HalveOnce",
                "step": 1,
                "what": "lr",
                "from": old,
                "to": old / 2,
                "why": why,
            }
        ]


def _train(writers=(), log_dir=None, plot_every=None):
    """A 4-step economy run; returns the optimizer and the first step's reference elements."""
    model, loss_fn, batch = make_problem("mlp")
    opt = MonitoredOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1),
        model,
        loss_fn,
        instruments=[*ECONOMY_SCALARS, GradHist1d(bins=16, range=RANGE)],
        controllers=[HalveOnce()],
        log_dir=log_dir,
        plot_every=plot_every,
        writers=writers,
    )
    gen = torch.Generator().manual_seed(1)
    params0 = flat_params(model)
    batches = [batch(gen, 6) for _ in range(STEPS)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ReadingWarning)
        for x, y in batches:
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
        opt.close()  # detaches the monitor: the reference's forward calls are not captured
    return opt, individual(model, loss_fn, params0, *batches[0])[1]


def _accumulator(folder) -> EventAccumulator:
    events = EventAccumulator(
        str(folder), size_guidance={"scalars": 0, "histograms": 0, "images": 0, "tensors": 0}
    )
    events.Reload()
    return events


def _check_tensorboard(folder, history, images: bool) -> None:
    events = _accumulator(folder)
    tags = events.Tags()
    expected = {}
    for record in history:
        for tag, value in scalars(record).items():
            expected.setdefault(tag, {})[record["step"]] = value
    assert "cockpit/GradNorm/1.weight" in expected and "cockpit/Alpha" in expected
    assert set(expected) <= set(tags["scalars"])
    for tag, by_step in expected.items():
        got = {e.step: e.value for e in events.Scalars(tag)}
        assert set(got) == set(by_step), tag
        for step, value in by_step.items():
            if math.isnan(value):
                assert math.isnan(got[step]), tag
            else:
                assert got[step] == pytest.approx(value, rel=1e-6, abs=1e-30), tag
    for record in history:
        hist = record["GradHist1d"]
        assert hist["underflow"] > 0 and hist["overflow"] > 0  # the folding is exercised
        for tag, expected_hist in histograms(record).items():
            (event,) = [e for e in events.Histograms(tag) if e.step == record["step"]]
            value = event.histogram_value
            assert list(value.bucket_limit) == hist["edges"][1:]
            assert list(value.bucket) == expected_hist.bucket_counts
            assert value.min == hist["edges"][0] and value.max == hist["edges"][-1]
            source = hist if tag == "cockpit/GradHist1d" else hist["layers"][tag.split("/")[-1]]
            assert value.num == source["binned"]
    texts = events.Tensors("cockpit/actions/text_summary")
    assert [t.step for t in texts] == [1]
    assert "HalveOnce set lr 0.1 -> 0.05" in texts[0].tensor_proto.string_val[0].decode()
    assert ("cockpit/view" in tags["images"]) == images


def test_tensorboard_writer_live(tmp_path):
    opt, elements = _train([TensorBoardWriter(tmp_path / "tb")], tmp_path / "run", plot_every=2)
    assert len(opt.history) == STEPS
    _check_tensorboard(tmp_path / "tb", opt.history, images=True)
    # The exported histogram of step 0 against np.histogram of the individual gradients, with
    # the out-of-range elements in the outermost buckets.
    edges = np.asarray(opt.history[0]["GradHist1d"]["edges"])
    clipped = np.clip(elements.numpy().ravel(), edges[0], edges[-1])
    reference, _ = np.histogram(clipped, bins=edges)
    (event,) = [
        e for e in _accumulator(tmp_path / "tb").Histograms("cockpit/GradHist1d") if e.step == 0
    ]
    assert list(event.histogram_value.bucket) == reference.tolist()


def test_export_command_converts_a_run_folder(tmp_path, capsys):
    _train(log_dir=tmp_path / "run")
    assert main(["export", str(tmp_path / "run"), "--tensorboard", str(tmp_path / "tb")]) == 0
    assert capsys.readouterr().out.startswith(f"{STEPS} records -> TensorBoard")
    _check_tensorboard(tmp_path / "tb", load_log(tmp_path / "run"), images=True)
    assert main(["export", str(tmp_path / "run")]) == 2  # no target named


def test_export_of_a_log_file_without_image(tmp_path):
    opt, _ = _train(log_dir=tmp_path / "run")
    count = export(
        tmp_path / "run" / "cockpit.jsonl", [TensorBoardWriter(tmp_path / "tb")], image=False
    )
    assert count == STEPS
    _check_tensorboard(tmp_path / "tb", opt.history, images=False)


class _Broken:
    """A SummaryWriter stand-in whose disk is full."""

    log_dir = "nowhere"

    def __getattr__(self, name):
        def fail(*args, **kwargs):
            raise OSError("No space left on device")

        return fail


def test_failing_writer_warns_once_and_training_goes_on(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt, _ = _train([TensorBoardWriter(writer=_Broken())])
    failures = [w for w in caught if "TensorBoardWriter failed" in str(w.message)]
    assert len(failures) == 1 and "No space left" in str(failures[0].message)
    assert [r["step"] for r in opt.history] == list(range(STEPS))
    bare, _ = _train()
    for p, q in zip(opt.model.parameters(), bare.model.parameters()):
        assert torch.equal(p, q)


def _same(got: float, expected: float) -> bool:
    """Equal in float64 (trackers that keep doubles), ``nan`` matching ``nan``."""
    if math.isnan(expected):
        return math.isnan(got)
    return got == pytest.approx(expected, rel=1e-12, abs=1e-300)


# ------------------------------------------------------------------------------ W&B
def _wandb_history(folder: Path) -> list[dict]:
    """The history rows of an offline W&B run, read from its ``run-*.wandb`` record log (a
    LevelDB-style log: 32 KiB blocks of chunks with a 7-byte header, after a 7-byte file header)."""
    from wandb.proto import wandb_internal_pb2

    (path,) = folder.glob("wandb/offline-run-*/run-*.wandb")
    for _ in range(300):  # the run's service may still be writing: wait for its exit record
        rows, kinds = _wandb_records(path.read_bytes(), wandb_internal_pb2.Record)
        if "exit" in kinds:
            return rows
        time.sleep(0.1)
    raise AssertionError(f"{path} has no exit record")


def _wandb_records(data: bytes, parse) -> tuple[list[dict], set[str]]:
    assert data[:4] == b":W&B"
    kinds = set()
    block, position, pending, rows = 32768, 7, b"", []
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:
            position += left
            continue
        length, kind = struct.unpack("<HB", data[position + 4 : position + 7])
        chunk = data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 2):  # full, first
            pending = chunk
        else:  # middle, last
            pending += chunk
        if kind in (1, 4):
            record = parse()
            record.ParseFromString(pending)
            kinds.add(record.WhichOneof("record_type"))
            if record.WhichOneof("record_type") == "history":
                rows.append(
                    {
                        item.key or "/".join(item.nested_key): json.loads(item.value_json)
                        for item in record.history.item
                    }
                )
    return rows, kinds


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    """Offline W&B with its files in ``tmp_path`` (settings are read once per process: reset)."""
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    wandb.teardown()
    yield tmp_path
    wandb.teardown()


def test_wandb_writer_offline(tmp_path, wandb_offline):
    from cockpit_optim.export import WandbWriter

    writer = WandbWriter(project="cockpit-test", dir=str(tmp_path))
    opt, _ = _train([writer], tmp_path / "run", plot_every=3)
    rows = _wandb_history(tmp_path)
    by_step = {}
    for row in rows:
        by_step.setdefault(row["cockpit/step"], {}).update(row)
    assert sorted(by_step) == [r["step"] for r in opt.history]
    for record in opt.history:
        row = by_step[record["step"]]
        for tag, value in scalars(record).items():
            assert _same(row[tag], value), tag
        for tag, hist in histograms(record).items():  # a histogram's fields are nested keys
            assert row[f"{tag}/_type"] == "histogram"
            assert row[f"{tag}/values"] == hist.bucket_counts
            assert row[f"{tag}/bins"] == pytest.approx(hist.edges, rel=1e-12)
    assert "HalveOnce" in by_step[1]["cockpit/actions"]
    assert any(row.get("cockpit/view/_type") == "image-file" for row in rows)


# --------------------------------------------------------------------------- MLflow
def _mlflow(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    uri = (tmp_path / "mlruns").as_uri()
    return uri, MlflowClient(tracking_uri=uri)


def _check_mlflow(client, run_id, history) -> None:
    tags = scalars(history[0], nest_params=False)
    assert "cockpit/GradNorm_params/1.weight" in tags and "cockpit/GradNorm" in tags
    for tag in tags:
        got = {m.step: m.value for m in client.get_metric_history(run_id, tag)}
        for record in history:
            assert _same(got[record["step"]], scalars(record, nest_params=False)[tag]), tag
    local = Path(client.download_artifacts(run_id, "cockpit/actions.md"))
    assert "HalveOnce set lr 0.1 -> 0.05" in local.read_text()


def test_mlflow_writer_file_store(tmp_path, monkeypatch):
    uri, client = _mlflow(tmp_path, monkeypatch)
    from cockpit_optim.export import MLflowWriter

    writer = MLflowWriter(uri, "cockpit")
    opt, _ = _train([writer], tmp_path / "run", plot_every=2)
    _check_mlflow(client, writer.run_id, opt.history)
    assert client.get_run(writer.run_id).info.status == "FINISHED"
    assert client.list_artifacts(writer.run_id, "images")  # the cockpit view
    # A run the writer did not create stays open.
    run = client.create_run(client.get_experiment_by_name("cockpit").experiment_id)
    export(opt.history, [MLflowWriter(uri, run_id=run.info.run_id)], image=False)
    assert client.get_run(run.info.run_id).info.status == "RUNNING"
    _check_mlflow(client, run.info.run_id, opt.history)


def test_export_command_to_mlflow_and_wandb(tmp_path, monkeypatch, capsys, wandb_offline):
    uri, client = _mlflow(tmp_path, monkeypatch)
    opt, _ = _train(log_dir=tmp_path / "run")
    log = str(tmp_path / "run" / "cockpit.jsonl")
    assert main(["export", log, "--mlflow", uri, "--experiment", "e", "--wandb", "p"]) == 0
    out = capsys.readouterr().out
    run_id = out.split("MLflow run ")[1].split()[0]
    _check_mlflow(client, run_id, opt.history)
    rows = _wandb_history(tmp_path)
    assert sorted({r["cockpit/step"] for r in rows}) == list(range(STEPS))
