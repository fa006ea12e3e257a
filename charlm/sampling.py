"""Generating text: a jitted sampler that scans over the generated chars, in chunks.

Two context modes:
  stateful (default): run the prime once, then carry the LSTM state one char at a time;
    each new char costs one LSTM step.
  window: the tutorial's exact semantics: every char is predicted from the last
    `seq_length` chars run from a zero state (100 LSTM steps per char).
Each chunk is one `jax.lax.scan` inside `jax.jit`; no Python loop calls the model per char.
The key for char t is `fold_in(key, t)`, so a sample does not depend on how it is chunked:
`stream` (chunks of a few dozen chars, for text that shows as it is written) and `generate`
(one chunk) give the same text for the same seed. `--stop` strings are found by `StopCut`,
which holds back only what could still turn into a stop string.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from charlm.config import CONTEXT_MODES, ModelConfig, RunConfig, SamplingSettings
from charlm.corpus import clean_text
from charlm.data import Vocab
from charlm.errors import CharlmError
from charlm.logits import History, Plan, choose, empty_history, remember, remember_prime, values_of
from charlm.model import CharLSTM

# Chars per jitted call when streaming: the first ones show within ~10 ms for `fast`'s GRU(512) on 2
# CPU cores, and a 20,000-char sample takes no longer than one call would (BENCHMARKS.md).
STREAM_CHUNK = 128


class Decoder(NamedTuple):
    """The sampler's carry between chars (and chunks)."""
    logits_BxV: jax.Array  # the model's prediction for the next char
    context: Any           # stateful: the LSTM carry; window: (ids [B, L], mask [B, L])
    history: History


def padded_prime(prime_ids: np.ndarray, rows: int) -> tuple[jax.Array, jax.Array]:
    """The prime left-padded to a power-of-two length (at least 16), with its mask, tiled over
    `rows`: masked steps leave the state as it was, so the padding changes nothing, and primes of
    similar lengths share one compiled sampler."""
    P = len(prime_ids)
    size = max(16, 1 << (P - 1).bit_length())
    ids = np.zeros(size, np.int32)
    ids[size - P:] = prime_ids
    return jnp.asarray(np.tile(ids, (rows, 1))), jnp.asarray(np.tile(np.arange(size) >= size - P, (rows, 1)))


def _window_of(ids_BxP: jax.Array, mask_BxP: jax.Array, seq_length: int):
    """The last seq_length positions, left-padded with masked ones that leave the state at zero
    (the same as running the shorter window)."""
    B, P = ids_BxP.shape
    L = seq_length
    if P >= L:
        return ids_BxP[:, P - L:], mask_BxP[:, P - L:]
    return (jnp.concatenate([jnp.zeros((B, L - P), ids_BxP.dtype), ids_BxP], axis=1),
            jnp.concatenate([jnp.zeros((B, L - P), bool), mask_BxP], axis=1))


def _predict(params, cfg: ModelConfig, context, ids_B: jax.Array | None, window: bool):
    """Feeds one id per row (None: nothing new) and returns (next logits, context)."""
    model = CharLSTM(cfg)
    if window:
        ids_BxL, mask_BxL = context
        if ids_B is not None:
            ids_BxL = jnp.concatenate([ids_BxL[:, 1:], ids_B[:, None]], axis=1)
            mask_BxL = jnp.concatenate([mask_BxL[:, 1:], jnp.ones_like(mask_BxL[:, :1])], axis=1)
        logits_BxV, _ = model.apply({"params": params}, ids_BxL, last_only=True, mask_BxT=mask_BxL)
        return logits_BxV, (ids_BxL, mask_BxL)
    return model.apply({"params": params}, ids_B[:, None], context, last_only=True)


@functools.partial(jax.jit, static_argnames=("cfg", "plan", "window", "capacity"))
def start(params, cfg: ModelConfig, prime_BxP: jax.Array, mask_BxP: jax.Array, values: dict, *, plan: Plan,
          window: int | None, capacity: int) -> Decoder:
    """The decoder after the prime (ids where `mask_BxP`, see `padded_prime`). `window`:
    seq_length for window mode, None for stateful. `capacity`: room for prime + generated ids
    in the n-gram history."""
    history = remember_prime(empty_history(plan, prime_BxP.shape[0], capacity), prime_BxP, mask_BxP, values)
    if window:
        logits_BxV, context = _predict(params, cfg, _window_of(prime_BxP, mask_BxP, window), None, True)
    else:
        logits_BxV, context = CharLSTM(cfg).apply({"params": params}, prime_BxP, last_only=True, mask_BxT=mask_BxP)
    return Decoder(logits_BxV, context, history)


