"""Jupyter: the example notebook runs top to bottom in a real kernel; live views update in place."""

from __future__ import annotations

import base64
from io import BytesIO
from pathlib import Path

import pytest
from PIL import Image

NOTEBOOK = Path(__file__).parent.parent / "examples" / "cockpit_in_jupyter.ipynb"


def _images(outputs, kind: str) -> list[bytes]:
    return [
        base64.b64decode(o["data"]["image/png"])
        for o in outputs
        if o["output_type"] == kind and "image/png" in o.get("data", {})
    ]


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    folder = tmp_path_factory.mktemp("notebook")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": folder}}
    )
    client.execute()
    code = [c for c in notebook.cells if c.cell_type == "code"]
    return code, folder


def test_example_notebook_runs_top_to_bottom(executed):
    code, _ = executed
    assert all(o["output_type"] != "error" for cell in code for o in cell.outputs)


def test_live_cockpit_updates_one_output_in_place(executed):
    code, _ = executed
    training = code[1]
    images = _images(training.outputs, "display_data")
    assert len(images) == 1  # three drawings (records 5, 10, 15 + close), one output
    printed = "".join(o.get("text", "") for o in training.outputs if o["output_type"] == "stream")
    assert "15 records, 3 drawings in one output" in printed
    with Image.open(BytesIO(images[0])) as image:
        assert image.size == (960, 720)


def test_plot_returns_a_figure_that_displays_inline(executed):
    code, _ = executed
    (png,) = _images(code[2].outputs, "execute_result")
    with Image.open(BytesIO(png)) as image:
        assert image.size == (960, 720)


def test_plot_every_in_a_notebook_replaces_one_output(executed):
    code, folder = executed
    cell = code[3]
    assert len(_images(cell.outputs, "display_data")) == 1
    assert (folder / "cockpit_run" / "cockpit.png").exists()
    assert (folder / "cockpit_run" / "cockpit.jsonl").exists()
