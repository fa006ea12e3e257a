"""The epoch loop: clean and encode the text, split off validation, step, report, keep the best.

`train(raw_text, cfg, run_dir)` is what `train.py` calls and what a notebook calls.
Metrics are pulled from the device only when shown (every few steps and at epoch end).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from charlm import checkpoint
from charlm.config import RunConfig
from charlm.corpus import clean_text, fingerprint
from charlm.data import (Vocab, batch_starts, check_long_enough, gather_batch, seed_windows, sentence_windows,
                         shuffled, split_point, stream_starts, window_starts)
from charlm.errors import CharlmError
from charlm.evaluate import tail_nll
from charlm.model import zero_carry
from charlm.training import TrainState, create_train_state, make_optimizer, stateful_train_step, train_step

NUM_SEEDS = 16          # seed windows stored in each checkpoint for sample.py
PROGRESS_EVERY = 20     # steps between progress-bar refreshes (each one syncs with the device)
def train_metric(cfg: RunConfig) -> str:
    """Names the training loss, so no printed number is ambiguous."""
    return "train loss (last-char)" if cfg.data.objective == "last" else "train loss (all-chars)"


def val_metric(cfg: RunConfig) -> str:
    """Each model is validated in the regime it was trained for: the tutorial's objective on
    the char after each window, dense objectives on the whole tail read as one stream."""
    return "val loss (last-char)" if cfg.data.objective == "last" else "val loss (stream)"


def validation_nll(state: TrainState, cfg: RunConfig, corpus: Corpus) -> np.ndarray:
    """One NLL (nats) per val char, each predicted from text that precedes it."""
    metric = "last-window" if cfg.data.objective == "last" else "stream"
    return tail_nll(state.params, cfg.model, corpus.tokens, corpus.split, cfg.data.seq_length, metric)


@dataclass(frozen=True)
class Corpus:
    """The cleaned text, its vocabulary, its ids and where validation starts."""

    text: str
    vocab: Vocab
    tokens: np.ndarray
    split: int  # tokens[:split] train, tokens[split:] validate

    @property
    def train_tokens(self) -> np.ndarray:
        return self.tokens[:self.split]

    @property
    def val_tokens(self) -> np.ndarray:
        return self.tokens[self.split:]


def prepare_corpus(raw_text: str, cfg: RunConfig, vocab: Vocab | None = None) -> Corpus:
    """Cleans the text as `cfg.data` says, encodes it (with `vocab`, if given) and splits off the val tail."""
    d = cfg.data
    text = clean_text(raw_text, lowercase=d.lowercase, strip=d.strip, strip_punctuation=d.strip_punctuation)
    if not text:
        raise CharlmError("the text is empty after cleaning (was it only a Gutenberg header?)")
    vocab = vocab or Vocab.from_text(text)
    tokens = vocab.encode(text)
    split = split_point(len(tokens), d.val_frac)
    check_long_enough(split, d.seq_length)
    if d.val_frac > 0 and len(tokens) - split < 2:
        raise CharlmError(f"--val-frac {d.val_frac} holds out {len(tokens) - split} char(s); need at least 2")
    return Corpus(text, vocab, tokens, split)


def training_windows(corpus: Corpus, cfg: RunConfig) -> tuple[np.ndarray, np.ndarray | None]:
    """(starts, lengths) of the training windows, all inside the training part of the text.

    For stateful streams, starts is [K, B] (batch k = row k); otherwise a flat array.
    """
    d, n = cfg.data, corpus.split
    if d.stateful:
        return stream_starts(n, cfg.train.batch_size, d.seq_length), None
    if d.windowing == "sentences":
        return sentence_windows(corpus.text[:n], d.seq_length)
    return window_starts(n, d.seq_length, d.window_stride), None


def summary_lines(corpus: Corpus, cfg: RunConfig) -> list[str]:
    """The tutorial's three summary lines (plus the split, when there is one)."""
    starts, _ = training_windows(corpus, cfg)
    lines = [f"Total Characters: {len(corpus.tokens)}", f"Total Vocab: {corpus.vocab.size}",
             f"Total Patterns: {starts.size}"]
    if cfg.data.val_frac > 0:
        lines.append(f"Train Characters: {corpus.split}, Val Characters: {len(corpus.tokens) - corpus.split} "
                     f"(the contiguous last {cfg.data.val_frac:.0%})")
    return lines


