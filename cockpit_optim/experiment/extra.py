"""The ``experiments`` extra: importing this module raises ``ImportError`` naming it when one of
its packages is missing (checked without importing them)."""

from importlib.util import find_spec

_NEEDED = {
    "hydra": "hydra-core",
    "omegaconf": "hydra-core",
    "sklearn": "scikit-learn",
    "tqdm": "tqdm",
}
_MISSING = sorted({package for module, package in _NEEDED.items() if find_spec(module) is None})
if _MISSING:
    raise ImportError(
        f"cockpit_optim.experiment needs the experiments extra (missing: {', '.join(_MISSING)}); "
        'install it with: pip install "cockpit-optim[experiments]" (from a checkout: '
        'pip install -e ".[experiments]")'
    )
