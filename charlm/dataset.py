"""The run's data: the config applied to the pure functions of `charlm.data`.

`prepare_corpus` cleans, encodes and splits a text in memory as `cfg.data` says; `load_corpus`
does the same for files through the token cache (`charlm.tokens`), whose ids stay on disk
for a big corpus, read window by window. `training_windows` and `epoch_batches` give the
training windows and each epoch's batches in a resumable order, without materialising either
for a big corpus.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from charlm.config import RunConfig
from charlm.corpus import clean_text, fingerprint
from charlm.data import (Vocab, WindowOrder, check_long_enough, gather_batch, num_windows, sentence_windows,
                         split_point, stream_layout, stream_row)
from charlm.errors import CharlmError
from charlm.tokens import Cleaning, encode_corpus


@dataclass(frozen=True)
class Corpus:
    """The cleaned text, its vocabulary, the ids training may see and where validation starts.

    With a test split the held-out tail is cut off `tokens` here, so no training window,
    validation pass or tuning call downstream can reach it."""

    fingerprint: str   # of the whole cleaned text: identifies the run's corpus
    vocab: Vocab       # of the whole text, so the test tail can be scored later
    tokens: np.ndarray  # ids of the text without the test tail: train, then validation (or a TokenFile)
    split: int         # tokens[:split] train, tokens[split:] validate
    test_chars: int = 0  # chars of the held-out test tail (not in tokens)
    files: tuple = ()  # each file's {path, chars, fingerprint}, when it came from files

    @property
    def train_tokens(self) -> np.ndarray:
        return self.tokens[:self.split]

    @property
    def val_tokens(self) -> np.ndarray:
        return self.tokens[self.split:]


@dataclass(frozen=True)
class TextFiles:
    """A corpus on disk: its files, in order (see corpus.find_text_files), and how to decode them."""

    paths: tuple
    encoding: str = "utf-8"
    errors: str = "strict"


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
    return _split(vocab.encode(text), vocab, fingerprint(text), cfg)


def cleaning_of(cfg: RunConfig, encoding: str = "utf-8", errors: str = "strict") -> Cleaning:
    d = cfg.data
    return Cleaning(encoding, errors, d.lowercase, d.strip, d.strip_punctuation)


def load_corpus(paths: Sequence[str | Path], cfg: RunConfig, encoding: str = "utf-8", errors: str = "strict",
                extend: Vocab | None = None, log: Callable[[str], None] = print) -> Corpus:
    """The corpus of files (joined as `corpus.read_texts` joins them) through the token cache:
    encoded on first use, then read as training goes, so its size costs disk, not RAM."""
    encoded = encode_corpus(paths, cleaning_of(cfg, encoding, errors), extend, log=log)
    return dataclasses.replace(_split(encoded.tokens, encoded.vocab, encoded.fingerprint, cfg),
                               files=tuple(encoded.files))


def _split(tokens: np.ndarray, vocab: Vocab, text_fingerprint: str, cfg: RunConfig) -> Corpus:
    d = cfg.data
    test_start, split = held_out_splits(len(tokens), d.val_frac, d.test_frac)
    check_long_enough(split, d.seq_length)
    if d.val_frac > 0 and test_start - split < 2:
        raise CharlmError(f"--val-frac {d.val_frac} holds out {test_start - split} char(s); need at least 2")
    if d.test_frac > 0 and len(tokens) - test_start < 2:
        raise CharlmError(f"--test-frac {d.test_frac} holds out {len(tokens) - test_start} char(s); need at least 2")
    return Corpus(text_fingerprint, vocab, tokens[:test_start], split, len(tokens) - test_start)


def held_out_splits(n_tokens: int, val_frac: float, test_frac: float) -> tuple[int, int]:
    """(test start, val start): the test tail is the last test_frac of the text and the val slice
    the val_frac before it, both shares of the whole text. So `evaluate --val-frac F` on the
    training text scores exactly the tail a run with `--test-frac F` held out."""
    test_start = split_point(n_tokens, test_frac)
    return test_start, split_point(n_tokens, val_frac + test_frac) if val_frac > 0 else test_start


@dataclass(frozen=True)
class Windows:
    """A run's training windows, described rather than listed: window i of plain windowing starts
    at i * stride; stateful batch k holds char k * seq_length of each of `streams` streams of
    `stream_len` chars; only sentence windows are arrays (starts, lengths)."""

    count: int                        # windows, or for stateful training batches
    stride: int = 1
    streams: int = 0                  # stateful: the batch size
    stream_len: int = 0
    seq_length: int = 0
    starts: np.ndarray | None = None  # sentence windows
    lengths: np.ndarray | None = None

    @property
    def patterns(self) -> int:
        """Training patterns, as the tutorial's summary counts them."""
        return self.count * self.streams if self.streams else self.count

    def steps(self, batch_size: int) -> int:
        return self.count if self.streams else math.ceil(self.count / batch_size)

    def stream_row(self, k: int) -> np.ndarray:
        """Stateful batch k: the k-th window of every stream, so the state carries from batch to batch."""
        return stream_row(k, self.streams, self.stream_len, self.seq_length)

    def window_starts(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        if self.starts is not None:
            return self.starts[idx], self.lengths[idx]
        return idx * self.stride, None


def training_windows(corpus: Corpus, cfg: RunConfig) -> Windows:
    """The training windows, all inside the training part of the text."""
    d, n = cfg.data, corpus.split
    if d.stateful:
        K, stream_len = stream_layout(n, cfg.train.batch_size, d.seq_length)
        return Windows(K, streams=cfg.train.batch_size, stream_len=stream_len, seq_length=d.seq_length)
    if d.windowing == "sentences":  # decodes the training text: sentences are found in chars
        starts, lengths = sentence_windows(corpus.vocab.decode(corpus.tokens[:n]), d.seq_length)
        return Windows(len(starts), starts=starts, lengths=lengths)
    return Windows(num_windows(n, d.seq_length, d.window_stride), stride=d.window_stride)


def summary_lines(corpus: Corpus, cfg: RunConfig, windows: Windows | None = None) -> list[str]:
    """The tutorial's three summary lines (plus the split, when there is one); pass the run's
    `windows` if they are already worked out."""
    windows = windows or training_windows(corpus, cfg)
    lines = [f"Total Characters: {len(corpus.tokens) + corpus.test_chars}", f"Total Vocab: {corpus.vocab.size}",
             f"Total Patterns: {windows.patterns}"]
    if cfg.data.val_frac > 0 or corpus.test_chars:
        line = f"Train Characters: {corpus.split}, Val Characters: {len(corpus.tokens) - corpus.split}"
        if corpus.test_chars:
            line += (f", Test Characters: {corpus.test_chars} (the contiguous last {cfg.data.test_frac:.0%}, "
                     f"held out from training and validation)")
        else:
            line += f" (the contiguous last {cfg.data.val_frac:.0%})"
        lines.append(line)
    return lines


def epoch_batches(corpus: Corpus, cfg: RunConfig, windows: Windows, epoch: int, skip: int = 0) -> Iterator[dict]:
    """The batches of one epoch (shuffled windows, or streams in order), after the first `skip`.

    The order depends only on (seed, epoch), so a resumed run sees the same batches."""
    T, B = cfg.data.seq_length, cfg.train.batch_size
    if windows.streams:
        for k in range(skip, windows.count):
            yield gather_batch(corpus.tokens, windows.stream_row(k), T)
        return
    order = WindowOrder(windows.count, cfg.train.seed, epoch)
    for lo in range(skip * B, windows.count, B):
        starts, lengths = windows.window_starts(order.take(lo, lo + B))
        yield gather_batch(corpus.tokens, starts, T, B, lengths)
