"""The ``cockpit-optim`` command: plot, animate, summary, and its errors."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from models import make_problem
from PIL import Image

import cockpit_optim
from cockpit_optim import MonitoredOptimizer, ReadingWarning
from cockpit_optim.cli import main


@pytest.fixture(scope="module")
def log(tmp_path_factory):
    """The folder of a real 6-step economy run's log."""
    folder = tmp_path_factory.mktemp("cli") / "run"
    model, loss_fn, batch = make_problem("mlp")
    opt = MonitoredOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), model, loss_fn, log_dir=folder
    )
    gen = torch.Generator().manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ReadingWarning)
        for _ in range(6):
            x, y = batch(gen, 8)
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
    return folder


def test_plot_writes_png_next_to_the_log_and_never_over_the_runs_own(log, capsys):
    (log / "cockpit.png").write_bytes(b"the run's own picture")
    (log / "cockpit_layerwise.png").write_bytes(b"the run's own picture")
    assert main(["plot", str(log)]) == 0
    assert capsys.readouterr().out.strip() == str(log / "cockpit_linear-steps.png")
    with Image.open(log / "cockpit_linear-steps.png") as image:
        assert image.format == "PNG" and image.size == (1600, 1200)
    assert main(["plot", str(log), "--log-steps", "--dpi", "50"]) == 0
    with Image.open(log / "cockpit_log-steps.png") as image:
        assert image.size == (800, 600)
    assert main(["plot", str(log), "--layerwise"]) == 0
    assert (log / "cockpit_layerwise_step4.png").exists()  # the step it shows
    for name in ("cockpit.png", "cockpit_layerwise.png"):
        assert (log / name).read_bytes() == b"the run's own picture"


def test_plot_layerwise_and_log_steps_to_a_chosen_file(log, tmp_path):
    out = tmp_path / "layers.png"
    assert main(["plot", str(log / "cockpit.jsonl"), "-o", str(out), "--layerwise"]) == 0
    with Image.open(out) as image:
        assert image.format == "PNG" and image.width == 1600
    assert main(["plot", str(log), "-o", str(tmp_path / "c.pdf"), "--log-steps"]) == 0
    assert (tmp_path / "c.pdf").read_bytes().startswith(b"%PDF")


def test_animate_writes_gif(log, tmp_path):
    out = tmp_path / "run.gif"
    assert main(["animate", str(log), "-o", str(out), "--frames", "2", "--dpi", "25"]) == 0
    with Image.open(out) as image:
        assert image.format == "GIF" and image.n_frames == 2 and image.size == (400, 300)


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"cockpit-optim {cockpit_optim.__version__}"


def _table(out: str) -> dict[str, dict[str, str]]:
    """The summary's rows by reading, cells cut at the header's column starts."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("reading"))
    header = lines[start]
    names = header.split()
    starts = [header.index(name) for name in names] + [None]
    rows = {}
    for line in lines[start + 2 :]:
        if not line.strip():
            break
        cells = [line[a:b].strip() for a, b in itertools.pairwise(starts)]
        rows[cells[0]] = dict(zip(names, cells))
    return rows


def test_summary_lists_newest_readings_and_trends(log, capsys):
    assert main(["summary", str(log)]) == 0
    out = capsys.readouterr().out
    rows = _table(out)
    assert out.startswith(f"{log}: 5 records, steps 0 to 4")
    newest = json.loads((log / "cockpit.jsonl").read_text().splitlines()[-1])
    assert rows["Loss"]["step"] == "4" and rows["Loss"]["newest"] == f"{newest['Loss']:.4g}"
    assert rows["Loss"]["trend"] == "-"  # 5 readings are too few to call anything a trend
    assert "GradHist1d (step 4)" in out


def _summary_of(tmp_path, capsys, losses) -> dict[str, str]:
    records = [{"step": 10 * i, "Loss": float(v)} for i, v in enumerate(losses)]
    _log_file(tmp_path, "".join(json.dumps(r) + "\n" for r in records))
    assert main(["summary", str(tmp_path)]) == 0
    return _table(capsys.readouterr().out)["Loss"]


def test_summary_does_not_call_noise_a_trend(tmp_path, capsys):
    rng = np.random.default_rng(0)
    trends = []
    for _ in range(40):  # flat series with 30% noise: the old median rule said "+32% up"
        trends.append(
            _summary_of(tmp_path, capsys, 1e-4 * (1 + 0.3 * rng.normal(size=30)))["trend"]
        )
    called = [t for t in trends if not t.startswith("flat")]
    assert len(called) <= 2, called  # p < 0.01: about 0.4 of 40 by chance


def test_summary_reports_a_real_trend(tmp_path, capsys):
    rng = np.random.default_rng(1)
    steps = np.arange(30)
    losses = 2.0 * np.exp(-steps / 15) * (1 + 0.1 * rng.normal(size=30))
    trend = _summary_of(tmp_path, capsys, losses)["trend"]
    window = losses[-20:]
    change = np.median(window[10:]) / np.median(window[:10]) - 1
    assert trend.startswith(f"{change:+.0%} down (p=")
    assert _summary_of(tmp_path, capsys, losses[::-1])["trend"].split()[1] == "up"


def test_summary_lists_controller_actions(tmp_path, capsys):
    records = [{"step": i, "Loss": 1.0 / (i + 1), "lr": 0.1} for i in range(15)]
    for record in records[1:]:
        action = {"controller": "C", "what": "lr", "from": 0.1, "to": 0.05, "why": "because"}
        record["actions"] = [action]
    _log_file(tmp_path, "".join(json.dumps(r) + "\n" for r in records))
    assert main(["summary", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "controller actions (14, the newest 10):" in out
    assert "  step 14: C set lr 0.1 -> 0.05 (because)" in out
    assert "step 4:" not in out and "step 5:" in out


def _log_file(tmp_path, text: str):
    path = tmp_path / "cockpit.jsonl"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no cockpit log"),
        ("", "has no records"),
        ("not json\n[1, 2]\n", "has no records"),  # malformed lines are skipped
    ],
)
@pytest.mark.parametrize("command", ["plot", "summary", "animate"])
def test_unusable_logs_exit_2_with_a_message(tmp_path, capsys, content, message, command):
    target = tmp_path / "missing" if content is None else _log_file(tmp_path, content)
    assert main([command, str(target)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cockpit-optim: error:") and message in err
    assert "Traceback" not in err


def test_truncated_log_warns_and_plots(log, tmp_path, capsys):
    text = (log / "cockpit.jsonl").read_text()
    path = _log_file(tmp_path, text[:-30])
    assert main(["plot", str(path)]) == 0
    assert "warning: " in capsys.readouterr().err
    assert (tmp_path / "cockpit_linear-steps.png").exists()


def test_usage_errors_exit_2(capsys):
    for argv in ([], ["plot"], ["fly", "log"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2


def test_console_module_runs(log):
    done = subprocess.run(
        [sys.executable, "-m", "cockpit_optim.cli", "summary", str(log / "nowhere")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
