"""The training loop of ``experiments/train.py``: data, model, monitored optimizer, evaluation,
checkpoints, resume, pictures and ``summary.json`` in one run folder.

Evaluation metrics live in the records.  :class:`Evaluator` is passed to the optimizer as the first
controller: its ``track`` schedule makes every ``eval_every``-th step a tracked step (in addition to
the cockpit's schedule), and it sees each record as it completes, before the record is appended to
``opt.history`` and written to ``cockpit.jsonl``.  It adds ``train_loss``, ``test_loss`` (and
``train_accuracy``, ``test_accuracy`` for classification), measured on the parameters after that
step's update.  History, log and plot thus hold one record stream, and a resumed run (whose
optimizer drops incomplete records from the log) neither loses nor duplicates metrics.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from tqdm import tqdm

from .. import MonitoredOptimizer, plot, plot_layerwise, schedules
from ..cli import summary as readings_table
from ..controllers import DEFAULT_NU, AdaptiveBatchSampler
from .config import ConfigError, builder
from .data import Data, load_data
from .distributed import join, leave, wrap
from .models import build_model, num_parameters
from .runs import load_checkpoint, save_atomically
from .validation import instrument_names, typed, validate

__all__ = [
    "CHECKPOINT",
    "SUMMARY",
    "Evaluator",
    "Trainer",
    "build_controllers",
    "build_optimizer",
    "evaluate",
    "train",
]

CHECKPOINT = "checkpoint.pt"
LOG_NAME = "cockpit.jsonl"  # where MonitoredOptimizer(log_dir=run_dir) writes
SUMMARY = "summary.json"


def build_optimizer(cfg: Any, params) -> torch.optim.Optimizer:
    """The ``torch.optim`` optimizer of an ``optimizer`` config (its ``_target_``, its other fields
    the keywords)."""
    build = builder("optimizer", cfg)
    if not (isinstance(build.func, type) and issubclass(build.func, torch.optim.Optimizer)):
        raise ConfigError(f"optimizer._target_ must name a torch.optim.Optimizer, got {build.func}")
    return build(params)


def build_controllers(cfg: Any, sampler: AdaptiveBatchSampler) -> list:
    """The controllers of a ``controller`` config (its ``_target_``, its other fields the
    keywords); batch-size controllers (those with a ``max_batch_size``) drive ``sampler``, their
    batch sizes capped at the training set size."""
    build = builder("controller", cfg)
    if build is None:
        return []
    if not callable(getattr(build.func, "observe", None)):
        raise ConfigError(f"controller._target_ must name a controller class, got {build.func}")
    options = build.keywords
    if "max_batch_size" not in options:
        return [build()]
    size = sampler.num_samples
    capped = {"max_batch_size": min(options["max_batch_size"] or size, size)}
    if "min_batch_size" in options:
        capped["min_batch_size"] = min(options["min_batch_size"], size)
    if options.get("nu", DEFAULT_NU) is None:
        capped["nu"] = DEFAULT_NU
    return [build(sampler, **capped)]


@torch.no_grad()
def evaluate(
    model: nn.Module, data: Data, device: torch.device, samples: int | None, batch_size: int
) -> dict[str, float]:
    """Mean loss (and accuracy for classification) on the first ``samples`` examples of each split,
    in eval mode; the model's mode is restored and no RNG is consumed."""
    was_training = model.training
    model.eval()
    loss_fn = type(data.loss_fn())(reduction="sum")
    dtype = next(model.parameters()).dtype
    metrics: dict[str, float] = {}
    for prefix, split in (("train", data.train), ("test", data.test)):
        split = split.head(samples)
        total, correct = 0.0, 0
        for start in range(0, len(split), batch_size):
            inputs, targets = _to(
                data.batch(split, slice(start, start + batch_size)), device, dtype
            )
            outputs = model(inputs)
            total += float(loss_fn(outputs, targets))
            if data.info.task == "classification":
                correct += int((outputs.argmax(1) == targets).sum())
        count = len(split) * (1 if data.info.task == "classification" else data.info.num_outputs)
        metrics[f"{prefix}_loss"] = total / count
        if data.info.task == "classification":
            metrics[f"{prefix}_accuracy"] = correct / len(split)
    model.train(was_training)
    return metrics


