"""Structured configs of the Hydra experiments (``conf/``): one dataclass per group option.

The YAML files in ``conf/`` extend these schemas, so a misspelt key, a wrong type or an enum
value outside its choices fails when Hydra composes the config.  :func:`register_configs` stores
the schemas in Hydra's ``ConfigStore`` (group ``schema/<group>``); importing this module registers
nothing; :mod:`.validation` checks what a schema cannot.

The data, model, optimizer and controller schemas name what builds them in ``_target_`` (Hydra's
convention): :func:`builder` hands it to ``hydra.utils.instantiate``, so :data:`SCHEMAS` is the
only table of option names.  This module imports no other module of the experiment package (they
import it).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from functools import partial
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

__all__ = [
    "SCHEMAS",
    "ConfigError",
    "TrainConfig",
    "builder",
    "check_name",
    "group_config",
    "register_configs",
]


class ConfigError(ValueError):
    """A configuration value that no schema can reject (unknown name, inconsistent settings)."""


class Activation(str, Enum):
    relu = "relu"
    sigmoid = "sigmoid"
    tanh = "tanh"
    gelu = "gelu"


class Scaling(str, Enum):
    """Input scaling of image data: raw pixel values, ``[0, 1]``, or zero mean and unit variance
    per channel (statistics of the training split)."""

    raw = "raw"
    unit = "unit"
    standard = "standard"


class TrackSchedule(str, Enum):  # see cockpit_optim.schedules
    interval = "interval"
    logarithmic = "logarithmic"


class GradientTest(str, Enum):  # of GradientTestBatchSize
    norm = "norm"
    augmented = "augmented"


# ------------------------------------------------------------------------------------ data
@dataclass
class DataConfig:
    """Common fields of every data set; ``_target_`` loads it from the fields a subclass adds."""

    name: str = MISSING
    _target_: str = MISSING
    batch_size: int = 64
    eval_batch_size: int = 1024
    train_subset: int | None = None  # use only the first N training examples


@dataclass
class DigitsConfig(DataConfig):
    """scikit-learn's bundled 8x8 digits (1797 images, pixel values 0..16)."""

    name: str = "digits"
    _target_: str = "cockpit_optim.experiment.data.digits"
    scaling: Scaling = Scaling.unit
    test_fraction: float = 0.2
    seed: int = 0  # of the train/test split


@dataclass
class NoisyQuadraticConfig(DataConfig):
    """Least squares ``(w.x - y)^2`` with a DeepOBS-like Hessian spectrum and label noise."""

    name: str = "noisy_quadratic"
    _target_: str = "cockpit_optim.experiment.data.noisy_quadratic"
    dim: int = 100
    train_size: int = 2000
    test_size: int = 1000
    noise: float = 1.0
    seed: int = 0


@dataclass
class SyntheticConfig(DataConfig):
    """Gaussian-cluster classification (``sklearn.datasets.make_classification``)."""

    name: str = "synthetic"
    _target_: str = "cockpit_optim.experiment.data.synthetic"
    features: int = 20
    informative: int = 10
    classes: int = 4
    class_sep: float = 1.0
    train_size: int = 2000
    test_size: int = 1000
    seed: int = 0


@dataclass
class SequenceConfig(DataConfig):
    """Token sequences labelled by their most frequent token (for the transformer)."""

    name: str = "sequence"
    _target_: str = "cockpit_optim.experiment.data.sequence"
    vocab_size: int = 8
    length: int = 16
    train_size: int = 4000
    test_size: int = 1000
    seed: int = 0


@dataclass
class TorchvisionConfig(DataConfig):
    """MNIST, Fashion-MNIST, CIFAR-10/100 read by torchvision from ``data_dir`` (never downloaded)."""

    data_dir: str = "data"
    scaling: Scaling = Scaling.unit
    batch_size: int = 128


@dataclass
class MNISTConfig(TorchvisionConfig):
    name: str = "mnist"
    _target_: str = "cockpit_optim.experiment.data.mnist"


@dataclass
class FashionMNISTConfig(TorchvisionConfig):
    name: str = "fashion_mnist"
    _target_: str = "cockpit_optim.experiment.data.fashion_mnist"


@dataclass
class CIFAR10Config(TorchvisionConfig):
    name: str = "cifar10"
    _target_: str = "cockpit_optim.experiment.data.cifar10"


@dataclass
class CIFAR100Config(TorchvisionConfig):
    name: str = "cifar100"
    _target_: str = "cockpit_optim.experiment.data.cifar100"


# ---------------------------------------------------------------------------------- models
@dataclass
class ModelConfig:
    """Common fields of every model: ``_target_`` builds it for the data from the other fields."""

    name: str = MISSING
    _target_: str = MISSING


@dataclass
class MLPConfig(ModelConfig):
    name: str = "mlp"
    _target_: str = "cockpit_optim.experiment.models.mlp_for"
    hidden: list[int] = field(default_factory=lambda: [256])
    activation: Activation = Activation.relu


