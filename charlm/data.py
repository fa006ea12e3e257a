"""Text -> integer ids -> training windows -> batches, as pure NumPy functions.

The encoded text is kept once. A training window is just its start index: batches are
gathered from start indices on demand, so memory stays O(text length) instead of the
tutorial's O(patterns x seq_length) list of windows.
"""

from __future__ import annotations

from dataclasses import dataclass
import re

import numpy as np

from charlm.errors import CharlmError


@dataclass(frozen=True)
class Vocab:
    """The distinct chars of a text, sorted (after --init-from: the older vocabulary, then the new
    chars); a char's id is its index in `chars`."""

    chars: str

    @classmethod
    def from_text(cls, text: str) -> "Vocab":
        if not text:
            raise CharlmError("cannot build a vocabulary from an empty text")
        return cls("".join(sorted(set(text))))

    @property
    def size(self) -> int:
        return len(self.chars)

    def extended(self, text: str) -> "Vocab":
        """This vocabulary, then the text's chars it lacks (sorted): every old id keeps its char."""
        return Vocab(self.chars + "".join(self.unknown_chars(text)))

    def unknown_chars(self, text: str) -> list[str]:
        known = set(self.chars)
        return sorted({c for c in text if c not in known})

    def encode(self, text: str) -> np.ndarray:
        """Maps a string to an int32 array of ids; unknown chars raise a CharlmError naming them."""
        missing = self.unknown_chars(text)
        if missing:
            shown = ", ".join(repr(c) for c in missing[:20]) + (" ..." if len(missing) > 20 else "")
            raise CharlmError(f"{len(missing)} char(s) not in the model's vocabulary: {shown}")
        # A lookup table over code points is O(text) and far faster than a dict per char.
        table = np.full(max(map(ord, self.chars)) + 1, -1, dtype=np.int32)
        table[[ord(c) for c in self.chars]] = np.arange(self.size, dtype=np.int32)
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        return table[codes]

    def decode(self, ids) -> str:
        codes = np.frombuffer(self.chars.encode("utf-32-le"), dtype=np.uint32)
        return codes[np.asarray(ids).reshape(-1)].tobytes().decode("utf-32-le")


