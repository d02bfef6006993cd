"""DistributedDataParallel: readings over the global batch equal a single process's on the
concatenated batch; identical controller decisions on all ranks; only rank 0 writes; resume."""

from __future__ import annotations

import math
import socket
from pathlib import Path

import pytest
import reference as ref
import torch
import torch.multiprocessing as mp
from ddp_worker import global_batches, train, worker
from models import make_problem

from cockpit_optim import load_log

SCALARS = (
    "Loss",
    "GradNorm",
    "Distance",
    "UpdateSize",
    "NormTest",
    "InnerTest",
    "OrthoTest",
    "CABS",
    "EarlyStopping",
    "MeanGSNR",
    "HessTrace",
    "TICDiag",
    "TICTrace",
    "lr",
    "GradientNoiseScale_trace",
    "GradientNoiseScale_signal",
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _close_hist(a: dict, b: dict, slack: int) -> None:
    assert a["population"] == b["population"] and a["binned"] == b["binned"]
    assert sum(abs(x - y) for x, y in zip(a["counts"], b["counts"])) <= slack


def _flat_2d(record: dict) -> dict:
    return record | {"counts": [c for row in record["counts"] for c in row]}


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 3])
def test_ddp_readings_equal_single_process_on_the_global_batch(world, tmp_path):
    problem = "cnn"
    mp.spawn(
        worker,
        args=(world, _free_port(), problem, str(tmp_path), str(tmp_path / "log")),
        nprocs=world,
        join=True,
    )
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world)]
    model, _, _ = make_problem(problem)
    single = train(model, problem, global_batches(problem))
    reference = single.history
    for result in results:
        history = result["history"]
        assert [r["step"] for r in history] == [r["step"] for r in reference]
        for mine, theirs in zip(history, reference):
            for key in SCALARS:
                assert math.isclose(mine[key], theirs[key], rel_tol=1e-6, abs_tol=1e-12), key
            assert math.isclose(mine["HessMaxEV"], theirs["HessMaxEV"], rel_tol=2e-3)
            assert math.isclose(mine["Alpha"], theirs["Alpha"], rel_tol=1e-5, abs_tol=1e-9)
            assert mine["batch_size"] == theirs["batch_size"]
            assert mine.get("actions", []) == theirs.get("actions", [])
            _close_hist(mine["GradHist1d"], theirs["GradHist1d"], slack=4)
            _close_hist(_flat_2d(mine["GradHist2d"]), _flat_2d(theirs["GradHist2d"]), slack=8)
        # resumed runs continue (up to DDP's own rounding: a fresh DDP wrapper rebuckets its
        # gradient all-reduce, which reorders the float sums at the last bit)
        assert len(result["resumed"]) == len(history)
        for a, b in zip(result["resumed"], history):
            for key in (*SCALARS, "Alpha", "HessMaxEV"):
                assert math.isclose(a[key], b[key], rel_tol=1e-10, abs_tol=1e-14), key
            _close_hist(a["GradHist1d"], b["GradHist1d"], slack=2)
    for p, q in zip(results[0]["params"], model.parameters()):
        torch.testing.assert_close(p, q.detach(), rtol=1e-9, atol=1e-12)
    assert any("actions" in r for r in reference)  # the controller did act
    # two-batch noise scale at step 0: per-rank against global gradients (McCandlish et al.)
    fresh, loss_fn, _ = make_problem(problem)
    x, y = global_batches(problem)[0]
    params = ref.flat_params(fresh)
    _, grads = ref.individual(fresh, loss_fn, params, x, y)
    small = torch.stack([chunk.mean(0).square().sum() for chunk in grads.chunk(world)]).mean()
    big, b, B = float(grads.mean(0).square().sum()), x.shape[0] // world, x.shape[0]
    signal = (B * big - b * float(small)) / (B - b)
    trace = (float(small) - big) / (1 / b - 1 / B)
    first = results[0]["history"][0]
    assert math.isclose(first["GradientNoiseScale_two_batch_signal"], signal, rel_tol=1e-6)
    assert math.isclose(first["GradientNoiseScale_two_batch_trace"], trace, rel_tol=1e-6)
    logged = load_log(tmp_path / "log")
    assert [r["step"] for r in logged] == [r["step"] for r in reference]  # rank 0 only, once


@pytest.mark.slow
def test_train_entry_point_under_two_processes_matches_one(tmp_path):
    """What ``torchrun --nproc_per_node=2 experiments/train.py`` runs: the same final model as
    one process on the same global batches; only rank 0 writes."""
    from ddp_worker import train_worker
    from hydra import compose, initialize_config_dir

    from cockpit_optim.experiment import register_configs, train

    overrides = [
        "trainer.progress=false",
        "trainer.threads=1",
        "trainer.steps=12",
        "trainer.eval_every=6",
        "cockpit=economy",
        "cockpit.track.schedule=interval",
        "cockpit.track.interval=3",
        "model=mlp",
    ]
    parallel = tmp_path / "parallel"
    mp.spawn(train_worker, args=(2, _free_port(), str(parallel), overrides), nprocs=2, join=True)
    register_configs()
    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    torch.set_default_dtype(torch.float32)  # as in the spawned processes
    single = train(cfg, tmp_path / "single")["final"]
    for rank in range(2):
        final = torch.load(parallel / f"final_rank{rank}.pt")
        for key, value in single.items():
            assert math.isclose(final[key], value, rel_tol=1e-5, abs_tol=1e-6), key
    ours, theirs = load_log(parallel), load_log(tmp_path / "single")
    assert [r["step"] for r in ours] == [r["step"] for r in theirs]
    for a, b in zip(ours, theirs):
        assert math.isclose(a["NormTest"], b["NormTest"], rel_tol=1e-3), a["step"]
    assert (parallel / "summary.json").exists() and (parallel / "cockpit.png").exists()


@pytest.mark.slow
def test_a_reading_failing_on_one_rank_fails_on_all_without_a_collective_mismatch(tmp_path):
    from ddp_worker import failing_rank_worker

    mp.spawn(failing_rank_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for result in ranks:
        assert result["nan"] == [False, True, False]
        assert all(math.isfinite(v) for v in result["grad_norm"])
    assert ranks[0]["warned"] and ranks[0]["grad_norm"] == ranks[1]["grad_norm"]
