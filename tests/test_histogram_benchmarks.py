"""The histogram benchmarks' new rows run end to end (smoke tests: no timing is asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


@pytest.fixture(autouse=True)
def _experiments_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(EXPERIMENTS))


def test_overhead_benchmark_counts_aten_operations_per_step(tmp_path: Path, capsys) -> None:
    import benchmark_overhead

    out = tmp_path / "overhead.json"
    args = "--problems mlp --configs economy --instruments GradHist1d --ops --rounds 1 --steps 1"
    args += " --min-block-seconds 0 --threads 1 --json"
    benchmark_overhead.main([*args.split(), str(out)])
    table = capsys.readouterr().out
    assert "| instr:GradHist1d |" in table
    ops = json.loads(out.read_text())["problems"]["mlp"]["aten_ops"]
    assert set(ops) == {"plain", "economy", "instr:GradHist1d"}
    # forward, loss, backward and SGD dispatch some tens of operations; tracking adds more
    assert 20 < ops["plain"] < ops["instr:GradHist1d"] < ops["economy"]
    assert f"| aten ops / step: economy | {ops['economy']:,} |" in table
