"""``import cockpit_optim`` (and its export / integration packages) imports no optional framework."""

from __future__ import annotations

import json
import subprocess
import sys

FRAMEWORKS = (
    "lightning",
    "pytorch_lightning",
    "transformers",
    "accelerate",
    "tensorboard",
    "torch.utils.tensorboard",
    "wandb",
    "mlflow",
    "IPython",
    "ipykernel",
)


def test_importing_cockpit_optim_imports_no_optional_framework():
    code = (
        "import json, sys\n"
        "import cockpit_optim, cockpit_optim.export, cockpit_optim.integrations, cockpit_optim.cli\n"
        f"print(json.dumps(sorted(m for m in {FRAMEWORKS!r} if m in sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    assert json.loads(result.stdout.splitlines()[-1]) == []