def num_windows(n_tokens: int, seq_length: int, stride: int = 1) -> int:
    """Windows of `seq_length` inputs that still have a next char to predict."""
    return max(0, (n_tokens - seq_length - 1) // stride + 1)


def window_starts(n_tokens: int, seq_length: int, stride: int = 1) -> np.ndarray:
    """Start index of every training window: window i is tokens[s:s+seq_length], target tokens[s+seq_length]."""
    return np.arange(num_windows(n_tokens, seq_length, stride), dtype=np.int64) * stride


def check_long_enough(n_tokens: int, seq_length: int) -> None:
    if num_windows(n_tokens, seq_length) == 0:
        raise CharlmError(f"text has {n_tokens} chars, too short for one window: it needs at least "
                          f"{seq_length + 1} (seq_length {seq_length} + 1 target); pass a longer text "
                          f"or a smaller --seq-length")


def shuffled(starts: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """A permutation of `starts` that depends only on (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(starts)


# Up to this many windows an epoch's order is NumPy's permutation, held as an array (8 bytes a
# window; Alice's figures depend on it); above it, a Feistel bijection computed per batch.
SHUFFLE_IN_MEMORY_MAX = 1 << 23
_FEISTEL_ROUNDS = 6
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray, key: np.uint64) -> np.ndarray:
    """splitmix64's finaliser of x ^ key: every output bit depends on every input bit."""
    z = x ^ key
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


class WindowOrder:
    """An epoch's order of n windows, a function of (seed, epoch) only: `take(lo, hi)` is
    positions lo..hi-1 of it, so a resumed epoch goes on with the same windows.

    Small epochs use `shuffled` (the order of every earlier release). Big ones use a
    Feistel network over the next power of 4, walked until the value falls below n (a
    bijection of [0, n), at most 4 tries per value on average), in O(batch) memory.
    """

    def __init__(self, n: int, seed: int, epoch: int, in_memory_max: int = SHUFFLE_IN_MEMORY_MAX):
        self.n = n
        if n <= in_memory_max:
            self._perm, self._keys = shuffled(np.arange(n), seed, epoch), None
            return
        self._perm = None
        self._half = max(1, (int(n - 1).bit_length() + 1) // 2)
        rng = np.random.default_rng([seed, epoch, n])
        self._keys = [np.uint64(k) for k in rng.integers(0, 2 ** 63, size=_FEISTEL_ROUNDS, dtype=np.uint64)]

    def _feistel(self, x: np.ndarray) -> np.ndarray:
        half, mask = np.uint64(self._half), np.uint64((1 << self._half) - 1)
        left, right = x >> half, x & mask
        for key in self._keys:
            left, right = right, left ^ (_mix(right, key) & mask)
        return (left << half) | right

    def take(self, lo: int, hi: int) -> np.ndarray:
        hi = min(hi, self.n)
        if self._perm is not None:
            return self._perm[lo:hi]
        out = self._feistel(np.arange(lo, max(lo, hi), dtype=np.uint64))
        while (outside := out >= self.n).any():
            out[outside] = self._feistel(out[outside])
        return out.astype(np.int64)


def gather_batch(tokens: np.ndarray, starts: np.ndarray, seq_length: int, batch_size: int | None = None,
                 lengths: np.ndarray | None = None) -> dict:
    """Builds one batch from window starts.

    Returns a dict with
      inputs  [B, T] int32: tokens[s : s+T]
      targets [B, T] int32: tokens[s+1 : s+T+1], the next char at every position (the
                            tutorial's objective uses only the last column)
      weights [B, T] float32: 1 where the target is real, 0 for padding.
    With `batch_size`, a short final batch is padded to that size with zero-weight rows, so
    every step has the same shape and the jitted step compiles once. With `lengths`
    (sentence windows), window i holds only lengths[i] tokens (inputs and final target);
    positions past that are padding.
    """
    n = len(starts)
    B, T = (n if batch_size is None else batch_size), seq_length
    if n > B:
        raise ValueError(f"{n} starts do not fit a batch of {B}")
    padded = np.zeros(B, dtype=np.int64)
    padded[:n] = starts
    idx = padded[:, None] + np.arange(T + 1)
    valid = np.zeros((B, T + 1), dtype=bool)
    valid[:n] = True
    if lengths is not None:
        valid[:n] &= np.arange(T + 1) < np.asarray(lengths)[:, None]
    window = np.where(valid, tokens[np.minimum(idx, len(tokens) - 1)], 0)
    return {"inputs": window[:, :-1].astype(np.int32), "targets": window[:, 1:].astype(np.int32),
            "weights": valid[:, 1:].astype(np.float32)}


def split_point(n_tokens: int, val_frac: float) -> int:
    """Tokens [0, split) train and [split, n) validate: the contiguous tail is held out, because
    overlapping windows make a random split leak."""
    return n_tokens if val_frac <= 0 else int(n_tokens * (1.0 - val_frac))


def stream_layout(n_tokens: int, batch_size: int, seq_length: int) -> tuple[int, int]:
    """Stateful training's streams: (batches per epoch K, chars per stream).

    The text is cut into B contiguous streams; batch k holds the k-th window of every
    stream, so the LSTM state after batch k is the right state to start batch k+1 with.
    """
    stream_len = (n_tokens - 1) // batch_size
    K = stream_len // seq_length
    if K == 0:
        raise CharlmError(f"text has {n_tokens} chars, too short for {batch_size} streams of one "
                          f"{seq_length}-char window; use a smaller --batch-size or --seq-length")
    return K, stream_len


def stream_row(k: int, batch_size: int, stream_len: int, seq_length: int) -> np.ndarray:
    """Window starts of stateful batch k: the k-th window of each stream."""
    return np.arange(batch_size, dtype=np.int64) * stream_len + k * seq_length


def stream_starts(n_tokens: int, batch_size: int, seq_length: int) -> np.ndarray:
    """Every stateful batch's window starts: [K, B], row k is batch k (see stream_layout)."""
    K, stream_len = stream_layout(n_tokens, batch_size, seq_length)
    return np.stack([stream_row(k, batch_size, stream_len, seq_length) for k in range(K)])


_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*\s+")


def sentence_windows(text: str, seq_length: int) -> tuple[np.ndarray, np.ndarray]:
    """One window per sentence (tutorial extension 4): (starts, lengths).

    A sentence runs to its end punctuation and the whitespace after it; the window holds
    the sentence plus the char after it as the final target, truncated to seq_length + 1.
    """
    bounds = [0] + [m.end() for m in _SENTENCE_END.finditer(text)]
    bounds = sorted(set(b for b in bounds if b < len(text) - 1))
    starts = np.asarray(bounds, dtype=np.int64)
    ends = np.append(starts[1:], len(text) - 1)
    lengths = np.minimum(ends - starts + 1, seq_length + 1)
    keep = lengths >= 2  # at least one input and its target
    return starts[keep], lengths[keep]


def seed_windows(tokens: np.ndarray, seq_length: int, count: int, seed: int) -> list[np.ndarray]:
    """`count` random windows of the text, stored in checkpoints as default sampling seeds."""
    n = num_windows(len(tokens), seq_length)
    rng = np.random.default_rng(seed)
    picks = np.sort(rng.choice(n, size=min(count, n), replace=False))
    return [tokens[s:s + seq_length] for s in picks]
