"""Checks of a composed config that no schema can express (names, instrument lists, value
ranges, devices of this machine), and a saved config put back on its schemas."""

from __future__ import annotations

import torch
from omegaconf import DictConfig, OmegaConf

from ..instruments import CONFIGURATIONS, REGISTRY
from .config import SCHEMAS, ConfigError, TrainConfig, check_name, group_config

__all__ = ["POSITIVE", "instrument_names", "typed", "validate"]


def _choices(names) -> str:
    return ", ".join(sorted(names))


def instrument_names(entries: list[str]) -> list[str]:
    """Expand configuration names (economy, business, full) among instrument names, keeping the
    order and dropping repeats; unknown names raise :class:`ConfigError` listing the valid ones."""
    names: list[str] = []
    for entry in entries:
        if entry in CONFIGURATIONS:
            expanded = list(CONFIGURATIONS[entry])
        elif entry in REGISTRY:
            expanded = [entry]
        else:
            raise ConfigError(
                f"unknown instrument {entry!r} in cockpit.instruments; valid configurations: "
                f"{_choices(CONFIGURATIONS)}; valid instruments: {_choices(REGISTRY)}"
            )
        names += [name for name in expanded if name not in names]
    return names


# integer settings that must be positive; those marked True may also be null
POSITIVE = {
    "trainer.steps": True,
    "trainer.epochs": True,
    "trainer.eval_every": False,
    "trainer.eval_samples": True,
    "trainer.checkpoint_every": True,
    "trainer.threads": True,
    "data.batch_size": False,
    "data.eval_batch_size": False,
    "data.train_subset": True,
    "cockpit.track.interval": False,
    "cockpit.track.points": False,
    "cockpit.plot_every": True,
}


def validate(cfg: DictConfig | TrainConfig) -> None:
    """Check the names, the instrument list, the trainer settings and the device of a composed
    config; raises :class:`ConfigError` with the valid choices."""
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.structured(cfg)
    for group in ("data", "model", "optimizer", "controller"):
        check_name(group, cfg[group].name)
    instrument_names(list(cfg.cockpit.instruments))
    trainer = cfg.trainer
    if (trainer.steps is None) == (trainer.epochs is None):
        raise ConfigError(
            "set exactly one of trainer.steps and trainer.epochs "
            f"(got steps={trainer.steps}, epochs={trainer.epochs}); e.g. trainer.epochs=5 "
            "trainer.steps=null"
        )
    for key, optional in POSITIVE.items():
        value = OmegaConf.select(cfg, key)
        if not (value is None and optional) and (value is None or value < 1):
            raise ConfigError(f"{key} must be a positive integer, got {value}")
    if trainer.device != "auto":
        _check_device(trainer.device)


def _check_device(name: str) -> None:
    """``name`` is a device of this machine (``torch.device`` accepts more than exists here)."""
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ConfigError(
            f"trainer.device={name!r} is not a device; use auto, cpu, cuda, cuda:N or mps"
        ) from error
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(
                f"trainer.device={name!r}, but torch finds no CUDA device here; use "
                "trainer.device=auto (a GPU where there is one) or trainer.device=cpu"
            )
        if device.index is not None and device.index >= count:
            raise ConfigError(
                f"trainer.device={name!r}, but there are {count} CUDA device(s) "
                f"(cuda:0 to cuda:{count - 1})"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(
            f"trainer.device={name!r}, but MPS is not available here; use trainer.device=auto"
        )
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"trainer.device={name!r} is not supported; use auto, cpu, cuda or mps")


def typed(cfg: DictConfig | dict) -> DictConfig:
    """A saved config (a run's ``.hydra/config.yaml``) on its schemas again: types and enum
    choices are checked, as at composition, when settings are changed afterwards."""
    cfg = OmegaConf.create(cfg) if isinstance(cfg, dict) else cfg
    root = OmegaConf.structured(TrainConfig)
    for group in SCHEMAS:
        root[group] = group_config(group, cfg[group])
    return root