@functools.partial(jax.jit, static_argnames=("cfg", "plan", "window", "steps"), donate_argnames=("decoder",))
def advance(params, cfg: ModelConfig, decoder: Decoder, values: dict, key: jax.Array, *, plan: Plan,
            window: int | None, steps: int) -> tuple[Decoder, jax.Array]:
    """Generates `steps` more ids per row: (decoder, ids [B, steps])."""

    def step(d: Decoder, _):
        ids_B = choose(d.logits_BxV, d.history, jax.random.fold_in(key, d.history.generated), plan, values)
        logits_BxV, context = _predict(params, cfg, d.context, ids_B, bool(window))
        return Decoder(logits_BxV, context, remember(d.history, ids_B, values)), ids_B

    decoder, ids_SxB = jax.lax.scan(step, decoder, None, length=steps)
    return decoder, ids_SxB.T


def sampling_model(cfg: ModelConfig, precision: str | None = None) -> ModelConfig:
    """The net the sampler runs: its matmuls in `precision` (None: as trained). The weights are
    float32 either way. On a 2-core CPU this sampler runs bf16 matmuls as fast as f32 ones for
    one stream and faster for 64 (the previous one was 3.5x slower in bf16; BENCHMARKS.md)."""
    return cfg if precision is None else dataclasses.replace(cfg, precision=precision)


def encode_prime(prime: str, vocab: Vocab, cfg: RunConfig, what: str = "prime text") -> np.ndarray:
    """Prepares user text as training prepared the corpus (newlines, case, punctuation); `what`
    names it in the errors (an empty text, chars outside the vocabulary)."""
    if not prime:
        raise CharlmError(f"the {what} is empty")
    d = cfg.data
    text = clean_text(prime, lowercase=d.lowercase, strip=False, strip_punctuation=d.strip_punctuation)
    missing = vocab.unknown_chars(text)
    if missing:
        raise CharlmError(f"{what} contains {len(missing)} char(s) not in the model's vocabulary: "
                          f"{', '.join(repr(c) for c in missing)}")
    return vocab.encode(text)


class StopCut:
    """Cuts one sample at the first occurrence of any stop string, fed piece by piece.

    `feed` returns the text that is safe to show: everything up to a found stop (with it when
    `keep`), or all but the last few chars that might still begin one.
    """

    def __init__(self, stops: Sequence[str], keep: bool = False):
        self.stops, self.keep = [s for s in stops if s], keep
        self.text, self.shown, self.done = "", 0, False
        self._hold = max((len(s) for s in self.stops), default=1) - 1

    def feed(self, piece: str) -> str:
        if self.done:
            return ""
        searched_from = max(0, len(self.text) - self._hold)
        self.text += piece
        found = [(i, s) for s in self.stops if (i := self.text.find(s, searched_from)) >= 0]
        if found:
            i, s = min(found)
            self.text, self.done = self.text[:i + len(s) if self.keep else i], True
            end = len(self.text)
        else:
            end = len(self.text) - self._hold
        out, self.shown = self.text[self.shown:max(end, self.shown)], max(end, self.shown)
        return out

    def flush(self) -> str:
        out, self.shown = self.text[self.shown:], len(self.text)
        return out


def _check(length: int, num_samples: int, context: str) -> None:
    if not isinstance(length, int) or isinstance(length, bool) or length <= 0:
        raise CharlmError(f"length must be a positive integer, got {length!r}")
    if not isinstance(num_samples, int) or num_samples <= 0:
        raise CharlmError(f"num_samples must be a positive integer, got {num_samples!r}")
    if context not in CONTEXT_MODES:
        raise CharlmError(f"context must be one of {', '.join(CONTEXT_MODES)}, got {context!r}")


