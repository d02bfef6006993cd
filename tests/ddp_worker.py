"""Worker processes for the distributed tests (importable by spawned interpreters)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from models import make_problem
from torch.nn.parallel import DistributedDataParallel

from cockpit_optim import MonitoredOptimizer
from cockpit_optim.instruments import FULL

STEPS = 4
GLOBAL_BATCH = 12


class HalveOnNoise:
    """A deterministic test controller: halves the lr when NormTest exceeds a threshold."""

    instruments = ("NormTest",)

    def observe(self, record, optimizer):
        if record["NormTest"] > 0.5:
            old = optimizer.param_groups[0]["lr"]
            optimizer.param_groups[0]["lr"] = old / 2
            return [
                {
                    "controller": "HalveOnNoise",
                    "what": "lr",
                    "from": old,
                    "to": old / 2,
                    "why": f"NormTest={record['NormTest']:.6f} > 0.5",
                }
            ]
        return []


def global_batches(problem: str):
    _, _, batch = make_problem(problem)
    gen = torch.Generator().manual_seed(11)
    return [batch(gen, GLOBAL_BATCH) for _ in range(STEPS)]


def train(model, problem, batches, log_dir=None, shard=None, state=None, steps=None):
    _, loss_fn, _ = make_problem(problem)
    opt = MonitoredOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1),
        model,
        loss_fn,
        instruments=[*FULL, "GradientNoiseScale"],
        log_dir=log_dir,
        controllers=[HalveOnNoise()],
    )
    if state is not None:
        opt.load_state_dict(state)
    start = opt.step_count
    for x, y in batches[start : steps if steps is not None else len(batches)]:
        if shard is not None:
            x, y = x.chunk(shard[1])[shard[0]], y.chunk(shard[1])[shard[0]]
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    return opt


def worker(rank: int, world: int, port: int, problem: str, out: str, log_dir: str) -> None:
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        batches = global_batches(problem)
        model, _, _ = make_problem(problem)
        ddp = DistributedDataParallel(model)
        opt = train(ddp, problem, batches, log_dir=log_dir, shard=(rank, world))
        # resume: two steps, save, continue in fresh objects
        model2, _, _ = make_problem(problem)
        ddp2 = DistributedDataParallel(model2)
        first = train(ddp2, problem, batches, shard=(rank, world), steps=2)
        state = {"model": ddp2.state_dict(), "opt": first.state_dict()}
        model3, _, _ = make_problem(problem, seed=5)
        ddp3 = DistributedDataParallel(model3)
        ddp3.load_state_dict(state["model"])
        resumed = train(ddp3, problem, batches, shard=(rank, world), state=state["opt"])
        torch.save(
            {
                "history": opt.history,
                "resumed": resumed.history,
                "params": [p.detach() for p in model.parameters()],
            },
            f"{out}/rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def train_worker(rank: int, world: int, port: int, run_dir: str, overrides: list[str]) -> None:
    """One ``torchrun``-like process of ``experiments/train.py``'s trainer."""
    import os
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    from cockpit_optim.experiment import register_configs, train

    os.environ.update(
        {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world),
        }
    )
    register_configs()
    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    summary = train(cfg, run_dir)
    torch.save(summary["final"], f"{run_dir}/final_rank{rank}.pt")


def failing_rank_worker(rank: int, world: int, port: int, out: str) -> None:
    """Rank 1 computes its loss without the monitored loss object: its readings fail."""
    import math
    import warnings

    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        batches = global_batches("mlp")
        model, loss_fn, _ = make_problem("mlp")
        ddp = DistributedDataParallel(model)
        opt = MonitoredOptimizer(
            torch.optim.SGD(ddp.parameters(), lr=0.1), ddp, loss_fn, instruments="business"
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for step, (x, y) in enumerate(batches[:3]):
                x, y = x.chunk(world)[rank], y.chunk(world)[rank]
                opt.zero_grad()
                if rank == 1 and step == 1:
                    torch.nn.functional.cross_entropy(ddp(x), y).backward()
                else:
                    loss_fn(ddp(x), y).backward()
                opt.step()
            opt.close()
        torch.save(
            {
                "nan": [math.isnan(r["NormTest"]) for r in opt.history],
                "grad_norm": [r["GradNorm"] for r in opt.history],
                "warned": any("another rank" in str(w.message) for w in caught),
            },
            f"{out}/rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()
