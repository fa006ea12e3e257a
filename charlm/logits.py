"""From the model's logits to the next char: the sampler's pure, jit-friendly steps.

`SamplingSettings` (charlm.config) names the steps; here they are split in two parts so that a
compiled sampler serves many settings:
  Plan   (static, hashable): which steps run at all, and buffer sizes;
  values (traced scalars):   temperature, k, p, penalty and n, so changing them never recompiles.
`History` is the per-row memory the anti-loop steps read; the sampler carries it through its
scan, and beam search reorders its rows with the beams.

The n-gram ban is exact and incremental: `match[i]` is the length (capped at n-1) of the common
suffix of text[..i] and the whole text so far, updated in O(H) per char, so banning every char
that would complete an n-gram already in the text never rescans it.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from charlm.config import SamplingSettings


class Plan(NamedTuple):
    greedy: bool             # argmax (temperature 0): no draw, so top-k/top-p cannot change the pick
    top_k: bool
    top_p: bool
    penalty_window: int      # 0: no repetition penalty
    ngram: bool

    @classmethod
    def of(cls, s: SamplingSettings) -> "Plan":
        return cls(greedy=s.greedy, top_k=s.top_k is not None, top_p=s.top_p is not None and s.top_p < 1,
                   penalty_window=s.penalty_window if s.repetition_penalty != 1 else 0,
                   ngram=s.no_repeat_ngram is not None)


def values_of(s: SamplingSettings) -> dict[str, jax.Array]:
    """The settings' numbers as device scalars (the traced half of the settings)."""
    return {"temperature": jnp.float32(max(s.temperature, 1e-6)), "top_k": jnp.int32(s.top_k or 1),
            "top_p": jnp.float32(s.top_p or 1.0), "penalty": jnp.float32(s.repetition_penalty),
            "ngram": jnp.int32(s.no_repeat_ngram or 2)}


class History(NamedTuple):
    """What each row has produced. Buffers that their Plan step does not use are None."""
    recent_BxW: jax.Array | None   # the last W generated ids in a ring (slot = generated % W); -1: empty
    text_BxH: jax.Array | None     # prime + generated ids, in order (for the n-gram ban)
    match_BxH: jax.Array | None    # match[i]: common-suffix length of text[..i] and text[..length-1], < n
    length: jax.Array              # ids in text_BxH (prime + generated)
    generated: jax.Array           # ids generated (not prime); also the step number for PRNG keys


def empty_history(plan: Plan, batch: int, capacity: int) -> History:
    """`capacity`: the most ids the text buffer must hold (prime + everything generated)."""
    recent = jnp.full((batch, plan.penalty_window), -1, jnp.int32) if plan.penalty_window else None
    text = jnp.zeros((batch, capacity), jnp.int32) if plan.ngram else None
    match = jnp.zeros((batch, capacity), jnp.int32) if plan.ngram else None
    return History(recent, text, match, jnp.int32(0), jnp.int32(0))


def remember(history: History, ids_B: jax.Array, values: dict, *, generated: bool = True) -> History:
    """Appends one id per row; prime ids (generated=False) enter the n-gram text only."""
    recent, text, match = history.recent_BxW, history.text_BxH, history.match_BxH
    if recent is not None and generated:
        recent = recent.at[:, history.generated % recent.shape[1]].set(ids_B)
    if text is not None:
        n_1 = values["ngram"] - 1
        before = jnp.arange(text.shape[1])[None] < history.length
        # A suffix of text[..i] matching the text's suffix grows by one where text[i] equals the new id.
        grown = jnp.minimum(jnp.pad(match[:, :-1], ((0, 0), (1, 0))) + 1, n_1)
        match = jnp.where(before & (text == ids_B[:, None]), grown, 0)
        text = text.at[:, history.length].set(ids_B, mode="drop")
    return History(recent, text, match, history.length + 1, history.generated + int(generated))


def remember_prime(history: History, prime_BxP: jax.Array, mask_BxP: jax.Array, values: dict) -> History:
    """Appends the prime's ids where `mask_BxP` (padding is skipped), to the n-gram text only."""
    length = history.length + jnp.sum(mask_BxP[0], dtype=jnp.int32)
    if history.text_BxH is None:
        return history._replace(length=length)

    def step(h, ids_valid):
        ids_B, valid = ids_valid
        return jax.tree.map(lambda new, old: jnp.where(valid, new, old), remember(h, ids_B, values, generated=False), h), None

    return jax.lax.scan(step, history, (prime_BxP.T, mask_BxP[0]))[0]


