"""Train a model with the cockpit, configured by Hydra (``conf/train.yaml``).

    python experiments/train.py                                  # digits, small CNN, full cockpit
    python experiments/train.py model=mlp cockpit=economy optimizer=adam optimizer.lr=3e-3
    python experiments/train.py -m optimizer.lr=0.01,0.1         # a sweep (basic launcher)
    python experiments/train.py hydra.run.dir=runs/<killed run> trainer.resume=true

Each run folder holds ``cockpit.jsonl`` (records with train/test metrics), ``cockpit.png``,
``cockpit_layerwise.png``, ``checkpoint.pt``, ``summary.json`` and Hydra's ``.hydra/`` config.
A resumed run takes the config it was started with from its ``.hydra/config.yaml`` (only
``trainer.*`` settings may be given again) and leaves ``.hydra/`` as it was.  Needs the
``experiments`` extra: ``pip install -e ".[experiments]"``.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    from cockpit_optim.experiment import ConfigError, DataNotFoundError, register_configs, train
except ImportError as error:  # the experiments extra is not installed
    sys.exit(f"train.py: error: {error}")

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from cockpit_optim.experiment.runs import (
    config_groups,
    remove_unused_run,
    resume_config,
    resume_folder,
)

CONF = Path(__file__).resolve().parents[1] / "conf"

register_configs()
OmegaConf.register_new_resolver("cockpit_config_groups", lambda: config_groups(CONF))


def fail(error: Exception) -> None:
    print(f"train.py: error: {error}", file=sys.stderr)
    raise SystemExit(2) from None


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def run(cfg: DictConfig) -> float:
    """Train in Hydra's output folder; returns the final test loss (the objective of sweepers)."""
    folder = HydraConfig.get().runtime.output_dir
    try:
        summary = train(cfg, folder)
    except (ConfigError, DataNotFoundError) as error:
        remove_unused_run(folder)
        fail(error)
    return summary["final"]["test_loss"]


def main() -> None:
    """Resume the run a command line names (without Hydra), or hand the command to Hydra."""
    try:
        folder = resume_folder(sys.argv[1:])
        if folder is not None:
            train(resume_config(folder, sys.argv[1:]), folder)
            return
    except (ConfigError, DataNotFoundError) as error:
        fail(error)
    run()


if __name__ == "__main__":
    main()
