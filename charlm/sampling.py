"""Generating text: jitted samplers that scan over the generated length.

Two context modes:
  stateful (default): run the prime once, then carry the LSTM state one char at a time;
    each new char costs one LSTM step.
  window: the tutorial's exact semantics: every char is predicted from the last
    `seq_length` chars run from a zero state (100 LSTM steps per char).
Both run as one `jax.lax.scan` inside `jax.jit`; no Python loop calls the model.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from charlm.config import ModelConfig, RunConfig
from charlm.corpus import clean_text
from charlm.data import Vocab
from charlm.errors import CharlmError
from charlm.model import CharLSTM

CONTEXT_MODES = ("stateful", "window")


def sample_next(logits_BxV: jax.Array, rng: jax.Array, temperature: float, top_k: int | None) -> jax.Array:
    """Picks the next id per row: argmax at temperature 0, else a draw from softmax(logits / T),
    restricted to the `top_k` most likely chars when given."""
    logits_BxV = logits_BxV.astype(jnp.float32)
    if top_k is not None and top_k < logits_BxV.shape[-1]:
        kth_B1 = jax.lax.top_k(logits_BxV, top_k)[0][:, -1:]
        logits_BxV = jnp.where(logits_BxV < kth_B1, -jnp.inf, logits_BxV)
    if temperature == 0:
        return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    return jax.random.categorical(rng, logits_BxV / temperature, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("cfg", "length", "temperature", "top_k"))
def generate_stateful(params, cfg: ModelConfig, prime_BxP: jax.Array, rng: jax.Array, *, length: int,
                      temperature: float = 0.0, top_k: int | None = None) -> jax.Array:
    """Primes the state with `prime_BxP`, then generates `length` ids per row: [B, length]."""
    model = CharLSTM(cfg)
    logits_BxV, carry = model.apply({"params": params}, prime_BxP, last_only=True)

    def step(loop, key):
        logits_BxV, carry = loop
        ids_B = sample_next(logits_BxV, key, temperature, top_k)
        logits_BxV, carry = model.apply({"params": params}, ids_B[:, None], carry, last_only=True)
        return (logits_BxV, carry), ids_B

    _, ids_LxB = jax.lax.scan(step, (logits_BxV, carry), jax.random.split(rng, length))
    return ids_LxB.T


@functools.partial(jax.jit, static_argnames=("cfg", "length", "seq_length", "temperature", "top_k"))
def generate_window(params, cfg: ModelConfig, prime_BxP: jax.Array, rng: jax.Array, *, length: int,
                    seq_length: int, temperature: float = 0.0, top_k: int | None = None) -> jax.Array:
    """The tutorial's generator: each id from the last `seq_length` ids, zero state each time.

    A prime shorter than `seq_length` is left-padded with masked positions that leave the
    state at zero, so it is the same as running the shorter window.
    """
    model = CharLSTM(cfg)
    B, P = prime_BxP.shape
    L = seq_length
    if P >= L:
        window_BxL, mask_BxL = prime_BxP[:, P - L:], jnp.ones((B, L), bool)
    else:
        window_BxL = jnp.concatenate([jnp.zeros((B, L - P), prime_BxP.dtype), prime_BxP], axis=1)
        mask_BxL = jnp.concatenate([jnp.zeros((B, L - P), bool), jnp.ones((B, P), bool)], axis=1)

    def step(loop, key):
        window_BxL, mask_BxL = loop
        logits_BxV, _ = model.apply({"params": params}, window_BxL, last_only=True, mask_BxT=mask_BxL)
        ids_B = sample_next(logits_BxV, key, temperature, top_k)
        window_BxL = jnp.concatenate([window_BxL[:, 1:], ids_B[:, None]], axis=1)
        mask_BxL = jnp.concatenate([mask_BxL[:, 1:], jnp.ones((B, 1), bool)], axis=1)
        return (window_BxL, mask_BxL), ids_B

    _, ids_LxB = jax.lax.scan(step, (window_BxL, mask_BxL), jax.random.split(rng, length))
    return ids_LxB.T


def encode_prime(prime: str, vocab: Vocab, cfg: RunConfig) -> np.ndarray:
    """Prepares user prime text as training prepared the corpus (newlines, case, punctuation)."""
    if not prime:
        raise CharlmError("the prime text is empty")
    d = cfg.data
    text = clean_text(prime, lowercase=d.lowercase, strip=False, strip_punctuation=d.strip_punctuation)
    missing = vocab.unknown_chars(text)
    if missing:
        raise CharlmError(f"prime text contains {len(missing)} char(s) not in the model's vocabulary: "
                          f"{', '.join(repr(c) for c in missing)}")
    return vocab.encode(text)


def generate(params, cfg: RunConfig, vocab: Vocab, prime: str, *, length: int = 1000, temperature: float = 0.0,
             top_k: int | None = None, seed: int = 0, num_samples: int = 1, context: str = "stateful") -> list[str]:
    """Generates `num_samples` continuations of `prime`, `length` chars each, in one batched call."""
    if not isinstance(length, int) or length <= 0:
        raise CharlmError(f"length must be a positive integer, got {length!r}")
    if not isinstance(num_samples, int) or num_samples <= 0:
        raise CharlmError(f"num_samples must be a positive integer, got {num_samples!r}")
    if temperature < 0:
        raise CharlmError(f"temperature must be >= 0, got {temperature!r}")
    if top_k is not None and top_k <= 0:
        raise CharlmError(f"top_k must be a positive integer, got {top_k!r}")
    if context not in CONTEXT_MODES:
        raise CharlmError(f"context must be one of {', '.join(CONTEXT_MODES)}, got {context!r}")
    prime_ids = encode_prime(prime, vocab, cfg)
    prime_BxP = jnp.asarray(np.tile(prime_ids, (num_samples, 1)))
    rng = jax.random.key(seed)
    options = dict(length=length, temperature=float(temperature), top_k=top_k)
    if context == "window":
        ids = generate_window(params, cfg.model, prime_BxP, rng, seq_length=cfg.data.seq_length, **options)
    else:
        ids = generate_stateful(params, cfg.model, prime_BxP, rng, **options)
    return [vocab.decode(row) for row in np.asarray(ids)]
