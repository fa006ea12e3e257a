"""Where a run is, and how it goes on: the position stored in the `last` checkpoint and the
checks and restore behind `--resume`.

The trainer writes a Position with every `last` checkpoint; `resume_point` reads it back
(or, without a `last` checkpoint, starts after the best epoch) once `check_same_run` has
made sure the text and the settings are the ones the checkpoint was trained with.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

from charlm import checkpoint
from charlm.config import RunConfig
from charlm.data import Vocab
from charlm.errors import CharlmError, StopRequests  # noqa: F401 (StopRequests: where the resume tests look)
from charlm.model import zero_carry


@dataclass
class Position:
    """Where a run is, to the batch: stored in the `last` checkpoint so --resume goes on exactly there.

    The loss sums are the running float32 sums of the epoch in progress, so its reported loss
    is the same whether or not the run was interrupted."""

    epoch: int                   # the epoch in progress, 1-based
    batch: int = 0               # batches of it already done
    loss_sum: float = 0.0        # sum of loss * count over those batches
    count: float = 0.0           # scored chars in them
    chars: int = 0               # input chars in them
    best_loss: float = math.inf  # the best monitored loss so far
    elapsed: float = 0.0         # training seconds used so far (the --max-time budget)
    fitted_steps: int | None = None  # the lr schedule's horizon once fitted to --max-time ...
    fitted_for: list | None = None   # ... for this [max_time, epochs]; another budget drops the fit

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["best_loss"] = None if math.isinf(self.best_loss) else self.best_loss  # JSON has no inf
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Position:
        try:
            pos = cls(**{**d, "best_loss": math.inf if d.get("best_loss") is None else d["best_loss"]})
        except TypeError as e:
            raise CharlmError(f"the last checkpoint's position is malformed: {e}") from None
        ints = all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (pos.epoch, pos.batch, pos.chars))
        floats = all(isinstance(v, (int, float)) and not isinstance(v, bool)
                     for v in (pos.loss_sum, pos.count, pos.best_loss, pos.elapsed))
        if not (ints and floats and pos.epoch >= 1 and (pos.fitted_steps is None or isinstance(pos.fitted_steps, int))):
            raise CharlmError(f"the last checkpoint's position is malformed: {d}")
        return pos


def check_same_run(meta: dict, cfg: RunConfig, vocab: Vocab, text_fingerprint: str, where: Path) -> None:
    """Refuses a --resume whose text, vocabulary, model or data settings differ from the checkpoint's."""
    saved_cfg, saved_vocab = checkpoint.config_from_meta(meta)
    if saved_vocab != vocab:
        added, dropped = vocab.unknown_chars(saved_vocab.chars), saved_vocab.unknown_chars(vocab.chars)
        raise CharlmError(f"cannot resume: the text's vocabulary differs from the checkpoint's "
                          f"(only in checkpoint: {''.join(added)!r}; only in text: {''.join(dropped)!r})")
    saved_print = (meta.get("corpus") or {}).get("fingerprint")
    if saved_print is not None and saved_print != text_fingerprint:
        raise CharlmError(f"cannot resume: the text differs from the one the checkpoint in {where} was trained on "
                          f"(fingerprint "
                          f"{saved_print[:12]} vs {text_fingerprint[:12]}; it came from "
                          f"{(meta.get('corpus') or {}).get('source') or 'an unrecorded source'})")
    # The model, the data and its split, and the optimizer's structure must match; the epoch
    # count, lr, schedule and time budget may change.
    diff = [f"{f.name} {getattr(old, f.name)!r} -> {getattr(new, f.name)!r}"
            for old, new in ((saved_cfg.model, cfg.model), (saved_cfg.data, cfg.data))
            for f in dataclasses.fields(new) if getattr(old, f.name) != getattr(new, f.name)]
    for name in ("clip_norm", "seed", "batch_size"):
        old, new = getattr(saved_cfg.train, name), getattr(cfg.train, name)
        if (old is None) != (new is None) if name == "clip_norm" else old != new:
            diff.append(f"{name} {old!r} -> {new!r}")
    if diff:
        raise CharlmError(f"cannot resume: the config differs from the checkpoint's ({'; '.join(diff)})")


def resume_point(run_dir: Path, cfg: RunConfig, vocab: Vocab, text_fingerprint: str):
    """Checks a --resume against the checkpoints in run_dir.

    Returns (state, position, stateful carry or None, lr horizon or None) from the `last` checkpoint
    when there is one (exactly where the run stopped), else from the best one (the epoch after it).
    """
    last = checkpoint.find_last(run_dir)
    slot = run_dir / checkpoint.LAST
    if last is None and slot.is_dir() and checkpoint.latest_step(slot):  # damaged: say how, never fall back silently
        checkpoint.read_meta(slot)  # raises, naming what is missing
        raise CharlmError(f"the last checkpoint in {slot} is incomplete; delete {slot} to resume from the best one")
    if last is not None:
        meta = checkpoint.read_meta(last)
        check_same_run(meta, cfg, vocab, text_fingerprint, run_dir)
        position = Position.from_dict(meta.get("position") or {})
        template = zero_carry(cfg.model, cfg.train.batch_size) if cfg.data.stateful else None
        state, _, _, restored = checkpoint.restore(last, template)
        best = checkpoint.latest_step(run_dir)
        if best is not None:  # a death between the best save and the last save leaves last's value stale
            position = dataclasses.replace(position, best_loss=min(position.best_loss,
                                                                   float(checkpoint.read_meta(run_dir)["loss"])))
        fitted = position.fitted_steps
        if fitted is not None and position.fitted_for != [cfg.train.max_time, cfg.train.epochs]:
            fitted = None  # fitted to another budget: this run's own horizon (refitted at epoch 2 if still ahead)
        return state, position, restored["carry"], fitted
    meta = checkpoint.read_meta(run_dir)
    check_same_run(meta, cfg, vocab, text_fingerprint, run_dir)
    state, _, _, _ = checkpoint.restore(run_dir)
    return state, Position(epoch=meta["epoch"] + 1, best_loss=float(meta["loss"])), None, None