@dataclass
class LogRegConfig(ModelConfig):
    """A linear model: logistic regression (classification) or least squares (regression)."""

    name: str = "logreg"
    _target_: str = "cockpit_optim.experiment.models.logreg_for"


@dataclass
class C3D3Config(ModelConfig):
    """DeepOBS 3C3D: three convolutions and three dense layers (895,210 parameters on CIFAR-10)."""

    name: str = "3c3d"
    _target_: str = "cockpit_optim.experiment.models.c3d3_for"
    activation: Activation = Activation.relu


@dataclass
class DigitsCNNConfig(ModelConfig):
    """Two 3x3 convolutions with 2x2 max-pooling and one hidden dense layer (sized for 8x8)."""

    name: str = "digits_cnn"
    _target_: str = "cockpit_optim.experiment.models.digits_cnn_for"
    channels: list[int] = field(default_factory=lambda: [8, 16])
    hidden: int = 32
    activation: Activation = Activation.relu


@dataclass
class AllCNNCConfig(ModelConfig):
    """All-CNN-C (Springenberg et al. 2015; 1,387,108 parameters on CIFAR-100)."""

    name: str = "allcnnc"
    _target_: str = "cockpit_optim.experiment.models.allcnnc_for"
    activation: Activation = Activation.relu
    dropout: bool = False  # DeepOBS: 0.2 on the input, 0.5 after each stride-2 block


@dataclass
class TransformerConfig(ModelConfig):
    """Pre-norm transformer encoder classifier: token + learned position embedding, mean pool."""

    name: str = "transformer"
    _target_: str = "cockpit_optim.experiment.models.transformer_for"
    dim: int = 32
    heads: int = 4
    layers: int = 2
    feedforward: int = 64
    dropout: float = 0.0


# ------------------------------------------------------------------------------ optimizers
@dataclass
class OptimizerConfig:
    """A ``torch.optim`` class (``_target_``) and its keyword arguments (the other fields)."""

    name: str = MISSING
    _target_: str = MISSING
    lr: float = 0.1
    weight_decay: float = 0.0


@dataclass
class SGDConfig(OptimizerConfig):
    name: str = "sgd"
    _target_: str = "torch.optim.SGD"


@dataclass
class MomentumConfig(OptimizerConfig):
    name: str = "momentum"
    _target_: str = "torch.optim.SGD"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False


@dataclass
class AdamConfig(OptimizerConfig):
    name: str = "adam"
    _target_: str = "torch.optim.Adam"
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8


@dataclass
class AdamWConfig(AdamConfig):
    name: str = "adamw"
    _target_: str = "torch.optim.AdamW"
    weight_decay: float = 0.01


# --------------------------------------------------------------------------------- cockpit
@dataclass
class TrackConfig:
    schedule: TrackSchedule = TrackSchedule.logarithmic
    interval: int = 1  # schedule=interval: every interval-th step
    points: int = 400  # schedule=logarithmic: about this many steps, log-spaced over the run


@dataclass
class CockpitConfig:
    """Instruments: configuration names (economy, business, full) and/or instrument names."""

    name: str = MISSING
    instruments: list[str] = field(default_factory=list)
    track: TrackConfig = field(default_factory=TrackConfig)
    plot_every: int | None = 100  # redraw cockpit.png every N records while training
    layerwise: bool = True  # also draw cockpit_layerwise.png at the end


# ----------------------------------------------------------------------------- controllers
@dataclass
class ControllerConfig:
    """A controller class (``_target_``; none for ``null``) and its keyword arguments."""

    name: str = MISSING
    _target_: str | None = MISSING


@dataclass
class NoControllerConfig(ControllerConfig):
    name: str = "none"
    _target_: str | None = None


@dataclass
class CABSConfig(ControllerConfig):
    name: str = "cabs"
    _target_: str | None = "cockpit_optim.controllers.CABSBatchSize"
    factor: float = 1.0
    smoothing: float = 0.95
    min_batch_size: int = 16
    max_batch_size: int = 2048  # capped at the training set size
    loss_floor: float = 0.0


@dataclass
class GradientTestConfig(ControllerConfig):
    name: str = "gradient_test"
    _target_: str | None = "cockpit_optim.controllers.GradientTestBatchSize"
    test: GradientTest = GradientTest.norm
    theta: float = 0.9
    nu: float | None = None  # None: tan(80 deg)
    max_batch_size: int | None = None  # None: the training set size
    average_over: int = 1


@dataclass
class AlphaLRConfig(ControllerConfig):
    name: str = "alpha_lr"
    _target_: str | None = "cockpit_optim.controllers.AlphaLR"
    target: float = 0.15
    window: int = 20
    dead_band: float = 0.05
    significance: float = 0.05  # largest sign-test p-value of a regular change
    max_change: list[float] = field(default_factory=lambda: [0.5, 1.15])
    bounds: list[float] = field(default_factory=lambda: [0.01, 10.0])
    warmup: int = 20
    overshoots: list[int] = field(default_factory=lambda: [3, 10])  # emergency: 3 of 10 >= 1
    blowup: float = 10.0
    loss_smoothing: float = 0.9


