"""The epoch loop: clean and encode the text, shuffle windows, step, report, keep the best.

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
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from charlm import checkpoint
from charlm.config import RunConfig
from charlm.corpus import clean_text, fingerprint
from charlm.data import (Vocab, batch_starts, check_long_enough, gather_batch, num_windows, seed_windows,
                         shuffled, window_starts)
from charlm.errors import CharlmError
from charlm.training import TrainState, create_train_state, train_step

NUM_SEEDS = 16          # seed windows stored in each checkpoint for sample.py
PROGRESS_EVERY = 20     # steps between progress-bar refreshes (each one syncs with the device)
METRIC = "train loss (last-char)"  # what the tutorial's ModelCheckpoint(monitor='loss') watches


@dataclass(frozen=True)
class Corpus:
    """The cleaned text, its vocabulary and its ids."""

    text: str
    vocab: Vocab
    tokens: np.ndarray


def prepare_corpus(raw_text: str, cfg: RunConfig, vocab: Vocab | None = None) -> Corpus:
    """Cleans the text as `cfg.data` says and encodes it (with `vocab`, if given, else its own)."""
    text = clean_text(raw_text, lowercase=cfg.data.lowercase, strip=cfg.data.strip)
    if not text:
        raise CharlmError("the text is empty after cleaning (was it only a Gutenberg header?)")
    vocab = vocab or Vocab.from_text(text)
    tokens = vocab.encode(text)
    check_long_enough(len(tokens), cfg.data.seq_length)
    return Corpus(text, vocab, tokens)


def summary_lines(corpus: Corpus, cfg: RunConfig) -> list[str]:
    """The tutorial's three summary lines."""
    return [f"Total Characters: {len(corpus.tokens)}", f"Total Vocab: {corpus.vocab.size}",
            f"Total Patterns: {num_windows(len(corpus.tokens), cfg.data.seq_length, cfg.data.stride)}"]


@dataclass
class TrainResult:
    state: TrainState
    best_loss: float
    history: list[dict]
    best_path: Path | None