def penalize_recent(logits_BxV: jax.Array, recent_BxW: jax.Array, penalty: jax.Array) -> jax.Array:
    """CTRL's repetition penalty: each char among the recent ids has a positive logit divided by
    `penalty` and a negative one multiplied by it (once, however often it occurred)."""
    B, V = logits_BxV.shape
    slots = jnp.where(recent_BxW >= 0, recent_BxW, V)  # empty slots point past the vocab and are dropped
    seen_BxV = jnp.zeros((B, V), bool).at[jnp.arange(B)[:, None], slots].set(True, mode="drop")
    scaled = jnp.where(logits_BxV > 0, logits_BxV / penalty, logits_BxV * penalty)
    return jnp.where(seen_BxV, scaled, logits_BxV)


def repeated_ngram_ends(history: History, vocab_size: int, n: jax.Array) -> jax.Array:
    """[B, V] bool: the chars that would complete an n-gram already in the text. text[j] is such a
    char when the n-1 ids before it equal the text's last n-1 ids: match[j-1] == n-1."""
    text, match = history.text_BxH, history.match_BxH
    B, H = text.shape
    prefix = jnp.pad(match[:, :-1], ((0, 0), (1, 0)))  # prefix[j] = match[j-1]
    hit = (jnp.arange(H)[None] < history.length) & (prefix >= n - 1)  # n-1 matched ids imply length >= n-1
    slots = jnp.where(hit, text, vocab_size)
    return jnp.zeros((B, vocab_size), bool).at[jnp.arange(B)[:, None], slots].set(True, mode="drop")


def shape_logits(logits_BxV: jax.Array, history: History, plan: Plan, values: dict) -> jax.Array:
    """The penalty and the n-gram ban: what changes the argmax (and what beam search scores)."""
    logits_BxV = logits_BxV.astype(jnp.float32)
    if plan.penalty_window:
        logits_BxV = penalize_recent(logits_BxV, history.recent_BxW, values["penalty"])
    if plan.ngram:
        banned = repeated_ngram_ends(history, logits_BxV.shape[-1], values["ngram"])
        banned &= ~banned.all(axis=-1, keepdims=True)  # a row with every char banned keeps them all
        logits_BxV = jnp.where(banned, -jnp.inf, logits_BxV)
    return logits_BxV


PAIRWISE_MAX_VOCAB = 256  # up to this vocabulary, rank chars by pairwise comparison: faster than a sort on CPU


def truncate(logits_BxV: jax.Array, plan: Plan, values: dict) -> jax.Array:
    """Temperature, then top-k, then top-p over what top-k kept: dropped chars get -inf.

    A char's rank is the number of chars with a higher logit, and the nucleus keeps the chars
    whose more likely rivals hold less than p of the mass: for the small vocabularies of
    char models an all-pairs comparison ([B, V, V]) finds both without sorting."""
    logits_BxV = logits_BxV / values["temperature"]
    if not (plan.top_k or plan.top_p):
        return logits_BxV
    B, V = logits_BxV.shape
    if V <= PAIRWISE_MAX_VOCAB:
        above_BxVxV = logits_BxV[:, None, :] > logits_BxV[:, :, None]  # [b, i, j]: j is likelier than i
        rank_BxV = jnp.sum(above_BxVxV, axis=-1)
        keep_BxV = rank_BxV < values["top_k"] if plan.top_k else jnp.ones((B, V), bool)
        if plan.top_p:
            probs_BxV = jax.nn.softmax(jnp.where(keep_BxV, logits_BxV, -jnp.inf), axis=-1)
            mass_above_BxV = jnp.einsum("bij,bj->bi", above_BxVxV.astype(probs_BxV.dtype), probs_BxV)
            keep_BxV &= (mass_above_BxV < values["top_p"]) | (rank_BxV == 0)
        return jnp.where(keep_BxV, logits_BxV, -jnp.inf)
    sorted_BxV = -jnp.sort(-logits_BxV, axis=-1)
    keep_BxV = jnp.ones((B, V), bool)
    if plan.top_k:
        keep_BxV &= jnp.arange(V)[None] < values["top_k"]
    if plan.top_p:
        probs = jax.nn.softmax(jnp.where(keep_BxV, sorted_BxV, -jnp.inf), axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        keep_BxV &= (mass_before < values["top_p"]) | (jnp.arange(V)[None] == 0)
    last = jnp.sum(keep_BxV, axis=-1, keepdims=True) - 1
    threshold_B1 = jnp.take_along_axis(sorted_BxV, last, axis=-1)
    return jnp.where(logits_BxV < threshold_B1, -jnp.inf, logits_BxV)


def choose(logits_BxV: jax.Array, history: History, key: jax.Array, plan: Plan, values: dict) -> jax.Array:
    """The next id per row under the plan: [B] int32."""
    logits_BxV = shape_logits(logits_BxV, history, plan, values)
    if plan.greedy:
        return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    return jax.random.categorical(key, truncate(logits_BxV, plan, values), axis=-1).astype(jnp.int32)