@dataclass
class EarlyStoppingConfig(ControllerConfig):
    name: str = "early_stopping"
    _target_: str | None = "cockpit_optim.controllers.EvidenceEarlyStopping"
    window: int = 10
    patience: int = 10
    min_steps: int = 0


# --------------------------------------------------------------------------------- trainer
@dataclass
class TrainerConfig:
    """Training length (exactly one of ``steps`` / ``epochs``), evaluation and checkpoints."""

    steps: int | None = 2000
    epochs: int | None = None
    eval_every: int = 50  # these steps are tracked too; their records carry the metrics
    eval_samples: int | None = None  # evaluate on at most N examples of each split
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda, cuda:N, mps
    threads: int | None = None  # torch.set_num_threads
    checkpoint_every: int | None = 500  # steps; None: only at the end
    resume: bool = False  # continue from checkpoint.pt in the run folder
    progress: bool = True


@dataclass
class TrainConfig:
    """The root config of ``experiments/train.py``."""

    data: DataConfig = MISSING
    model: ModelConfig = MISSING
    optimizer: OptimizerConfig = MISSING
    cockpit: CockpitConfig = MISSING
    controller: ControllerConfig = MISSING
    trainer: TrainerConfig = MISSING


def _by_name(*schemas: type) -> dict[str, type]:
    return {schema.name: schema for schema in schemas}


SCHEMAS: dict[str, dict[str, type]] = {
    "data": _by_name(
        DigitsConfig,
        NoisyQuadraticConfig,
        SyntheticConfig,
        SequenceConfig,
        MNISTConfig,
        FashionMNISTConfig,
        CIFAR10Config,
        CIFAR100Config,
    ),
    "model": _by_name(
        MLPConfig, LogRegConfig, C3D3Config, DigitsCNNConfig, AllCNNCConfig, TransformerConfig
    ),
    "optimizer": _by_name(SGDConfig, MomentumConfig, AdamConfig, AdamWConfig),
    "cockpit": {"cockpit": CockpitConfig},
    "controller": _by_name(
        NoControllerConfig, CABSConfig, GradientTestConfig, AlphaLRConfig, EarlyStoppingConfig
    ),
    "trainer": {"trainer": TrainerConfig},
}


def register_configs() -> None:
    """Store the root schema (``train_schema``) and every group schema (``schema/<group>/<name>``)
    in Hydra's ConfigStore; the YAML files of ``conf/`` name them in their defaults lists."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig)
    for group, schemas in SCHEMAS.items():
        for name, schema in schemas.items():
            store.store(group=f"schema/{group}", name=name, node=schema)


def check_name(group: str, name: Any) -> None:
    """Raise :class:`ConfigError` listing the valid choices unless ``name`` is an option of
    ``group`` (``data``, ``model``, ``optimizer`` or ``controller``)."""
    if name not in SCHEMAS[group]:
        raise ConfigError(
            f"unknown {group} {name!r} ({group}.name); valid choices: "
            f"{', '.join(sorted(SCHEMAS[group]))}"
        )


def group_config(group: str, cfg: Any, resolve: bool = False) -> DictConfig:
    """``cfg`` (a config, dict or schema instance of ``group``) merged onto the schema its
    ``name`` selects: defaults filled in; an unknown name, key, type or enum value raises
    :class:`ConfigError`.  ``resolve``: a config's interpolations are resolved first (they may
    point outside the group)."""
    schemas = SCHEMAS[group]
    try:
        if resolve and OmegaConf.is_config(cfg):
            cfg = OmegaConf.to_container(cfg, resolve=True)
        if len(schemas) == 1:
            schema = next(iter(schemas.values()))
        else:
            name = (cfg if OmegaConf.is_config(cfg) else OmegaConf.structured(cfg)).get("name")
            check_name(group, name)
            schema = schemas[name]
        return OmegaConf.merge(OmegaConf.structured(schema), cfg)
    except OmegaConfBaseException as error:
        raise ConfigError(f"{group}: {str(error).splitlines()[0]}") from None


def builder(group: str, cfg: Any, exclude: Iterable[str] = ()) -> partial[Any] | None:
    """The ``_target_`` of a ``group`` config as ``hydra.utils.instantiate`` gives it with
    ``_partial_``: a :class:`functools.partial` holding the other fields but ``name`` and
    ``exclude`` as keywords (``None`` for a null target).  Invalid values (see :func:`group_config`) and a target that
    cannot be used raise :class:`ConfigError`; what the target raises when called passes
    unchanged."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    fields = OmegaConf.to_container(group_config(group, cfg, resolve=True), enum_to_str=True)
    for key in ("name", *exclude):
        fields.pop(key)
    target = fields["_target_"]
    if target is None:
        return None
    try:
        return instantiate(fields, _partial_=True, _convert_="all")
    except InstantiationException as error:
        detail = " ".join(str(error.__cause__ or error).split())
        raise ConfigError(f"{group}._target_={target!r}: {detail}") from None
