"""The run's data: the config applied to the pure functions of `charlm.data`.

`prepare_corpus` cleans, encodes and splits a text as `cfg.data` says; `training_windows` and
`epoch_batches` give the training windows and each epoch's batches in a resumable order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from charlm.config import RunConfig
from charlm.corpus import clean_text
from charlm.data import (Vocab, batch_starts, check_long_enough, gather_batch, sentence_windows, shuffled,
                         split_point, stream_starts, window_starts)
from charlm.errors import CharlmError


@dataclass(frozen=True)
class Corpus:
    """The cleaned text, its vocabulary, the ids training may see and where validation starts.

    With a test split the held-out tail is cut off `tokens` here, so no training window,
    validation pass or tuning call downstream can reach it."""

    text: str          # the whole cleaned text (its fingerprint identifies the run's corpus)
    vocab: Vocab       # of the whole text, so the test tail can be scored later
    tokens: np.ndarray  # ids of the text without the test tail: train, then validation
    split: int         # tokens[:split] train, tokens[split:] validate
    test_chars: int = 0  # chars of the held-out test tail (not in tokens)

    @property
    def train_tokens(self) -> np.ndarray:
        return self.tokens[:self.split]

    @property
    def val_tokens(self) -> np.ndarray:
        return self.tokens[self.split:]


def prepare_corpus(raw_text: str, cfg: RunConfig, vocab: Vocab | None = None, extend: Vocab | None = None) -> Corpus:
    """Cleans the text as `cfg.data` says, encodes it (with `vocab`, if given; or with `extend`
    plus the chars it lacks) and splits off the val tail."""
    d = cfg.data
    text = clean_text(raw_text, lowercase=d.lowercase, strip=d.strip, strip_punctuation=d.strip_punctuation)
    if not text:
        raise CharlmError("the text is empty after cleaning (was it only a Gutenberg header?)")
    if extend is not None:
        vocab = extend.extended(text)
    vocab = vocab or Vocab.from_text(text)
    tokens = vocab.encode(text)
    test_start, split = held_out_splits(len(tokens), d.val_frac, d.test_frac)
    check_long_enough(split, d.seq_length)
    if d.val_frac > 0 and test_start - split < 2:
        raise CharlmError(f"--val-frac {d.val_frac} holds out {test_start - split} char(s); need at least 2")
    if d.test_frac > 0 and len(tokens) - test_start < 2:
        raise CharlmError(f"--test-frac {d.test_frac} holds out {len(tokens) - test_start} char(s); need at least 2")
    return Corpus(text, vocab, tokens[:test_start], split, len(tokens) - test_start)


def held_out_splits(n_tokens: int, val_frac: float, test_frac: float) -> tuple[int, int]:
    """(test start, val start): the test tail is the last test_frac of the text and the val slice
    the val_frac before it, both shares of the whole text. So `evaluate --val-frac F` on the
    training text scores exactly the tail a run with `--test-frac F` held out."""
    test_start = split_point(n_tokens, test_frac)
    return test_start, split_point(n_tokens, val_frac + test_frac) if val_frac > 0 else test_start


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
    lines = [f"Total Characters: {len(corpus.tokens) + corpus.test_chars}", f"Total Vocab: {corpus.vocab.size}",
             f"Total Patterns: {starts.size}"]
    if cfg.data.val_frac > 0 or corpus.test_chars:
        line = f"Train Characters: {corpus.split}, Val Characters: {len(corpus.tokens) - corpus.split}"
        if corpus.test_chars:
            line += (f", Test Characters: {corpus.test_chars} (the contiguous last {cfg.data.test_frac:.0%}, "
                     f"held out from training and validation)")
        else:
            line += f" (the contiguous last {cfg.data.val_frac:.0%})"
        lines.append(line)
    return lines


def epoch_batches(corpus: Corpus, cfg: RunConfig, starts: np.ndarray, lengths: np.ndarray | None,
                  epoch: int, skip: int = 0) -> Iterator[dict]:
    """The batches of one epoch (shuffled windows, or streams in order), after the first `skip`.

    The order depends only on (seed, epoch), so a resumed run sees the same batches."""
    T, B = cfg.data.seq_length, cfg.train.batch_size
    if cfg.data.stateful:
        for row in starts[skip:]:
            yield gather_batch(corpus.tokens, row, T)
        return
    order = shuffled(np.arange(len(starts)), cfg.train.seed, epoch)[skip * B:]
    for idx in batch_starts(order, B):
        yield gather_batch(corpus.tokens, starts[idx], T, B, None if lengths is None else lengths[idx])