def _check_writable(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise CharlmError(f"checkpoint directory {run_dir} is not writable: {e.strerror}") from None


def _resume_point(run_dir: Path, cfg: RunConfig, corpus: Corpus):
    """Checks a --resume against the checkpoint in run_dir; returns (state, epoch, best loss)."""
    meta = checkpoint.read_meta(run_dir)
    saved_cfg, saved_vocab = checkpoint.config_from_meta(meta)
    if saved_vocab != corpus.vocab:
        added, dropped = corpus.vocab.unknown_chars(saved_vocab.chars), saved_vocab.unknown_chars(corpus.vocab.chars)
        raise CharlmError(f"cannot resume: the text's vocabulary differs from the checkpoint's "
                          f"(only in checkpoint: {''.join(added)!r}; only in text: {''.join(dropped)!r})")
    if saved_cfg.model != cfg.model:
        diff = [f"{f.name} {getattr(saved_cfg.model, f.name)!r} -> {getattr(cfg.model, f.name)!r}"
                for f in dataclasses.fields(cfg.model)
                if getattr(saved_cfg.model, f.name) != getattr(cfg.model, f.name)]
        raise CharlmError(f"cannot resume: model config differs from the checkpoint's ({'; '.join(diff)})")
    if meta["epoch"] >= cfg.train.epochs:
        raise CharlmError(f"checkpoint in {run_dir} already has {meta['epoch']} epochs; "
                          f"pass --epochs greater than that to train on")
    state, _, _, _ = checkpoint.restore(run_dir)
    return state, meta["epoch"], float(meta["loss"])


def run_epoch(state: TrainState, tokens: np.ndarray, starts: np.ndarray, cfg: RunConfig, dropout_rng: jax.Array,
              desc: str, progress: bool | None) -> tuple[TrainState, float]:
    """One pass over `starts` (already shuffled). Returns the new state and the mean train loss."""
    T, B = cfg.data.seq_length, cfg.train.batch_size
    t0 = time.perf_counter()
    total, count = jnp.zeros(()), jnp.zeros(())
    bar = tqdm(total=math.ceil(len(starts) / B), desc=desc, unit="step", file=sys.stderr, leave=False,
               disable=None if progress is None else not progress)
    for i, batch_idx in enumerate(batch_starts(starts, B)):
        state, metrics = train_step(state, gather_batch(tokens, batch_idx, T, B), dropout_rng)
        # Accumulate on the device; pulling a value would sync every step.
        total, count = total + metrics["loss"] * metrics["count"], count + metrics["count"]
        bar.update(1)
        if (i + 1) % PROGRESS_EVERY == 0 and not bar.disable:
            bar.set_postfix(loss=f"{float(total / count):.4f}",
                            chars_s=f"{(i + 1) * B * T / (time.perf_counter() - t0):,.0f}")
    bar.close()
    return state, float(total / count)


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
    """
    corpus = prepare_corpus(raw_text, cfg)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=corpus.vocab.size))
    for line in summary_lines(corpus, cfg):
        log(line)

    run_dir = Path(run_dir)
    existing = checkpoint.latest_step(run_dir) if run_dir.exists() else None
    if resume:
        if existing is None:
            raise CharlmError(f"nothing to resume: {run_dir} holds no charlm checkpoint")
        state, start_epoch, best_loss = _resume_point(run_dir, cfg, corpus)
        log(f"Resuming from epoch {start_epoch} (loss {best_loss:.5f})")
    else:
        if existing is not None:
            raise CharlmError(f"{run_dir} already holds a checkpoint; pass --resume to continue it, "
                              f"or choose another --ckpt-dir")
        init_rng = jax.random.fold_in(jax.random.key(cfg.train.seed), 0)
        state, start_epoch, best_loss = create_train_state(cfg, init_rng), 0, math.inf
    _check_writable(run_dir)
    dropout_rng = jax.random.fold_in(jax.random.key(cfg.train.seed), 1)

    meta = {"config": cfg.to_dict(), "vocab": corpus.vocab.chars, "metric": METRIC,
            "seeds": [corpus.vocab.decode(w) for w in
                      seed_windows(corpus.tokens, cfg.data.seq_length, NUM_SEEDS, cfg.train.seed)],
            "corpus": {"source": source, "chars": len(corpus.tokens), "fingerprint": fingerprint(corpus.text)}}
    starts = window_starts(len(corpus.tokens), cfg.data.seq_length, cfg.data.stride)
    T, B = cfg.data.seq_length, cfg.train.batch_size
    steps_per_epoch = math.ceil(len(starts) / B)
    log(f"Training {cfg.model.layers}x{cfg.model.hidden} {cfg.model.input_encoding} LSTM on "
        f"{jax.devices()[0].platform.upper()}: {steps_per_epoch} steps/epoch of {B} windows")

    history: list[dict] = []
    best_path = None
    with checkpoint.BestCheckpoint(run_dir) as best:
        for epoch in range(start_epoch + 1, cfg.train.epochs + 1):
            t0 = time.perf_counter()
            state, loss = run_epoch(state, corpus.tokens, shuffled(starts, cfg.train.seed, epoch), cfg, dropout_rng,
                                    f"Epoch {epoch}/{cfg.train.epochs}", progress)
            seconds = time.perf_counter() - t0
            record = {"epoch": epoch, "train_loss": loss, "seconds": seconds,
                      "chars_per_s": len(starts) * T / seconds, "step": int(state.step)}
            history.append(record)
            log(f"Epoch {epoch}/{cfg.train.epochs} - {seconds:.0f}s - {1000 * seconds / steps_per_epoch:.0f}ms/step"
                f" - {METRIC}: {loss:.4f} - {record['chars_per_s']:,.0f} chars/s")
            if not math.isfinite(loss):
                raise CharlmError(f"training diverged at epoch {epoch} (loss {loss}); the best checkpoint "
                                  f"is kept; try a lower --lr")
            if loss < best_loss:
                best_path = best.save(epoch, state, meta, loss)
                log(f"Epoch {epoch:05d}: loss improved from {best_loss:.5f} to {loss:.5f}, saving model to {best_path}")
                best_loss = loss
            else:
                log(f"Epoch {epoch:05d}: loss did not improve from {best_loss:.5f}")
            with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
    return TrainResult(state, best_loss, history, best_path)
