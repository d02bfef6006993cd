"""The record log: one run per file, exact resume, cut lines, malformed lines, a full disk."""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import warnings

import pytest
import torch
from torch import nn

from cockpit_optim import MonitoredOptimizer, ReadingWarning, load_log, schedules
from cockpit_optim.cli import main
from cockpit_optim.log import LOG_NAME, LogWriter

STEPS = 7


def _batches(count: int = STEPS) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(6, 4, generator=gen), torch.randint(0, 3, (6,), generator=gen))
            for _ in range(count)]  # fmt: skip


def _monitor(log_dir, seed: int = 0) -> tuple[nn.Module, MonitoredOptimizer]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    opt = MonitoredOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
        model,
        nn.CrossEntropyLoss(),
        instruments=["Loss", "GradNorm", "Alpha", "Distance", "UpdateSize"],
        track=schedules.linear(1),
        log_dir=log_dir,
    )
    return model, opt


def _train(model, opt, batches) -> None:
    loss_fn = opt.loss_fn
    for x, y in batches:
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()


def _steps(path) -> list[int]:
    return [r["step"] for r in load_log(path)]


def _lines(path) -> list[str]:
    return path.read_text().splitlines()


# --------------------------------------------------------------------------- ownership
def test_a_new_run_into_a_used_log_dir_starts_a_new_file(tmp_path):
    first = _batches()
    model, opt = _monitor(tmp_path)
    _train(model, opt, first[:5])
    opt.close()
    before = (tmp_path / LOG_NAME).read_text()
    assert _steps(tmp_path) == [0, 1, 2, 3, 4]

    model, opt = _monitor(tmp_path)
    with pytest.warns(UserWarning, match=r"earlier run: moved to cockpit\.1\.jsonl"):
        _train(model, opt, first[:3])
    opt.close()
    assert _steps(tmp_path) == [0, 1, 2]  # was [0, 1, 2, 3, 4, 0, 1, 2]
    assert (tmp_path / "cockpit.1.jsonl").read_text() == before

    model, opt = _monitor(tmp_path)
    with pytest.warns(UserWarning, match=r"cockpit\.2\.jsonl"):
        _train(model, opt, first[:2])
    assert _steps(tmp_path) == [0] and _steps(tmp_path / "cockpit.2.jsonl") == [0, 1, 2]


def test_two_live_writers_on_one_folder_keep_their_own_files(tmp_path):
    a, b = LogWriter(tmp_path), LogWriter(tmp_path)
    a.write({"step": 0, "run": "a"})
    with pytest.warns(UserWarning, match="moved to cockpit.1.jsonl"):
        b.write({"step": 0, "run": "b"})
    a.write({"step": 1, "run": "a"})
    b.write({"step": 1, "run": "b"})
    assert {r["run"] for r in load_log(tmp_path)} == {"b"}
    assert [r["run"] for r in load_log(tmp_path / "cockpit.1.jsonl")] == ["a", "a"]


