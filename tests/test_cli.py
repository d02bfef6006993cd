"""The ``cockpit-optim`` command: plot, animate, summary, and its errors."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest
import torch
from models import make_problem
from PIL import Image

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


def test_plot_writes_png_next_to_the_log(log, capsys):
    assert main(["plot", str(log)]) == 0
    assert capsys.readouterr().out.strip() == str(log / "cockpit.png")
    with Image.open(log / "cockpit.png") as image:
        assert image.format == "PNG" and image.size == (1600, 1200)


def test_plot_layerwise_and_log_steps_to_a_chosen_file(log, tmp_path):
    out = tmp_path / "layers.png"
    assert main(["plot", str(log / "cockpit.jsonl"), "-o", str(out), "--layerwise"]) == 0
    with Image.open(out) as image:
        assert image.format == "PNG" and image.width == 1600
    assert main(["plot", str(log), "-o", str(tmp_path / "c.pdf"), "--log-steps"]) == 0
    assert (tmp_path / "c.pdf").read_bytes().startswith(b"%PDF")


def test_animate_writes_gif(log, tmp_path):
    out = tmp_path / "run.gif"
    assert main(["animate", str(log), "-o", str(out), "--frames", "2"]) == 0
    with Image.open(out) as image:
        assert image.format == "GIF" and image.n_frames == 2


def test_summary_lists_newest_readings_and_trends(log, capsys):
    assert main(["summary", str(log)]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[3:] if line.strip()}
    assert out.startswith(f"{log}: 5 records, steps 0 to 4")
    assert rows["Loss"][1] == "4" and rows["Loss"][3] in ("up", "down", "flat")
    assert "GradHist1d (step 4)" in out


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
    assert (tmp_path / "cockpit.png").exists()


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
