"""The benchmark scripts run end to end on the small MLP (smoke tests: no timing is asserted)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


@pytest.fixture(autouse=True)
def _experiments_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(EXPERIMENTS))


def test_overhead_benchmark_writes_ratios(tmp_path: Path, capsys) -> None:
    import benchmark_overhead

    out = tmp_path / "overhead.json"
    args = "--problems mlp --configs economy untracked --rounds 2 --steps 1"
    args += " --min-block-seconds 0 --threads 1 --json"
    benchmark_overhead.main([*args.split(), str(out)])
    table = capsys.readouterr().out
    assert "| economy |" in table and "| untracked |" in table
    ratios = json.loads(out.read_text())["problems"]["mlp"]["ratios"]
    assert set(ratios) == {"economy", "untracked"}
    assert all(len(v) == 2 and all(r > 0 for r in v) for v in ratios.values())


def test_interval_benchmark_draws_the_heat_map(tmp_path: Path, capsys) -> None:
    import benchmark_interval

    png, out = tmp_path / "grid.png", tmp_path / "grid.json"
    args = "--problems mlp --configs economy --intervals 1 4 --rounds 1 --min-steps 4"
    args += " --min-window-seconds 0 --threads 1"
    benchmark_interval.main([*args.split(), "--png", str(png), "--json", str(out)])
    assert "track=4" in capsys.readouterr().out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    raw = json.loads(out.read_text())["problems"]["mlp"]
    assert raw["windows"] == {"1": 4, "4": 4}
    assert set(raw["ratios"]["economy"]) == {"1", "4"}


def test_histogram_benchmark_reports_both_steps(capsys) -> None:
    import benchmark_histogram

    benchmark_histogram.main("--problems mlp --budgets 16 --draws 2 --steps 1 --threads 1".split())
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| mlp")]
    assert [row.split(" | ")[1] for row in rows] == ["exact", "2^16", "default"]
    cells = rows[1].split(" | ")
    drawn = [int(cells[i].replace(",", "")) for i in (2, 5)]
    assert all(abs(d - 2**16) <= 8 for d in drawn)  # the budget caps both steps (+- rounding)
    first_l1, next_l1 = float(cells[3].rstrip("%")), float(cells[6].rstrip("%"))
    assert 0.5 < first_l1 < 3 and 0.5 < next_l1 < 3  # 2^16 draws: about 1.6% expected


@pytest.mark.slow
def test_memory_benchmark_measures_each_configuration(tmp_path: Path, capsys) -> None:
    import benchmark_memory

    out = tmp_path / "memory.json"
    benchmark_memory.main(
        ["--problems", "mlp", "--configs", "economy", "--threads", "1", "--json", str(out)]
    )
    assert "economy" in capsys.readouterr().out
    results = json.loads(out.read_text())["results"]["mlp"]
    plain, economy = results["plain"], results["economy"]
    assert plain["baseline"] == economy["baseline"] > 203_530 * 4  # parameters and batch
    assert 0 < plain["extra"] < economy["extra"]  # the monitor's statistics take memory
    assert economy["failed_readings"] == []


def test_compare_without_the_original_names_the_install(monkeypatch, capsys) -> None:
    import benchmark_overhead

    monkeypatch.setitem(sys.modules, "cockpit", None)  # as if it were not installed
    with pytest.raises(SystemExit) as exit_info:
        benchmark_overhead.main(["--problems", "mlp", "--configs", "economy", "--compare"])
    assert exit_info.value.code != 0
    assert "cockpit-for-pytorch" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_cuda_check_names_the_missing_device(capsys) -> None:
    import check_cuda

    with pytest.raises(SystemExit) as exit_info:
        check_cuda.main(["--problems", "mlp"])
    assert exit_info.value.code == 2
    assert "no CUDA device" in capsys.readouterr().err