def stream(params, cfg: RunConfig, vocab: Vocab, prime: str, settings: SamplingSettings = SamplingSettings(), *,
           length: int = 1000, seed: int = 0, num_samples: int = 1, context: str = "stateful",
           stop: Sequence[str] = (), keep_stop: bool = False, chunk: int | None = STREAM_CHUNK,
           capacity: int | None = None, precision: str | None = None) -> Iterator[list[str]]:
    """Yields, chunk by chunk, the new text of each of `num_samples` continuations of `prime`:
    lists of `num_samples` strings that join to what `generate` returns. A sample ends at
    `length` chars or at its first stop string; the loop ends when every sample has. Bad
    arguments raise here, before the first chunk is asked for.

    chunk: chars per jitted call (None: all `length` in one call). capacity: the n-gram
    history's room, at least prime + length (a fixed value lets a server reuse one compile).
    precision: the matmuls', "float32" or "bfloat16" (None: as the net was trained).
    """
    _check(length, num_samples, context)
    prime_ids = encode_prime(prime, vocab, cfg)
    steps = min(chunk or length, length)
    need = len(prime_ids) + -(-length // steps) * steps
    capacity = max(capacity or 0, -(-need // 1024) * 1024) if settings.no_repeat_ngram else 1
    plan, values = Plan.of(settings), values_of(settings)
    window = cfg.data.seq_length if context == "window" else None
    model = sampling_model(cfg.model, precision)
    decoder = start(params, model, *padded_prime(prime_ids, num_samples), values, plan=plan, window=window,
                    capacity=capacity)
    run = functools.partial(advance, params, model, values=values, key=jax.random.key(seed), plan=plan,
                            window=window, steps=steps)
    return _pieces(run, decoder, vocab, length, [StopCut(stop, keep_stop) for _ in range(num_samples)])


def _pieces(run, decoder: Decoder, vocab: Vocab, length: int, cuts: list[StopCut]) -> Iterator[list[str]]:
    produced = 0
    while produced < length and not all(c.done for c in cuts):
        decoder, ids_BxS = run(decoder)
        rows = np.asarray(ids_BxS)[:, :length - produced]
        produced += rows.shape[1]
        pieces = [cut.feed(vocab.decode(row)) for cut, row in zip(cuts, rows)]
        if produced >= length:
            pieces = [p + cut.flush() for p, cut in zip(pieces, cuts)]
        yield pieces


def generate(params, cfg: RunConfig, vocab: Vocab, prime: str, settings: SamplingSettings | None = None, *,
             length: int = 1000, seed: int = 0, num_samples: int = 1, context: str = "stateful",
             stop: Sequence[str] = (), keep_stop: bool = False, precision: str | None = None,
             **sampling: Any) -> list[str]:
    """`num_samples` continuations of `prime`, `length` chars each (less where a stop string
    ends one), drawn in one batched call. Sampling options come as `settings` or as its
    fields: generate(..., temperature=0.8, top_p=0.9)."""
    settings = _settings(settings, sampling)
    texts = [""] * num_samples
    for pieces in stream(params, cfg, vocab, prime, settings, length=length, seed=seed, num_samples=num_samples,
                         context=context, stop=stop, keep_stop=keep_stop, chunk=256 if stop else None,
                         precision=precision):
        texts = [t + p for t, p in zip(texts, pieces)]
    return texts


def _settings(settings: SamplingSettings | None, fields: dict) -> SamplingSettings:
    if settings is not None and fields:
        raise CharlmError("pass sampling options as settings or as keywords, not both")
    try:
        return settings or SamplingSettings(**fields)
    except TypeError as e:
        raise CharlmError(str(e).replace("__init__()", "sampling settings")) from None


def generate_stateful(params, cfg: ModelConfig, prime_BxP: jax.Array, rng: jax.Array, *, length: int,
                      temperature: float = 0.0, top_k: int | None = None) -> jax.Array:
    """Ids [B, length] after priming the state with `prime_BxP` (arrays in, arrays out)."""
    return _generate_ids(params, cfg, prime_BxP, rng, None, length, SamplingSettings(temperature, top_k))


def generate_window(params, cfg: ModelConfig, prime_BxP: jax.Array, rng: jax.Array, *, length: int,
                    seq_length: int, temperature: float = 0.0, top_k: int | None = None) -> jax.Array:
    """The tutorial's generator: each id from the last `seq_length` ids, zero state each time."""
    return _generate_ids(params, cfg, prime_BxP, rng, seq_length, length, SamplingSettings(temperature, top_k))


def _generate_ids(params, cfg, prime_BxP, rng, window, length, settings):
    plan, values = Plan.of(settings), values_of(settings)
    decoder = start(params, cfg, prime_BxP, jnp.ones(prime_BxP.shape, bool), values, plan=plan, window=window,
                    capacity=1)
    return advance(params, cfg, decoder, values, rng, plan=plan, window=window, steps=length)[1]
