"""Run folders of ``experiments/train.py``: checkpoints written atomically and read with
``weights_only=True``, resuming a run from its own saved config, removing the folder Hydra made
for a run that failed before training, and the groups ``--help`` lists.

A resumed run is not composed by Hydra again: ``python experiments/train.py hydra.run.dir=<run>
trainer.resume=true`` reads ``<run>/.hydra/config.yaml`` (the config the run was started with,
whatever its overrides), applies the ``trainer.*`` overrides of the command line and trains in
``<run>``; Hydra writes nothing there, so the run's ``.hydra/`` stays as it was.
"""

from __future__ import annotations

import os
import pickle
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .config import ConfigError
from .validation import typed

__all__ = [
    "HYDRA_FILES",
    "config_groups",
    "load_checkpoint",
    "remove_unused_run",
    "resume_config",
    "resume_folder",
    "save_atomically",
]

#: What Hydra writes into a run folder before the task starts.
HYDRA_FILES = frozenset({".hydra", "train.log"})


def _overrides(args: Sequence[str]) -> list:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_overrides(list(args))
    except Exception as error:  # Hydra's own OverrideParseException
        raise ConfigError(str(error)) from None


def resume_folder(args: Sequence[str]) -> Path | None:
    """The run folder of a command line that resumes one run (``hydra.run.dir=<run>
    trainer.resume=true``, no flags); ``None`` for any other command line (Hydra runs it)."""
    if any(arg.startswith("-") for arg in args):  # --multirun, --help, --cfg ...
        return None
    values = {o.key_or_group: o for o in _overrides(args)}
    if "trainer.resume" not in values or values["trainer.resume"].value() is not True:
        return None
    if "hydra.run.dir" not in values:
        raise ConfigError(
            "trainer.resume=true continues a run in its folder: name it with "
            "hydra.run.dir=<run folder>"
        )
    return Path(values["hydra.run.dir"].value())


def resume_config(run: str | Path, args: Sequence[str] = ()) -> DictConfig:
    """The config ``run`` was started with (its ``.hydra/config.yaml``) with the ``trainer.*``
    overrides of ``args`` applied and ``trainer.resume=true``; other settings cannot change."""
    run = Path(run)
    saved = run / ".hydra" / "config.yaml"
    if not saved.is_file():
        raise ConfigError(
            f"cannot resume {run}: it has no .hydra/config.yaml (not a run folder of "
            "experiments/train.py)"
        )
    try:
        cfg = typed(OmegaConf.load(saved))
    except (OmegaConfBaseException, ConfigError) as error:
        raise ConfigError(f"cannot resume {run}: {saved}: {_first_line(error)}") from None
    for override in _overrides(args):
        key = override.key_or_group
        if key == "hydra.run.dir":
            continue
        if not key.startswith("trainer.") or override.is_delete() or override.is_sweep_override():
            raise ConfigError(
                f"cannot resume {run} with {override.input_line}: a resumed run keeps the "
                f"config it was started with ({saved}); only trainer.* settings may change"
            )
        try:
            OmegaConf.update(cfg, key, override.value())
        except OmegaConfBaseException as error:
            raise ConfigError(f"{override.input_line}: {_first_line(error)}") from None
    cfg.trainer.resume = True
    return cfg


def _first_line(error: Exception) -> str:
    return str(error).splitlines()[0]


def remove_unused_run(run: str | Path) -> bool:
    """Remove ``run`` if it holds only what Hydra wrote (the run failed before it started), and
    the parents Hydra made for it that are left empty, up to the working directory.  Returns
    whether ``run`` was removed."""
    run = Path(run).resolve()
    if not run.is_dir() or any(path.name not in HYDRA_FILES for path in run.iterdir()):
        return False
    shutil.rmtree(run)
    here, parent = Path.cwd().resolve(), run.parent
    while here in parent.parents and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent
    return True


def config_groups(conf: str | Path) -> str:
    """One line per config group of ``conf`` with its options (for ``--help``)."""
    groups = sorted(path for path in Path(conf).iterdir() if path.is_dir())
    return "\n".join(
        f"{group.name}: {', '.join(sorted(p.stem for p in group.glob('*.yaml')))}"
        for group in groups
    )


def save_atomically(state: dict, path: Path) -> None:
    """``torch.save`` to a temporary file, synced, then renamed over ``path``: a crash leaves the
    old file or the new one, never a part."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # the rename itself
    finally:
        os.close(folder)


def load_checkpoint(path: Path) -> dict:
    """A checkpoint of :meth:`Trainer.save_checkpoint`, read with ``weights_only=True``: tensors,
    containers and numbers only, so a folder from elsewhere cannot run code when loaded."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ConfigError(
            f"cannot resume from {path}: it holds objects other than tensors, containers and "
            f"numbers, and is not loaded ({str(error).splitlines()[0]})"
        ) from None