def epoch_batches(corpus: Corpus, cfg: RunConfig, starts: np.ndarray, lengths: np.ndarray | None,
                  epoch: int) -> Iterator[dict]:
    """The batches of one epoch: shuffled windows, or streams in order."""
    T, B = cfg.data.seq_length, cfg.train.batch_size
    if cfg.data.stateful:
        for row in starts:
            yield gather_batch(corpus.tokens, row, T)
        return
    order = shuffled(np.arange(len(starts)), cfg.train.seed, epoch)
    for idx in batch_starts(order, B):
        yield gather_batch(corpus.tokens, starts[idx], T, B, None if lengths is None else lengths[idx])


@dataclass
class TrainResult:
    state: TrainState
    best_loss: float
    history: list[dict]
    best_path: Path | None


@dataclass(frozen=True)
class EpochStats:
    loss: float      # mean train loss over the scored chars
    steps: int
    chars: int       # input chars processed
    stopped: bool    # the time budget ran out before the epoch ended


def run_epoch(state: TrainState, batches: Iterator[dict], cfg: RunConfig, dropout_rng: jax.Array, steps: int,
              desc: str, progress: bool | None, deadline: float = math.inf) -> tuple[TrainState, EpochStats]:
    """One pass over `batches`, stopping early after the step that crosses `deadline`."""
    objective = cfg.data.objective
    carry = zero_carry(cfg.model, cfg.train.batch_size) if cfg.data.stateful else None
    t0 = time.perf_counter()
    total, count, chars = jnp.zeros(()), jnp.zeros(()), 0
    bar = tqdm(total=steps, desc=desc, unit="step", file=sys.stderr, leave=False,
               disable=None if progress is None else not progress)
    stopped, i = False, -1
    for i, batch in enumerate(batches):
        if cfg.data.stateful:
            state, metrics, carry = stateful_train_step(state, batch, dropout_rng, carry, objective=objective)
        else:
            state, metrics = train_step(state, batch, dropout_rng, objective=objective)
        # Accumulate on the device; pulling a value would sync every step.
        total, count = total + metrics["loss"] * metrics["count"], count + metrics["count"]
        chars += batch["inputs"].size
        bar.update(1)
        if (i + 1) % PROGRESS_EVERY == 0 and not bar.disable:
            bar.set_postfix(loss=f"{float(total / count):.4f}", chars_s=f"{chars / (time.perf_counter() - t0):,.0f}")
        if time.monotonic() >= deadline:
            stopped = True
            break
    bar.close()
    return state, EpochStats(float(total / jnp.maximum(count, 1.0)), i + 1, chars, stopped)


