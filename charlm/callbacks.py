"""What the epoch loop does at an epoch's end, one small class per concern (in the spirit of the
tutorial's Keras `ModelCheckpoint` callback):

  KeepBest       the best checkpoint: save when the monitored loss improved, say so Keras-style
  EarlyStopping  end the run after `patience` epochs without a better monitored loss
  TimeBudget     the --max-time deadline, and the lr schedule refitted to it after epoch 2
  LastCheckpoint the `last` checkpoint that --resume goes on from exactly

Each holds the state its concern needs across epochs, so `trainer.train` reads as one loop.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp

from charlm import checkpoint, distributed
from charlm.config import RunConfig
from charlm.errors import CharlmError
from charlm.model import zero_carry
from charlm.resume import Position
from charlm.training import TrainState, make_optimizer


class Diverged(CharlmError):
    pass


def check_finite(state: TrainState) -> None:
    """The last update can make the params NaN while the loss that produced it was finite."""
    if not all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(state.params)):
        raise Diverged(f"step {int(state.step)} (the parameters became NaN or inf)")


class KeepBest(checkpoint.BestCheckpoint):
    """Like Keras' ModelCheckpoint(save_best_only=True): saves the epoch when `monitored` improved."""

    def __init__(self, run_dir: Path, monitor: str, keras_name: str, best_loss: float, log: Callable[[str], None]):
        super().__init__(run_dir)
        self.monitor, self.keras_name, self.best_loss, self.log = monitor, keras_name, best_loss, log
        found = checkpoint.latest_step(run_dir)
        self.best_epoch = found[1] if found else 0
        self.best_path: Path | None = None

    def on_epoch_end(self, epoch: int, state: TrainState, meta: dict, monitored: float) -> None:
        if not math.isfinite(monitored):
            raise Diverged(f"{self.monitor} {monitored}")
        if monitored < self.best_loss:
            check_finite(state)
            self.best_path = self.save(epoch, state, meta, monitored)
            self.log(f"Epoch {epoch:05d}: {self.keras_name} improved from {self.best_loss:.5f} to {monitored:.5f}, "
                     f"saving model to {self.best_path}")
            self.best_loss, self.best_epoch = monitored, epoch
        else:
            self.log(f"Epoch {epoch:05d}: {self.keras_name} did not improve from {self.best_loss:.5f}")


@dataclasses.dataclass
class EarlyStopping:
    """Stops after `patience` epochs without a new best. Counted from the best checkpoint's epoch,
    so a resumed run stops where the uninterrupted one would."""

    patience: int | None

    def should_stop(self, epoch: int, best: KeepBest) -> bool:
        return self.patience is not None and epoch - best.best_epoch >= self.patience


class TimeBudget:
    """The --max-time deadline (counting the minutes a resumed run already used) and the decaying
    lr schedule refitted after epoch 2 so that it ends when the budget does."""

    def __init__(self, cfg: RunConfig, elapsed: float, total_steps: int, fitted: int | None):
        self.cfg, self.total_steps, self.fitted = cfg, total_steps, fitted
        self.started = time.monotonic() - elapsed
        self.deadline = self.started + 60 * cfg.train.max_time if cfg.train.max_time else math.inf

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def horizon(self) -> int:
        """The lr schedule's horizon in steps (stored in checkpoints so a restored optimizer has it)."""
        return self.fitted or self.total_steps

    def refit(self, epoch: int, state: TrainState, steps_run: int, epoch_started: float,
              log: Callable[[str], None]) -> TrainState:
        """After epoch 2 (compiled and warm), the step the budget ends at, at that epoch's pace."""
        if epoch != 2 or self.fitted is not None or self.deadline == math.inf or self.cfg.train.lr_schedule == "constant":
            return state
        pace = (time.monotonic() - epoch_started) / max(steps_run, 1)
        fits = distributed.from_primary(int(state.step) + int((self.deadline - time.monotonic()) / pace))
        if fits >= self.total_steps:
            return state
        self.fitted = fits
        log(f"Fitted the {self.cfg.train.lr_schedule} lr schedule to the time budget: {fits} steps "
            f"instead of {self.total_steps}")
        return state.replace(tx=make_optimizer(self.cfg, fits))


class LastCheckpoint:
    """Writes the `last` checkpoint: the state, the stateful carry and the exact Position."""

    def __init__(self, run_dir: Path, cfg: RunConfig, meta: dict, best: KeepBest, budget: TimeBudget):
        self.run_dir, self.cfg, self.meta, self.best, self.budget = run_dir, cfg, meta, best, budget

    def save(self, state: TrainState, pos: Position, carry) -> Path:
        check_finite(state)
        cfg = self.cfg
        if cfg.data.stateful and carry is None:  # an epoch's streams start from zeros; keep the tree's shape
            carry = zero_carry(cfg.model, cfg.train.batch_size)
        fitted = self.budget.fitted
        best_loss = self.best.best_loss
        pos = dataclasses.replace(pos, best_loss=best_loss, elapsed=self.budget.elapsed, fitted_steps=fitted,
                                  fitted_for=None if fitted is None else [cfg.train.max_time, cfg.train.epochs])
        meta = {**self.meta, "total_steps": self.budget.horizon(), "epoch": pos.epoch - (pos.batch == 0),
                "loss": best_loss if math.isfinite(best_loss) else 0.0, "position": pos.to_dict()}
        return checkpoint.save_last(self.run_dir, state, meta, carry)
