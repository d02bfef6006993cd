"""Support for the Hydra experiments of ``experiments/``: structured configs, data sets, model zoo
and the training loop.  Importing registers nothing with Hydra; ``experiments/train.py`` calls
:func:`register_configs`.

>>> from cockpit_optim.experiment import build_model, load_data

Needs the ``experiments`` extra (Hydra, scikit-learn, tqdm): ``pip install "cockpit-optim[experiments]"``.
"""

from . import extra  # noqa: F401  (first: an ImportError that names the missing extra)
from .config import ConfigError, TrainConfig, register_configs
from .data import Data, DataInfo, DataNotFoundError, load_data
from .models import build_model, num_parameters
from .trainer import Trainer, evaluate, train
from .validation import instrument_names, validate

__all__ = [
    "ConfigError",
    "Data",
    "DataInfo",
    "DataNotFoundError",
    "TrainConfig",
    "Trainer",
    "build_model",
    "evaluate",
    "instrument_names",
    "load_data",
    "num_parameters",
    "register_configs",
    "train",
    "validate",
]
