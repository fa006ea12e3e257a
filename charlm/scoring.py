"""Scoring text with a trained model: nats and bits per char, perplexity.

Three ways to score, all returning one NLL (nats) per scored char:
  stream (default): each char predicted from all of its preceding context, the LSTM state
    carried through the text from a zero state at its start (or after warming up on a
    `context` that precedes it, which is then not scored).
  last-window: the tutorial's own metric: the char after each `seq_length` window, run
    from a zero state; comparable with its reported training losses 1.9435 and 1.2219.
  dynamic (Krause et al. 2018, "Dynamic Evaluation of Neural Sequence Models"): stream
    scoring segment by segment, taking a gradient step on each segment after scoring it,
    so the model adapts to the text as an adaptive compressor does. A char is always
    scored before the model has trained on it. Two update rules:
      rms (Krause's): theta -= lr * g / (rms + eps) + decay * min(rms / mean(rms), 1/decay)
        * (theta - theta_0), with rms the per-parameter root-mean-square gradient of one
        segment, gathered on training text and floored at `rms_floor` x its mean; the decay
        pulls toward the trained weights.
      sgd: theta -= lr * g + decay * (theta - theta_0).
    Before the scored tail the model may adapt on the `adapt_chars` that precede it (read
    and updated on, not scored), as PPMd reads all the text before the part it codes.

Run as `python -m charlm.evaluate --ckpt DIR --text FILE` (see charlm.cli).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax

from charlm.config import DynamicSettings, ModelConfig
from charlm.data import gather_batch, split_point, window_starts
from charlm.errors import CharlmError
from charlm.model import CharLSTM, zero_carry
from charlm.training import sequence_nll

SEGMENT = 256               # chars per jitted call when streaming
VAL_CONTEXT = 1000          # train chars that warm up the state before the val tail is scored
@dataclass(frozen=True)
class Score:
    nats_per_char: float
    bits_per_char: float
    perplexity: float
    chars: int

    @classmethod
    def from_nll(cls, nll: np.ndarray) -> "Score":
        nats = float(np.mean(nll)) if len(nll) else math.nan
        return cls(nats, nats / math.log(2), math.exp(nats), int(len(nll)))

    def to_dict(self) -> dict:
        return asdict(self)


def nats_to_bits(nats: float) -> float:
    return nats / math.log(2)


def _segments(inputs: np.ndarray, targets: np.ndarray, segment: int):
    """Pads to whole segments: inputs, targets [K, 1, segment] and mask [K, 1, segment]."""
    n = len(inputs)
    K = max(1, math.ceil(n / segment))
    def shape(a):
        return np.pad(np.asarray(a), (0, K * segment - n)).reshape(K, 1, segment)
    return shape(inputs), shape(targets), shape(np.ones(n, bool))


@functools.partial(jax.jit, static_argnames="cfg")
def _score_segment(params, cfg: ModelConfig, carry, inputs_1xS, targets_1xS, mask_1xS):
    logits, carry = CharLSTM(cfg).apply({"params": params}, inputs_1xS, carry, mask_BxT=mask_1xS)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets_1xS)
    return nll[0], carry


def _start(params, cfg: ModelConfig, tokens: np.ndarray, context: np.ndarray | None, segment: int):
    """The state to score `tokens` from, and its (inputs, targets): after reading `context`, every
    char of `tokens` is a target; without it, the first char is only an input."""
    carry = zero_carry(cfg, 1)
    tokens = np.asarray(tokens, np.int32)
    if context is None or len(context) == 0:
        return carry, tokens[:-1], tokens[1:]
    context = np.asarray(context, np.int32)
    if len(context) > 1:  # read all but the last context char; it is the input that predicts tokens[0]
        ids, _, mask = _segments(context[:-1], context[:-1], segment)  # masked padding leaves the state alone
        for k in range(len(ids)):
            _, carry = _score_segment(params, cfg, carry, ids[k], ids[k], mask[k])
    return carry, np.concatenate([context[-1:], tokens[:-1]]), tokens


def stream_nll(params, cfg: ModelConfig, tokens: np.ndarray, context: np.ndarray | None = None,
               segment: int = SEGMENT) -> np.ndarray:
    """Per-char NLL with the state carried through the text.

    Without `context` the first char has no past and is not scored (len(tokens) - 1 values);
    with it, the state is warmed up on `context` and every char of `tokens` is scored.
    """
    carry, inputs, targets = _start(params, cfg, tokens, context, segment)
    ids, tgt, mask = _segments(inputs, targets, segment)
    out = []
    for k in range(len(ids)):
        nll, carry = _score_segment(params, cfg, carry, ids[k], tgt[k], mask[k])
        out.append(np.asarray(nll))
    return np.concatenate(out)[:len(inputs)]


def _segment_loss(params, cfg: ModelConfig, carry, inputs_1xS, targets_1xS, mask_1xS):
    """Mean NLL of one segment, with (per-char NLL, carry after it) as aux."""
    logits, new_carry = CharLSTM(cfg).apply({"params": params}, inputs_1xS, carry, mask_BxT=mask_1xS)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets_1xS)
    total, count = sequence_nll(logits, targets_1xS, mask_1xS.astype(jnp.float32))
    return total / jnp.maximum(count, 1.0), (nll[0], new_carry)


@functools.partial(jax.jit, static_argnames=("cfg", "method"), donate_argnums=(0,))
def _dynamic_segment(params, trained, rms, decay_rate, cfg: ModelConfig, carry, inputs_1xS, targets_1xS,
                     mask_1xS, lr, decay, eps, method: str):
    """Scores a segment with `params`, then updates them on it: (params, nll, carry)."""
    (_, (nll, carry)), grads = jax.value_and_grad(_segment_loss, has_aux=True)(
        params, cfg, carry, inputs_1xS, targets_1xS, mask_1xS)
    if method == "rms":
        def update(p, p0, g, r, d):
            return p - lr * g / (r + eps) + decay * d * (p0 - p)
        params = jax.tree.map(update, params, trained, grads, rms, decay_rate)
    else:
        params = jax.tree.map(lambda p, p0, g: p - lr * g + decay * (p0 - p), params, trained, grads)
    return params, nll, jax.lax.stop_gradient(carry)


@functools.partial(jax.jit, static_argnames="cfg")
def _squared_grads(params, cfg: ModelConfig, carry, inputs_BxS, targets_BxS):
    """Sum over B streams of each stream's squared segment gradient, and the carry after it."""
    def one(c, x, y):
        c = jax.tree.map(lambda a: a[None], c)
        (_, (_, c)), g = jax.value_and_grad(_segment_loss, has_aux=True)(
            params, cfg, c, x[None], y[None], jnp.ones((1, x.shape[0]), bool))
        return jax.tree.map(jnp.square, g), jax.tree.map(lambda a: a[0], c)
    sq, carry = jax.vmap(one)(carry, inputs_BxS, targets_BxS)
    return jax.tree.map(lambda a: a.sum(axis=0), sq), carry