# ------------------------------------------------------------------------------ resume
@pytest.mark.parametrize("cut_line", [False, True])
def test_resume_appends_exactly(tmp_path, cut_line):
    batches = _batches()
    model, opt = _monitor(tmp_path / "straight")
    _train(model, opt, batches)

    model, opt = _monitor(tmp_path / "resumed")
    _train(model, opt, batches[:3])
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    _train(model, opt, batches[3:5])  # records after the checkpoint, then a kill
    log = tmp_path / "resumed" / LOG_NAME
    assert max(_steps(log)) >= 3
    if cut_line:
        with open(log, "a") as handle:
            handle.write('{"step": 5, "Lo')

    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    model, opt = _monitor(tmp_path / "resumed", seed=5)
    model.load_state_dict(state["model"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "moved to" warning: the resumed run keeps its log
        opt.load_state_dict(state["opt"])
        _train(model, opt, batches[3:])

    def strip(path):
        return [{k: v for k, v in json.loads(line).items() if k != "Time"} for line in _lines(path)]

    assert strip(log) == strip(tmp_path / "straight" / LOG_NAME)  # every line a record
    assert not list((tmp_path / "resumed").glob("cockpit.*.jsonl"))


def test_drop_from_keeps_the_records_before_the_step_and_no_malformed_line(tmp_path):
    log = tmp_path / LOG_NAME
    log.write_text('{"step": 0}\n{"step": 1}\nnot json\n{"step": 2}\n{"step": 3}\n{"ste')
    writer = LogWriter(tmp_path)
    writer.drop_from(3)
    assert _lines(log) == ['{"step": 0}', '{"step": 1}', '{"step": 2}']
    writer.write({"step": 3})
    assert _steps(log) == [0, 1, 2, 3]
    LogWriter(tmp_path).drop_from(1)  # the common case, cut in place
    assert _lines(log) == ['{"step": 0}']


def test_appending_after_a_cut_line_starts_on_a_new_line(tmp_path):
    log = tmp_path / LOG_NAME
    log.write_text('{"step": 0}\n{"step": 1}')  # no newline at the end
    writer = LogWriter(tmp_path)
    writer.drop_from(5)
    writer.write({"step": 2})
    assert _lines(log) == ['{"step": 0}', '{"step": 1}', '{"step": 2}']


# ------------------------------------------------------------------------------ reading
MALFORMED = '{"step": 0}\n{"step": 1, "Lo\n[1, 2]\n{"step": 2}\n{"Loss": 1.0}\n\n{"step": 3}\n'


def test_load_log_skips_malformed_lines_anywhere_with_one_warning(tmp_path):
    (tmp_path / LOG_NAME).write_text(MALFORMED)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        records = load_log(tmp_path)
    assert [r["step"] for r in records] == [0, 2, 3]
    assert len(caught) == 1
    assert "skipped 3 malformed line(s)" in str(caught[0].message)
    assert "line(s) 2, 3, 5" in str(caught[0].message)
    with pytest.raises(ValueError, match=rf"{LOG_NAME}:2: not a JSON record"):
        load_log(tmp_path, strict=True)


@pytest.mark.parametrize("command", ["summary", "plot"])
def test_the_cli_reads_a_log_with_malformed_lines(tmp_path, capsys, command):
    (tmp_path / LOG_NAME).write_text(MALFORMED.replace('"step": 3}', '"step": 3, "Loss": 0.5}'))
    output = ["-o", str(tmp_path / "cockpit.png")] if command == "plot" else []
    assert main([command, str(tmp_path), *output]) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "skipped 3 malformed line(s)" in err[0], err


# ---------------------------------------------------------------------------- full disk
class _FullDisk:
    """A raw file whose writes store ``room`` more bytes, then raise ENOSPC."""

    def __init__(self, handle, disk: dict) -> None:
        self.handle, self.disk = handle, disk

    def write(self, data) -> int:
        if self.disk["room"] is not None:
            data = bytes(data)[: self.disk["room"]]
            self.disk["room"] -= len(data)
            if not data:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.handle.write(data)

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.handle.close()


@pytest.fixture
def full_disk(monkeypatch):
    """``cockpit_optim.log``'s files store ``disk["room"]`` more bytes (``None``: unlimited)."""
    disk = {"room": None}

    def opened(path, mode="r", *args, **kwargs):
        handle = builtins.open(path, mode, *args, **kwargs)
        return _FullDisk(handle, disk) if "a" in mode or "w" in mode else handle

    monkeypatch.setattr("cockpit_optim.log.open", opened, raising=False)
    return disk


def test_a_full_disk_warns_once_and_training_continues(tmp_path, full_disk):
    batches = _batches(12)
    model, opt = _monitor(tmp_path)
    _train(model, opt, batches[:4])
    written = (tmp_path / LOG_NAME).read_text()
    full_disk["room"] = 30  # the next record is cut after 30 bytes
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _train(model, opt, batches[4:8])
        opt.close()
    failures = [w for w in caught if "cannot write the cockpit log" in str(w.message)]
    assert len(failures) == 1 and "No space left on device" in str(failures[0].message)
    assert not [w for w in caught if issubclass(w.category, ReadingWarning)]
    assert [r["step"] for r in opt.history] == list(range(8))  # every update, every record
    assert opt._writer.failed == 5  # steps 3..7 (step 3 completed at step 4)
    assert (tmp_path / LOG_NAME).read_text().startswith(written)

    full_disk["room"] = None  # space again: the next record starts on a new line
    opt._writer.write({"step": 8})
    assert _lines(tmp_path / LOG_NAME)[-1] == '{"step": 8}'
    with pytest.warns(UserWarning, match="skipped 1 malformed"):
        assert _steps(tmp_path) == [0, 1, 2, 8]


def test_a_cut_write_is_followed_by_a_new_line(tmp_path, full_disk):
    writer = LogWriter(tmp_path)
    writer.write({"step": 0})
    full_disk["room"] = 5
    with pytest.warns(UserWarning, match="cannot write"):
        writer.write({"step": 1, "Loss": 0.25})
    full_disk["room"] = None
    writer.write({"step": 2})
    assert _lines(tmp_path / LOG_NAME) == ['{"step": 0}', '{"ste', '{"step": 2}']
    with pytest.warns(UserWarning, match="skipped 1 malformed"):
        assert _steps(tmp_path) == [0, 2]


def test_a_failing_sync_does_not_raise(tmp_path, monkeypatch):
    def refuse(fd):
        raise OSError(errno.EIO, "I/O error")

    writer = LogWriter(tmp_path)
    monkeypatch.setattr("cockpit_optim.log.os.fsync", refuse)
    with pytest.warns(UserWarning, match="I/O error"):
        writer.write({"step": 0})
    writer.write({"step": 1})
    writer.drop_from(1)
    assert writer.failed == 3
