"""Train a model with the cockpit, configured by Hydra (``conf/train.yaml``).

    python experiments/train.py                                  # digits, small CNN, full cockpit
    python experiments/train.py model=mlp cockpit=economy optimizer=adam optimizer.lr=3e-3
    python experiments/train.py -m optimizer.lr=0.01,0.1         # a sweep (basic launcher)
    python experiments/train.py hydra.run.dir=runs/<killed run> trainer.resume=true

Each run folder holds ``cockpit.jsonl`` (records with train/test metrics), ``cockpit.png``,
``cockpit_layerwise.png``, ``checkpoint.pt``, ``summary.json`` and Hydra's ``.hydra/`` config.
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from cockpit_optim.experiment import ConfigError, DataNotFoundError, register_configs, train

register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float:
    """Train in Hydra's output folder; returns the final test loss (the objective of sweepers)."""
    try:
        summary = train(cfg, HydraConfig.get().runtime.output_dir)
    except (ConfigError, DataNotFoundError) as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    return summary["final"]["test_loss"]


if __name__ == "__main__":
    main()