def gradient_rms(params, cfg: ModelConfig, train_tokens: np.ndarray, segment: int = 20, segments: int = 512,
                 streams: int = 16):
    """Per-parameter root-mean-square gradient of one segment's mean NLL, over `segments` segments
    of training text read as `streams` contiguous streams (Krause et al.'s MS_g statistics)."""
    n = len(train_tokens) - 1
    rows = max(1, min(segments // streams, n // (streams * segment)))
    streams = max(1, min(streams, n // (rows * segment)))
    span = rows * segment
    if span * streams > n:
        raise CharlmError(f"the training text ({len(train_tokens)} chars) is too short for dynamic-evaluation "
                          f"statistics over {segment}-char segments")
    tokens = np.asarray(train_tokens, np.int32)
    starts = np.arange(streams) * (n // streams)
    carry = zero_carry(cfg, streams)
    total = jax.tree.map(jnp.zeros_like, params)
    for k in range(rows):
        at = starts[:, None] + k * segment + np.arange(segment)[None, :]
        sq, carry = _squared_grads(params, cfg, carry, tokens[at], tokens[at + 1])
        total = jax.tree.map(jnp.add, total, sq)
    return jax.tree.map(lambda t: jnp.sqrt(t / (rows * streams)), total)


def dynamic_nll(params, cfg: ModelConfig, tokens: np.ndarray, before: np.ndarray | None = None,
                settings: DynamicSettings = DynamicSettings(), rms=None) -> tuple[np.ndarray, int]:
    """Per-char NLL of `tokens` under dynamic evaluation, and the number of chars adapted on first.

    The last `settings.adapt_chars` of `before` (the text preceding `tokens`) are read and adapted
    on, unscored, after the state warms up statically on the VAL_CONTEXT chars before them; then
    every char of `tokens` is scored by the model as adapted on all text before its segment. The
    NLL of a segment comes from the forward pass that precedes its update, so no char is scored
    by a model that has seen it. `rms` (method rms) is `gradient_rms` on training text. `params`
    is not modified (the adapted copy is discarded).
    """
    s = settings
    before = np.zeros(0, np.int32) if before is None else np.asarray(before, np.int32)
    adapt_start = max(0, len(before) - s.adapt_chars)
    adapted = len(before) - adapt_start
    seq = np.concatenate([before[adapt_start:], np.asarray(tokens, np.int32)])
    warm = before[max(0, adapt_start - VAL_CONTEXT):adapt_start]
    carry, inputs, targets = _start(params, cfg, seq, warm if len(warm) else None, s.segment)
    ids, tgt, mask = _segments(inputs, targets, s.segment)
    trained = params
    if s.method == "rms":
        if rms is None:
            raise CharlmError("rms dynamic evaluation needs gradient statistics (gradient_rms on training text)")
        mean_rms = sum(float(jnp.sum(r)) for r in jax.tree.leaves(rms)) / sum(r.size for r in jax.tree.leaves(rms))
        # A parameter that training text hardly moves (a rare char's embedding row: RMS 0) would
        # take a step of lr * g / eps the first time the scored text touches it: floor its RMS.
        rms = jax.tree.map(lambda r: jnp.maximum(r, s.rms_floor * mean_rms), rms)
        cap = 1.0 / s.decay if s.decay > 0 else 1.0
        decay_rate = jax.tree.map(lambda r: jnp.minimum(r / mean_rms, cap), rms)
    else:
        rms = decay_rate = jax.tree.map(jnp.zeros_like, params)
    params = jax.tree.map(jnp.array, params)  # a private copy: the update donates its buffers
    out = []
    for k in range(len(ids)):
        params, nll, carry = _dynamic_segment(params, trained, rms, decay_rate, cfg, carry, ids[k], tgt[k], mask[k],
                                              s.lr, s.decay, s.eps, s.method)
        out.append(np.asarray(nll))
    nll = np.concatenate(out)[:len(inputs)]
    return nll[max(0, len(nll) - len(tokens)):], adapted  # the first char of a text has no prediction


@functools.partial(jax.jit, static_argnames="cfg")
def _last_char_nll(params, cfg: ModelConfig, inputs_BxT, targets_B):
    logits, _ = CharLSTM(cfg).apply({"params": params}, inputs_BxT, last_only=True)
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets_B)


def last_window_nll(params, cfg: ModelConfig, tokens: np.ndarray, seq_length: int, stride: int = 1,
                    batch_size: int = 512) -> np.ndarray:
    """The tutorial's metric: NLL of the char after each window, each from a zero state."""
    starts = window_starts(len(tokens), seq_length, stride)
    out = []
    for i in range(0, len(starts), batch_size):
        chunk = starts[i:i + batch_size]
        batch = gather_batch(tokens, chunk, seq_length, batch_size)
        nll = _last_char_nll(params, cfg, batch["inputs"], batch["targets"][:, -1])
        out.append(np.asarray(nll)[:len(chunk)])
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def tail_context(tokens: np.ndarray, split: int) -> np.ndarray | None:
    """The chars that warm up the state before tokens[split:] is scored (None at the start)."""
    return tokens[max(0, split - VAL_CONTEXT):split] if split > 0 else None


def tail_nll(params, cfg: ModelConfig, tokens: np.ndarray, split: int, seq_length: int,
             metric: str = "stream") -> np.ndarray:
    """One NLL per char of tokens[split:], each predicted only from text before it.

    stream: the tail read as one stream after warming up on `tail_context`; last-window:
    each char from the `seq_length` chars before it, run from a zero state. The trainer's
    val pass, the evaluate CLI and the benchmarks all score held-out text through here.
    """
    if metric == "last-window":
        return last_window_nll(params, cfg, tokens[max(0, split - seq_length):], seq_length)
    return stream_nll(params, cfg, tokens[split:], tail_context(tokens, split))


def evaluate_checkpoint(ckpt: str, text_path: str | Sequence[str] | None = None, *, val_frac: float = 0.0,
                        metric: str = "stream", dynamic: DynamicSettings | None = None, encoding: str = "utf-8",
                        errors: str = "strict", glob: str | None = None) -> dict:
    """Scores a text (files and directories, joined as training joins them; default: the
    checkpoint's training text) with the checkpoint under `ckpt`, as the evaluate CLI reports it.

    Returns {nats_per_char, bits_per_char, perplexity, chars, metric, text, scored} and, with
    `dynamic` settings, a "dynamic" dict of the same four figures plus "dynamic_settings" (the
    settings and the chars adapted on). `encoding` and `errors` are read_text's.
    """
    from charlm.checkpoint import config_from_meta, read_meta, read_training_text, restore
    from charlm.corpus import fingerprint

    if not 0.0 <= val_frac < 1.0:
        raise CharlmError(f"--val-frac must be in [0, 1), got {val_frac!r}")
    if dynamic is not None and metric != "stream":
        raise CharlmError("--dynamic works with the stream metric only")
    meta = read_meta(ckpt)  # the text is read and checked before the arrays are loaded
    cfg, vocab = config_from_meta(meta)
    d = cfg.data
    text, label = read_training_text(meta, cfg, [text_path] if isinstance(text_path, str) else text_path,
                                     encoding, errors, glob)
    missing = vocab.unknown_chars(text)
    if missing:
        raise CharlmError(f"the text has {len(missing)} char(s) the model never saw: "
                          f"{', '.join(repr(c) for c in missing[:20])}")
    tokens = vocab.encode(text)
    split = split_point(len(tokens), val_frac) if val_frac > 0 else 0
    if len(tokens) - split < 2:
        raise CharlmError(f"the text has {len(tokens) - split} char(s) to score; need at least 2")
    state = restore(ckpt)[0]
    nll = tail_nll(state.params, cfg.model, tokens, split, d.seq_length, metric)
    if len(nll) == 0:
        raise CharlmError(f"the text is shorter than one {d.seq_length}-char window")
    report = {**Score.from_nll(nll).to_dict(), "metric": metric, "text": label,
              "scored": f"{len(tokens)} chars after cleaning; scored " +
                        (f"the last {100 * val_frac:.3g}%" if val_frac else "all")}
    if dynamic is not None:
        corpus = meta.get("corpus") or {}
        # RMS statistics come from training text: the checkpoint's own training part when this is
        # its text (and before the scored tail), else the text before the scored tail.
        own_text = corpus.get("fingerprint") == fingerprint(text) and "split" in corpus
        stats_end = (min(corpus["split"], split) if split else corpus["split"]) if own_text else split
        rms = None
        if dynamic.method == "rms":
            if stats_end == 0:
                raise CharlmError("--dynamic-method rms takes its statistics from training text, and this is not "
                                  "the checkpoint's: score a tail with --val-frac (the text before it is used), "
                                  "or use --dynamic-method sgd")
            rms = gradient_rms(state.params, cfg.model, tokens[:stats_end], dynamic.segment, dynamic.stat_segments)
        dyn, adapted = dynamic_nll(state.params, cfg.model, tokens[split:], tokens[:split], dynamic, rms)
        report["dynamic"] = Score.from_nll(dyn).to_dict()
        report["dynamic_settings"] = {**asdict(dynamic), "adapted_chars": adapted}
    return report

