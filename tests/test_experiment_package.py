"""The experiment package stays off the library's path: public API only, no import circle, its
packages in the ``experiments`` extra; and ``train.py``'s first minutes: one clean line for a
device that is not there, no folder left by a run that failed validation, a ``--help`` without
internal groups."""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import torch
from test_train import CONF, config, options

import cockpit_optim
from cockpit_optim.experiment import ConfigError, validate
from cockpit_optim.experiment.config import SCHEMAS
from cockpit_optim.experiment.data import TRAINER_FIELDS
from cockpit_optim.experiment.runs import remove_unused_run

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "cockpit_optim" / "experiment"
TRAIN = [sys.executable, str(ROOT / "experiments" / "train.py")]
EXTRA = ("hydra", "omegaconf", "sklearn", "tqdm")


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(absolute module, names) of every import in ``path``, function-level ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = "cockpit_optim" if node.level == 2 else "cockpit_optim.experiment"
            module = node.module if node.level == 0 else ".".join(filter(None, [base, node.module]))
            if node.level == 1 and node.module is None:  # from . import x
                found += [(f"{base}.{alias.name}", []) for alias in node.names]
            else:
                found.append((module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
    return found


def test_the_experiment_package_uses_only_the_public_api():
    public = {
        "cockpit_optim": set(cockpit_optim.__all__),
        "cockpit_optim.controllers": set(importlib.import_module("cockpit_optim.controllers").__all__),
        "cockpit_optim.instruments": set(cockpit_optim.instruments.__all__),
        "cockpit_optim.schedules": set(cockpit_optim.schedules.__all__),
        "cockpit_optim.cli": {"summary"},  # the table of `cockpit-optim summary`
    }  # fmt: skip
    for path in PACKAGE.glob("*.py"):
        for module, names in _imports(path):
            if not module.startswith("cockpit_optim") or module.startswith("cockpit_optim.exp"):
                continue
            assert module in public, (path.name, module)
            assert set(names) <= public[module], (path.name, module, names)


def test_no_import_circle_in_the_experiment_package():
    edges = {
        path.stem: {
            module.rsplit(".", 1)[1]
            for module, _ in _imports(path)
            if module.startswith("cockpit_optim.experiment.")
        }
        for path in PACKAGE.glob("*.py")
        if path.stem != "__init__"
    }
    assert edges["config"] == set()  # the others import it, never the reverse
    assert edges["data"] == {"config"} and edges["models"] == {"config", "data"}
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, " -> ".join((*path, module))
        if module not in done:
            for target in edges.get(module, ()):
                visit(target, (*path, module))
            done.add(module)

    for module in edges:
        visit(module, ())


def test_the_library_needs_no_experiment_package():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"])
    assert not [name for name in ("hydra", "scikit-learn", "tqdm") if name in core]
    extra = " ".join(project["optional-dependencies"]["experiments"])
    assert all(name in extra for name in ("hydra-core", "scikit-learn", "tqdm"))
    assert '-e ".[dev,experiments,vision]"' in (ROOT / "Makefile").read_text()
    blocked = "; ".join(f"sys.modules[{name!r}] = None" for name in EXTRA)
    code = f"import sys; {blocked}; import cockpit_optim, cockpit_optim.cli"  # torch may try tqdm
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize(("module", "package"), [("tqdm", "tqdm"), ("hydra", "hydra-core")])
def test_a_missing_extra_is_named(module, package):
    block = f"import sys; sys.modules[{module!r}] = None; "
    direct = subprocess.run(
        [sys.executable, "-c", block + "import cockpit_optim.experiment"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert f"needs the experiments extra (missing: {package})" in direct.stderr
    script = f"sys.argv = ['train.py']; import runpy; runpy.run_path({str(TRAIN[1])!r}, run_name='__main__')"
    entry = subprocess.run(
        [sys.executable, "-c", block + script], capture_output=True, text=True, timeout=120
    )
    assert entry.returncode == 1 and "Traceback" not in entry.stderr, entry.stderr[-2000:]
    assert entry.stderr.startswith(
        "train.py: error: cockpit_optim.experiment needs the experiments"
    )
    assert 'pip install "cockpit-optim[experiments]"' in entry.stderr


def test_importing_the_library_imports_no_package_of_the_extra():
    """``import torch`` may import tqdm itself (torch.hub): only what the library adds counts."""
    code = (
        "import json, sys, torch; before = set(sys.modules); "
        "import cockpit_optim, cockpit_optim.controllers, cockpit_optim.cli; "
        "print(json.dumps(sorted(m for m in set(sys.modules) - before "
        f"if m.split('.')[0] in {EXTRA!r})))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.splitlines()[-1]) == []


def test_every_config_option_names_a_builder_that_takes_its_fields():
    """Each option of the data, model, optimizer and controller groups names what builds it in
    ``_target_`` (no table maps names): a data loader or model builder takes exactly the option's
    fields as keywords, an optimizer or controller class accepts them."""
    from hydra.utils import get_object

    left_out = {"data": ("name", *TRAINER_FIELDS), "model": ("name",)}
    left_out["optimizer"] = left_out["controller"] = ("name",)
    for group, excluded in left_out.items():
        assert set(SCHEMAS[group]) == set(options(group))
        for option in options(group):
            fields = dict(config(f"{group}={option}")[group])
            target = fields.pop("_target_")
            for key in excluded:
                del fields[key]
            if target is None:
                assert (group, option, fields) == ("controller", "none", {})
                continue
            if group == "optimizer":
                assert target.startswith("torch.optim.")
            parameters = inspect.signature(get_object(target)).parameters
            if group in ("data", "model"):
                keywords = {name for name, p in parameters.items() if p.kind is p.KEYWORD_ONLY}
                assert keywords == set(fields), (group, option)
            else:
                assert set(fields) <= set(parameters), (group, option)


def test_an_unavailable_device_is_a_config_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"no CUDA device here; use trainer\.device=auto"):
        validate(config("trainer.device=cuda"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    validate(config("trainer.device=cuda:1"))
    with pytest.raises(ConfigError, match=r"2 CUDA device\(s\) \(cuda:0 to cuda:1\)"):
        validate(config("trainer.device=cuda:2"))
    with pytest.raises(ConfigError, match="not a device"):
        validate(config("trainer.device=tpu"))


def test_a_device_that_is_not_there_is_one_line_and_leaves_no_folder(tmp_path):
    missing = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"
    done = subprocess.run(
        [*TRAIN, f"trainer.device={missing}", "hydra.run.dir=runs/failed/run"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train.py: error: trainer.device="), done.stderr
    assert list(tmp_path.iterdir()) == []  # was: an empty run folder with .hydra/ and train.log


def test_remove_unused_run_keeps_a_folder_with_results(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "runs" / "a" / "b"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / "cockpit.jsonl").write_text("")
    assert not remove_unused_run(run_dir) and run_dir.is_dir()
    (run_dir / "cockpit.jsonl").unlink()
    (tmp_path / "runs" / "keep").mkdir()
    assert remove_unused_run(run_dir)
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["keep"]


def test_help_lists_the_groups_without_the_internal_schemas():
    done = subprocess.run([*TRAIN, "--help"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "schema" not in done.stdout
    for group in ("data", "model", "optimizer", "cockpit", "controller", "trainer"):
        assert f"{group}: {', '.join(options(group))}\n" in done.stdout
    assert "trainer.resume=true" in done.stdout
    assert CONF.is_dir()