def _check_writable(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise CharlmError(f"checkpoint directory {run_dir} is not writable: {e.strerror}") from None


def _resume_point(run_dir: Path, cfg: RunConfig, corpus: Corpus, total_steps: int):
    """Checks a --resume against the checkpoint in run_dir; returns (state, epoch, best loss)."""
    meta = checkpoint.read_meta(run_dir)
    saved_cfg, saved_vocab = checkpoint.config_from_meta(meta)
    if saved_vocab != corpus.vocab:
        added, dropped = corpus.vocab.unknown_chars(saved_vocab.chars), saved_vocab.unknown_chars(corpus.vocab.chars)
        raise CharlmError(f"cannot resume: the text's vocabulary differs from the checkpoint's "
                          f"(only in checkpoint: {''.join(added)!r}; only in text: {''.join(dropped)!r})")
    # The model, the data and its split, and the optimizer's structure must match; the epoch
    # count, lr, schedule and time budget may change.
    diff = [f"{f.name} {getattr(old, f.name)!r} -> {getattr(new, f.name)!r}"
            for old, new in ((saved_cfg.model, cfg.model), (saved_cfg.data, cfg.data))
            for f in dataclasses.fields(new) if getattr(old, f.name) != getattr(new, f.name)]
    if (saved_cfg.train.clip_norm is None) != (cfg.train.clip_norm is None):
        diff.append(f"clip_norm {saved_cfg.train.clip_norm!r} -> {cfg.train.clip_norm!r}")
    if diff:
        raise CharlmError(f"cannot resume: the config differs from the checkpoint's ({'; '.join(diff)})")
    if meta["epoch"] >= cfg.train.epochs:
        raise CharlmError(f"checkpoint in {run_dir} already has {meta['epoch']} epochs; "
                          f"pass --epochs greater than that to train on")
    state, _, _, _ = checkpoint.restore(run_dir)
    # The optimizer state's structure is the same; the lr schedule's horizon is this run's.
    return state.replace(tx=make_optimizer(cfg, total_steps)), meta["epoch"], float(meta["loss"])


def train(raw_text: str, cfg: RunConfig, run_dir: str | Path = "checkpoints", *, resume: bool = False,
          source: str = "", log: Callable[[str], None] = print, progress: bool | None = None) -> TrainResult:
    """Trains on `raw_text` as configured, keeping the best checkpoint in `run_dir`.

    Args:
      raw_text: the book as read from disk; cleaned here as cfg.data says.
      cfg: the run config; cfg.model.vocab_size is filled in from the text.
      run_dir: checkpoint directory. Must hold no checkpoint unless `resume`.
      resume: continue from the best checkpoint in run_dir.
      source: a description of where the text came from, stored in the checkpoint.
      log: where the per-epoch lines go.
      progress: show a tqdm bar (None: only when stderr is a terminal).
    The best checkpoint is the one with the lowest val loss when cfg.data.val_frac > 0,
    else the lowest train loss (the tutorial's monitor='loss').
    """
    corpus = prepare_corpus(raw_text, cfg)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=corpus.vocab.size))
    for line in summary_lines(corpus, cfg):
        log(line)
    starts, lengths = training_windows(corpus, cfg)
    T, B = cfg.data.seq_length, cfg.train.batch_size
    steps_per_epoch = len(starts) if cfg.data.stateful else math.ceil(len(starts) / B)
    total_steps = steps_per_epoch * cfg.train.epochs

    run_dir = Path(run_dir)
    existing = checkpoint.latest_step(run_dir) if run_dir.exists() else None
    if resume:
        if existing is None:
            raise CharlmError(f"nothing to resume: {run_dir} holds no charlm checkpoint")
        state, start_epoch, best_loss = _resume_point(run_dir, cfg, corpus, total_steps)
        log(f"Resuming from epoch {start_epoch} (loss {best_loss:.5f})")
    else:
        if existing is not None:
            raise CharlmError(f"{run_dir} already holds a checkpoint; pass --resume to continue it, "
                              f"or choose another --ckpt-dir")
        init_rng = jax.random.fold_in(jax.random.key(cfg.train.seed), 0)
        state, start_epoch, best_loss = create_train_state(cfg, init_rng, total_steps), 0, math.inf
    _check_writable(run_dir)
    dropout_rng = jax.random.fold_in(jax.random.key(cfg.train.seed), 1)

    has_val = cfg.data.val_frac > 0
    monitor = val_metric(cfg) if has_val else train_metric(cfg)
    keras_name = "val_loss" if has_val else "loss"  # as in the tutorial's ModelCheckpoint lines
    meta = {"config": cfg.to_dict(), "vocab": corpus.vocab.chars, "metric": monitor,
            "seeds": [corpus.vocab.decode(w) for w in
                      seed_windows(corpus.train_tokens, T, NUM_SEEDS, cfg.train.seed)],
            "corpus": {"source": source, "chars": len(corpus.tokens), "split": corpus.split,
                       "fingerprint": fingerprint(corpus.text)},
            "total_steps": total_steps}  # the lr schedule's horizon, so a restored optimizer has it too
    log(f"Training {cfg.model.layers}x{cfg.model.hidden} {cfg.model.input_encoding} {cfg.model.cell.upper()} on "
        f"{jax.devices()[0].platform.upper()}: {steps_per_epoch} steps/epoch of {B} "
        f"{'streams' if cfg.data.stateful else 'windows'} x {T} chars, objective {cfg.data.objective}")

    history: list[dict] = []
    best_path = None
    started = time.monotonic()
    deadline = started + 60 * cfg.train.max_time if cfg.train.max_time else math.inf
    with checkpoint.BestCheckpoint(run_dir) as best:
        for epoch in range(start_epoch + 1, cfg.train.epochs + 1):
            epoch_started = time.monotonic()
            state, stats = run_epoch(
                state, epoch_batches(corpus, cfg, starts, lengths, epoch), cfg, dropout_rng, steps_per_epoch,
                f"Epoch {epoch}/{cfg.train.epochs}", progress, deadline)
            seconds = time.monotonic() - epoch_started
            loss = stats.loss
            record = {"epoch": epoch, "step": int(state.step), "train_loss": loss, "seconds": seconds,
                      "elapsed": time.monotonic() - started, "chars_per_s": stats.chars / seconds}
            line = (f"Epoch {epoch}/{cfg.train.epochs} - {seconds:.0f}s - {1000 * seconds / max(stats.steps, 1):.0f}ms/step"
                    f" - {record['chars_per_s']:,.0f} chars/s - {train_metric(cfg)}: {loss:.4f}")
            if has_val:
                record["val_loss"] = float(np.mean(validation_nll(state, cfg, corpus)))
                record["val_bits_per_char"] = record["val_loss"] / math.log(2)
                line += f" - {monitor}: {record['val_loss']:.4f} ({record['val_bits_per_char']:.3f} bits/char)"
            history.append(record)
            log(line)
            monitored = record["val_loss"] if has_val else loss
            if not math.isfinite(monitored):
                raise CharlmError(f"training diverged at epoch {epoch} ({monitor} {monitored}); the best checkpoint "
                                  f"is kept; try a lower --lr or --clip-norm")
            if monitored < best_loss:
                best_path = best.save(epoch, state, meta, monitored)
                log(f"Epoch {epoch:05d}: {keras_name} improved from {best_loss:.5f} to {monitored:.5f}, "
                    f"saving model to {best_path}")
                best_loss = monitored
            else:
                log(f"Epoch {epoch:05d}: {keras_name} did not improve from {best_loss:.5f}")
            with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            if epoch == start_epoch + 2 and deadline < math.inf and cfg.train.lr_schedule != "constant":
                # Fit the decay to the budget: as many steps as the remaining time allows at the
                # pace of this (compiled, warm) epoch, so the schedule ends when the time does.
                pace = (time.monotonic() - epoch_started) / max(stats.steps, 1)
                fits = int(state.step) + int((deadline - time.monotonic()) / pace)
                if fits < total_steps:
                    state = state.replace(tx=make_optimizer(cfg, fits))
                    meta["total_steps"] = fits
                    log(f"Fitted the {cfg.train.lr_schedule} lr schedule to the time budget: {fits} steps "
                        f"instead of {total_steps}")
            if stats.stopped:
                log(f"Time budget of {cfg.train.max_time:g} min reached during epoch {epoch} "
                    f"(after {int(state.step)} steps); stopping.")
                break
    return TrainResult(state, best_loss, history, best_path)