def _to(batch: tuple, device: torch.device, dtype: torch.dtype) -> tuple:
    """Move a batch; float tensors take the model's dtype, integer labels and tokens stay."""
    return tuple(t.to(device, dtype) if t.is_floating_point() else t.to(device) for t in batch)


class Evaluator:
    """Adds evaluation metrics to the first record at or after every ``every`` steps; ``track``
    (the steps it asks the optimizer to record) selects those steps.  An observer in the
    controller protocol: it reads records and takes no action."""

    def __init__(
        self, measure: Callable[[], dict[str, float]], every: int, track: schedules.Schedule
    ) -> None:
        self.measure, self.every, self.track = measure, int(every), track
        self.next_step = 0

    def observe(self, record: dict, optimizer: Any) -> list:
        step = int(record["step"])
        if step >= self.next_step:
            record.update(self.measure())
            self.next_step = (step // self.every + 1) * self.every
        return []

    def state_dict(self) -> dict[str, int]:
        return {"next_step": self.next_step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.next_step = int(state["next_step"])


class _Before:
    """``schedule`` restricted to steps before ``end``: the record of the last step would stay
    incomplete (Alpha is completed during the next step)."""

    def __init__(self, schedule: schedules.Schedule, end: int) -> None:
        self.schedule, self.end = schedule, end

    def __call__(self, step: int) -> bool:
        return step < self.end and bool(self.schedule(step))

    def __repr__(self) -> str:
        return f"{self.schedule!r} before step {self.end}"


class Trainer:
    """One training run in ``run_dir`` (``cockpit.jsonl``, ``checkpoint.pt``, PNGs, ``summary.json``).

    With ``trainer.resume`` and a checkpoint in ``run_dir`` it continues that run (only trainer
    settings may differ from the checkpoint's config); otherwise the run starts over and replaces
    the folder's log and checkpoint (saying so when there were any).
    """

    def __init__(self, cfg: DictConfig, run_dir: str | Path) -> None:
        validate(cfg)
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        trainer = cfg.trainer
        if trainer.threads is not None:
            torch.set_num_threads(trainer.threads)
        self.launch, self.device = join(trainer.device)
        torch.manual_seed(trainer.seed)
        self.data = load_data(cfg.data)
        self.net = build_model(cfg.model, self.data.info).to(self.device)
        self.model = wrap(self.net, self.launch, self.device)  # DDP under torchrun
        self.dtype = next(self.model.parameters()).dtype
        self.loss_fn = self.data.loss_fn()
        self.sampler = AdaptiveBatchSampler(
            len(self.data.train), cfg.data.batch_size, drop_last=True, seed=trainer.seed
        )
        if cfg.data.batch_size > len(self.data.train):
            raise ConfigError(
                f"data.batch_size={cfg.data.batch_size} exceeds the {len(self.data.train)} "
                "training examples"
            )
        self.total_steps = trainer.steps or trainer.epochs * len(self.sampler)
        controllers = build_controllers(cfg.controller, self.sampler)
        names = instrument_names(list(cfg.cockpit.instruments))
        read = {*names, *(n for c in controllers for n in c.instruments)}
        self.log_steps = bool(read) and cfg.cockpit.track.schedule == "logarithmic"
        self.reads_alpha = "Alpha" in read
        every = trainer.eval_every
        self.evaluator = Evaluator(self._measure, every, self._open_ended(schedules.linear(every)))
        self.optimizer = MonitoredOptimizer(
            build_optimizer(cfg.optimizer, self.model.parameters()),
            self.model,
            self.loss_fn,
            instruments=names,
            track=self._schedule(bool(read)),
            log_dir=self.run_dir,
            controllers=[self.evaluator, *controllers],
            seed=trainer.seed,
            plot_every=cfg.cockpit.plot_every,
        )
        self.step, self.elapsed = 0, 0.0
        if trainer.resume and (self.run_dir / CHECKPOINT).exists():
            self._restore()
        else:
            if trainer.resume:
                print(f"no {CHECKPOINT} in {self.run_dir}: starting a fresh run")
            stale = [self.run_dir / name for name in (LOG_NAME, CHECKPOINT)]
            if any(path.exists() for path in stale):  # the folder is this run's: start over
                print(f"a fresh run in {self.run_dir} replaces its {LOG_NAME} and {CHECKPOINT}")
            for path in stale:
                path.unlink(missing_ok=True)

    # ----------------------------------------------------------------------------- set-up
    def _open_ended(self, schedule: schedules.Schedule) -> schedules.Schedule:
        """``schedule`` without the last step when Alpha is read (its record could not complete)."""
        return _Before(schedule, self.total_steps - 1) if self.reads_alpha else schedule

    def _schedule(self, readings: bool) -> schedules.Schedule:
        track = self.cfg.cockpit.track
        if not readings:  # cockpit off, no controller: only the evaluator's steps
            return self.evaluator.track
        if track.schedule == "logarithmic":
            end = max(self.total_steps - 2, 0)
            return schedules.logarithmic(end=end, points=track.points)
        return self._open_ended(schedules.linear(track.interval))

    def _measure(self) -> dict[str, float]:
        return evaluate(
            self.net,
            self.data,
            self.device,
            self.cfg.trainer.eval_samples,
            self.cfg.data.eval_batch_size,
        )

    def _config(self) -> dict:
        return OmegaConf.to_container(self.cfg, resolve=True, enum_to_str=True)

    # ------------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> None:
        """Model, optimizer (with the monitor's and controllers' state), sampler, RNG and step,
        written atomically to ``run_dir/checkpoint.pt``."""
        optimizer = self.optimizer.state_dict()  # every rank: it reads pending values first
        if not self.launch.main:
            return
        state = {
            "step": self.step,
            "elapsed": self.elapsed,
            "config": self._config(),
            "model": self.net.state_dict(),
            "optimizer": optimizer,
            "sampler": self.sampler.state_dict(),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        }
        try:
            save_atomically(state, self.run_dir / CHECKPOINT)
        except OSError as error:  # e.g. a full disk: the previous checkpoint stays valid
            warnings.warn(
                f"cannot write {CHECKPOINT} in {self.run_dir} ({error}); training continues and "
                "the previous checkpoint stays",
                stacklevel=2,
            )

    def _restore(self) -> None:
        state = load_checkpoint(self.run_dir / CHECKPOINT)
        # the checkpoint's config on the schemas: fields added since it was written take defaults
        saved = OmegaConf.to_container(typed(state["config"]), resolve=True, enum_to_str=True)
        current = self._config()
        changed = [g for g in current if g != "trainer" and saved.get(g) != current[g]]
        if changed:
            raise ConfigError(
                f"cannot resume {self.run_dir}: the config of {', '.join(changed)} differs from "
                "the checkpoint's; only trainer settings may change on resume"
            )
        self.net.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.sampler.load_state_dict(state["sampler"])
        torch.set_rng_state(state["rng"])
        if state["cuda_rng"]:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.step, self.elapsed = int(state["step"]), float(state["elapsed"])
        print(f"resumed {self.run_dir} at step {self.step}")

    # ------------------------------------------------------------------------------ loop
    def _finished(self) -> bool:
        if self.optimizer.should_stop:
            return True
        if self.cfg.trainer.steps is not None:
            return self.step >= self.cfg.trainer.steps
        return self.sampler.epoch >= self.cfg.trainer.epochs

    def train_step(self, indices: list[int]) -> torch.Tensor:
        """One optimizer step on the training examples ``indices``; returns the (detached)
        mini-batch loss without a host sync."""
        inputs, targets = _to(
            self.data.batch(self.data.train, torch.tensor(indices)), self.device, self.dtype
        )
        self.optimizer.zero_grad()
        loss = self.loss_fn(self.model(inputs), targets)
        loss.backward()
        self.optimizer.step()
        self.step += 1
        return loss.detach()

    def run(self) -> dict:
        """Train to the end (or until a controller stops the run); returns the summary."""
        trainer = self.cfg.trainer
        start = time.perf_counter() - self.elapsed
        bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            desc=f"{self.cfg.model.name} on {self.cfg.data.name}",
            unit="step",
            disable=not (trainer.progress and self.launch.main),
            dynamic_ncols=True,
        )
        while not self._finished():
            fresh_epoch = self.sampler.position == 0
            batches = 0
            for indices in self.sampler:
                batches += 1
                loss = self.train_step(indices)
                bar.update(1)
                if self.step % 10 == 0:
                    bar.set_postfix(loss=f"{float(loss):.4g}", epoch=self.sampler.epoch)
                self.elapsed = time.perf_counter() - start
                if trainer.checkpoint_every and self.step % trainer.checkpoint_every == 0:
                    self.save_checkpoint()
                if self._finished():
                    break
            if batches == 0 and fresh_epoch:
                raise ConfigError(
                    f"batch size {self.sampler.batch_size} exceeds the "
                    f"{self.sampler.num_samples} training examples: no full batch in an epoch"
                )
        bar.close()
        self.elapsed = time.perf_counter() - start
        self.save_checkpoint()
        self.optimizer.close()
        return self.finish()

    # ---------------------------------------------------------------------------- output
    def finish(self) -> dict:
        """Draw the cockpit pictures and write ``summary.json``; returns the summary."""
        history = self.optimizer.history
        files = {"log": LOG_NAME, "checkpoint": CHECKPOINT}
        if history and self.launch.main:
            plot(history, self.run_dir / "cockpit.png", log_steps=self.log_steps)
            files["cockpit"] = "cockpit.png"
            if self.cfg.cockpit.layerwise and any("GradHist1d" in r for r in history):
                plot_layerwise(history, self.run_dir / "cockpit_layerwise.png")
                files["layerwise"] = "cockpit_layerwise.png"
        alphas = [r["Alpha"] for r in history if _finite(r.get("Alpha"))]
        summary = {
            "steps": self.step,
            "epochs": self.sampler.epoch + self.sampler.position / self.sampler.num_samples,
            "wall_time_s": round(self.elapsed, 2),
            "parameters": num_parameters(self.net),
            "processes": self.launch.world_size,
            "records": len(history),
            "final": self._measure(),
            "mean_alpha": sum(alphas) / len(alphas) if alphas else None,
            "batch_size": self.sampler.batch_size,
            "lr": self.optimizer.param_groups[0]["lr"],
            "stop_reason": self.optimizer.stop_reason,
            "files": files,
            "config": self._config(),
        }
        if self.launch.main:
            (self.run_dir / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
        return summary


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def train(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Run :class:`Trainer` for ``cfg`` in ``run_dir``, print the readings, return the summary."""
    trainer = Trainer(cfg, run_dir)
    try:
        summary = trainer.run()
    finally:
        leave(trainer.launch)
    if not trainer.launch.main:
        return summary
    final = ", ".join(f"{k} {v:.4g}" for k, v in summary["final"].items())
    print(f"\n{summary['steps']} steps in {summary['wall_time_s']:.1f} s; final {final}")
    history = trainer.optimizer.history
    if history:  # the table of `cockpit-optim summary RUN`
        steps = [record["step"] for record in history]
        print(f"\n{len(history)} records, steps {min(steps)} to {max(steps)}:")
        print(readings_table(history))
    print(f"\nrun folder: {trainer.run_dir} ({', '.join(summary['files'].values())}, {SUMMARY})")
    return summary
