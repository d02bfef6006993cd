"""The README's commands and code run as written (with few steps), and its links stay inside."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cockpit_optim import schedules

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TRAIN = "python experiments/train.py"
SMALL = {"trainer.steps": "3", "trainer.threads": "1", "trainer.progress": "false"}
LAUNCHERS = {"joblib": "hydra_plugins.hydra_joblib_launcher"}
LAUNCHERS["submitit_slurm"] = "hydra_plugins.hydra_submitit_launcher"


def fenced(language: str) -> list[str]:
    """The README's fenced blocks of ``language``, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(), re.S | re.M)


def train_commands() -> list[str]:
    """Every ``python experiments/train.py`` line of the README's bash blocks (continuations
    joined, comments dropped)."""
    commands = []
    for block in fenced("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = " ".join(line.split("#", 1)[0].split())
            if line.startswith(TRAIN):
                commands.append(line)
    return commands


COMMANDS = train_commands()


def test_the_readme_documents_the_entry_point():
    assert len(COMMANDS) >= 8, COMMANDS  # the extraction found the documented commands
    assert not any("~" in command for command in COMMANDS)  # Hydra does not expand ~


def small(command: str, **fixed: str) -> str:
    """``command`` with few steps, one thread, no progress bar and the given overrides, each key
    once (Hydra refuses a key given twice)."""
    words = command.split()
    values = {**SMALL, **fixed}
    kept = [w for w in words if w.split("=", 1)[0] not in values]
    return " ".join(kept + [f"{key}={value}" for key, value in values.items()])


def run(command: str, home: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """``command`` in a shell at the repository root, with this interpreter as ``python`` and
    ``$HOME`` a scratch folder."""
    env = {**os.environ, "HOME": str(home), "PYTHONWARNINGS": "ignore"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return subprocess.run(
        ["bash", "-c", command.replace("python ", f"{sys.executable} ", 1)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "cockpit.jsonl").read_text().splitlines()]


def _kind(command: str) -> str:
    if "--help" in command:
        return "help"
    if "hydra/launcher=" in command:
        return "launcher"
    if "<run folder>" in command:
        return "resume"
    if " -m " in command:
        return "sweep"
    if re.search(r"data=(mnist|fashion_mnist|cifar10|cifar100)\b", command):
        return "torchvision"
    return "train"


SLOW = {"train", "sweep", "resume", "launcher"}  # these train (a process start is seconds)
CASES = [
    pytest.param(c, marks=pytest.mark.slow, id=f"{i}-{_kind(c)}")
    if _kind(c) in SLOW
    else pytest.param(c, id=f"{i}-{_kind(c)}")
    for i, c in enumerate(COMMANDS)
]


@pytest.mark.parametrize("command", CASES)
def test_readme_command_runs(command, tmp_path):
    kind = _kind(command)
    home = tmp_path / "home"
    home.mkdir()
    out = tmp_path / "run"
    if kind == "help":
        done = run(command, home)
        assert done.returncode == 0, done.stderr
        assert "cockpit: business, economy, full, off" in done.stdout
        return
    if kind == "torchvision":  # no data in the scratch $HOME: the documented clear error
        done = run(small(command, **{"hydra.run.dir": str(out)}), home)
        assert done.returncode == 2, done.stderr
        assert f"not found in data.data_dir='{home}/data'" in done.stderr
        assert "download=True" in done.stderr and "Traceback" not in done.stderr
        return
    if kind == "launcher":
        name = re.search(r"hydra/launcher=(\w+)", command).group(1)
        installed = importlib.util.find_spec(LAUNCHERS[name].split(".")[0]) is not None
        installed = installed and importlib.util.find_spec(LAUNCHERS[name]) is not None
        if not installed:  # the documented message without the cluster extra
            done = run(small(command, **{"hydra.sweep.dir": str(out)}), home)
            assert done.returncode != 0
            assert f"Could not find 'hydra/launcher/{name}'" in done.stderr
            return
        if name == "submitit_slurm":
            pytest.skip("submitting needs a Slurm cluster")
        done = run(small(command, **{"hydra.sweep.dir": str(out)}), home)
        assert done.returncode == 0, done.stderr
        assert len(list(out.glob("*/cockpit.jsonl"))) == 4
        return
    if kind == "sweep":
        done = run(small(command, **{"hydra.sweep.dir": str(out)}), home)
        assert done.returncode == 0, done.stderr
        jobs = sorted(out.glob("*/cockpit.jsonl"))
        assert len(jobs) == 6  # 3 learning rates x 2 models
        assert all(records(job.parent) for job in jobs)
        return
    if kind == "resume":  # a run stopped after 3 steps, continued to 6
        first = run(small(TRAIN, **{"hydra.run.dir": str(out)}), home)
        assert first.returncode == 0, first.stderr
        before = len(records(out))
        resumed = command.replace("<run folder>", str(out))
        done = run(small(resumed, **{"trainer.steps": "6"}), home)
        assert done.returncode == 0, done.stderr
        steps = [r["step"] for r in records(out)]
        assert steps == sorted(set(steps)) and len(steps) > before  # none lost, none twice
        assert json.loads((out / "summary.json").read_text())["steps"] == 6
        return
    done = run(small(command, **{"hydra.run.dir": str(out)}), home)
    assert done.returncode == 0, done.stderr
    assert records(out) and (out / "cockpit.png").exists()
    assert json.loads((out / "summary.json").read_text())["steps"] == 3


def test_quick_start_runs_as_written(tmp_path):
    (code,) = [block for block in fenced("python") if "load_digits" in block]
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert done.returncode == 0, done.stderr
    alpha, norm_test = (float(v) for v in done.stdout.split())
    assert -1 <= alpha and norm_test > 0
    log = records(tmp_path / "runs" / "example")
    tracked = [t for t in range(3 * 28) if schedules.logarithmic(end=10_000)(t)]  # 28 batches
    assert [r["step"] for r in log] == tracked  # close() wrote the last one, waiting for Alpha
    assert (tmp_path / "cockpit.png").stat().st_size > 0


def _links(path: Path) -> list[str]:
    text = path.read_text()
    return re.findall(r"\]\(([^)]+)\)", text) + re.findall(r"^\[[^]]+\]: (\S+)", text, re.M)


@pytest.mark.parametrize("doc", [README, *sorted((ROOT / "docs").glob("*.md"))], ids=str)
def test_docs_link_only_inside_the_repository(doc):
    text = doc.read_text()
    assert "../shared" not in text and "shared/" not in text
    for link in _links(doc):
        target = link.split("#", 1)[0]
        assert "://" not in link, f"{doc.name} links outside the repository: {link}"
        resolved = (doc.parent / target).resolve()
        assert resolved.is_relative_to(ROOT) and resolved.exists(), f"{doc.name}: {link}"
