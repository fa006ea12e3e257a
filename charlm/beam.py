"""Beam search over chars: the K most likely continuations, all K beams batched on the device.

Each step scores every beam's every next char (K x V candidates) by the beam's summed
log-prob plus the char's, keeps the best K, and reorders the model state, the n-gram and
penalty history and the chars so far by each survivor's parent beam. One `lax.scan` inside
`jax.jit` runs the whole search. Every beam runs the full length, so the length-normalised
score (mean log-prob per char) ranks them as the summed log-prob does; `--stop` then cuts the
returned text. The repetition penalty and the n-gram ban shape the scores as in sampling;
temperature, top-k and top-p describe draws, which beam search does not make.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from charlm.config import ModelConfig, RunConfig, SamplingSettings
from charlm.data import Vocab
from charlm.errors import CharlmError
from charlm.logits import Plan, remember, shape_logits, values_of
from charlm.sampling import Decoder, StopCut, _check, _predict, encode_prime, padded_prime, sampling_model, start

MAX_BEAMS = 64


@functools.partial(jax.jit, static_argnames=("cfg", "plan", "window", "beams", "length", "capacity"))
def beam_search(params, cfg: ModelConfig, prime_1xP: jax.Array, mask_1xP: jax.Array, values: dict, *, plan: Plan,
                window: int | None, beams: int, length: int, capacity: int) -> tuple[jax.Array, jax.Array]:
    """The `beams` best continuations of one prime (see sampling.padded_prime): (ids [K, length],
    summed log-probs [K]), best first."""
    d = start(params, cfg, prime_1xP, mask_1xP, values, plan=plan, window=window, capacity=capacity)
    d = jax.tree.map(lambda a: jnp.repeat(a, beams, axis=0) if a.ndim else a, d)
    # Only beam 0 is live at first, so the first step picks K different chars.
    scores_K = jnp.where(jnp.arange(beams) == 0, 0.0, -jnp.inf)
    chars_KxL = jnp.zeros((beams, length), jnp.int32)

    def step(loop, t):
        d, scores_K, chars_KxL = loop
        logp_KxV = jax.nn.log_softmax(shape_logits(d.logits_BxV, d.history, plan, values), axis=-1)
        V = logp_KxV.shape[-1]
        scores_K, flat_K = jax.lax.top_k((scores_K[:, None] + logp_KxV).reshape(-1), beams)
        parent_K, ids_K = flat_K // V, (flat_K % V).astype(jnp.int32)
        d = jax.tree.map(lambda a: a[parent_K] if a.ndim else a, d)
        chars_KxL = chars_KxL[parent_K].at[:, t].set(ids_K)
        logits_KxV, context = _predict(params, cfg, d.context, ids_K, bool(window))
        return (Decoder(logits_KxV, context, remember(d.history, ids_K, values)), scores_K, chars_KxL), None

    (_, scores_K, chars_KxL), _ = jax.lax.scan(step, (d, scores_K, chars_KxL), jnp.arange(length))
    return chars_KxL, scores_K


def beam_generate(params, cfg: RunConfig, vocab: Vocab, prime: str, settings: SamplingSettings = SamplingSettings(),
                  *, beams: int = 4, length: int = 1000, num_samples: int = 1, context: str = "stateful",
                  stop: Sequence[str] = (), keep_stop: bool = False,
                  precision: str | None = None) -> list[tuple[str, float]]:
    """The `num_samples` best beams of a `beams`-wide search, best first, as (text, mean log-prob
    per char in nats)."""
    _check(length, num_samples, context)
    if not (isinstance(beams, int) and 1 <= beams <= MAX_BEAMS):
        raise CharlmError(f"beams must be an integer in [1, {MAX_BEAMS}], got {beams!r}")
    if num_samples > beams:
        raise CharlmError(f"num_samples ({num_samples}) can be at most the number of beams ({beams})")
    if settings.temperature or settings.top_k is not None or settings.top_p is not None:
        raise CharlmError("beam search is deterministic: temperature, top_k and top_p do not apply to it")
    prime_ids = encode_prime(prime, vocab, cfg)
    plan = Plan.of(settings)
    window = cfg.data.seq_length if context == "window" else None
    capacity = len(prime_ids) + length if plan.ngram else 1
    ids, scores = beam_search(params, sampling_model(cfg.model, precision), *padded_prime(prime_ids, 1),
                              values_of(settings), plan=plan, window=window, beams=beams, length=length,
                              capacity=capacity)
    out = []
    for row, score in zip(np.asarray(ids)[:num_samples], np.asarray(scores)[:num_samples]):
        cut = StopCut(stop, keep_stop)
        out.append((cut.feed(vocab.decode(row)) + cut.flush(), float(score) / length))
    return out
