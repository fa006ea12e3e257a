"""A look inside a trained model, for teaching: per char, how surprised the model was, what it
guessed would come next, and every layer's state and gates; which units track a set of
positions (Karpathy, Johnson & Fei-Fei 2015; LSTMVis, Strobelt et al. 2017); how often each
gate saturates. Pure functions over arrays; `charlm.inspect` draws them as a report and
charlm-serve as its Inspect view.

The trace re-runs each cell as the textbook writes it (the activations are what the fast
recurrence in charlm.recurrence does not keep), from the same parameters, in float32 with the
model's matmul precision. Its surprisals follow stream scoring's rule: the first char has no
past and is not scored, so their sum is `charlm.scoring.stream_nll` of the same text (in bits).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from charlm.config import ModelConfig
from charlm.model import MATMUL_DTYPES
from charlm.recurrence import matmul

BUCKET = 512  # texts are padded to a multiple of this, so nearby lengths share one compile
TOP_K = 5
# The activations each cell exposes, in the order its gate block holds them; sigmoid gates are
# the ones whose saturation (below 0.1 or above 0.9) is counted.
GATE_NAMES = {"lstm": ("i", "f", "g", "o"), "gru": ("r", "u", "n"), "rnn": ()}
SIGMOID_GATES = {"lstm": ("i", "f", "o"), "gru": ("r", "u"), "rnn": ()}
LOW, HIGH = 0.1, 0.9


@dataclass(frozen=True)
class Trace:
    """One text read by one model, char by char (N chars).

    surprisal_bits: [N] -log2 p(char t | chars before it); NaN for char 0, which has no past.
    guess_ids, guess_probs: [N, k] the model's k likeliest next chars after reading char t,
      most likely first: row t - 1 is what it expected where char t stands.
    layers: per layer, name -> [N, H]: "h" (and "c" for an LSTM) after char t, and the
      activated gates at char t (GATE_NAMES).
    """

    ids: np.ndarray
    surprisal_bits: np.ndarray
    guess_ids: np.ndarray
    guess_probs: np.ndarray
    layers: tuple[dict[str, np.ndarray], ...]

    @property
    def bits_per_char(self) -> float:
        scored = self.surprisal_bits[1:]
        return float(np.mean(scored)) if len(scored) else math.nan

    def units(self) -> tuple[list[str], np.ndarray]:
        """Every hidden unit's activation over the text: (names like "L1.h17", [N, U]); an LSTM's
        cell state c counts as units too."""
        names, columns = [], []
        for layer, acts in enumerate(self.layers, 1):
            for kind in ("h", "c"):
                if kind in acts:
                    names += [f"L{layer}.{kind}{j}" for j in range(acts[kind].shape[1])]
                    columns.append(acts[kind])
        return names, np.concatenate(columns, axis=1)


def trace(params, cfg: ModelConfig, ids: np.ndarray, top_k: int = TOP_K, bucket: int = BUCKET) -> Trace:
    """Runs the model over `ids` (token ids, [N]) from a zero state. The text is padded to a
    multiple of `bucket` chars (a server that warms up one bucket answers every text up to it)."""
    ids = np.asarray(ids, np.int32)
    n = len(ids)
    padded = np.zeros(-(-max(n, 1) // bucket) * bucket, np.int32)
    padded[:n] = ids
    log_probs, layers = _trace(params, cfg, jnp.asarray(padded))
    log_probs = np.asarray(log_probs)[:n]
    surprisal = np.full(n, np.nan, np.float32)
    surprisal[1:] = -log_probs[np.arange(n - 1), ids[1:]] / math.log(2)
    top = np.argsort(-log_probs, axis=1, kind="stable")[:, :top_k]
    return Trace(ids, surprisal, top, np.exp(np.take_along_axis(log_probs, top, axis=1)),
                 tuple({k: np.asarray(v)[:n] for k, v in layer.items()} for layer in layers))


@functools.partial(jax.jit, static_argnames="cfg")
def _trace(params, cfg: ModelConfig, ids_N):
    V, dtype = cfg.vocab_size, MATMUL_DTYPES[cfg.precision]
    x, layers = None, []
    for layer in range(cfg.layers):
        p = params[f"{cfg.cell}_{layer}"]
        W, b = p["input_kernel"], p["bias"][None, :]
        if layer > 0:
            z_in = x @ W + b
        elif cfg.input_encoding == "onehot":
            z_in = W[ids_N] + b
        elif cfg.input_encoding == "scaled":
            z_in = (ids_N.astype(jnp.float32) / V)[:, None] @ W + b
        else:
            z_in = params["embed"]["embedding"][ids_N] @ W + b
        acts = _CELLS[cfg.cell](z_in, p, cfg.hidden, dtype)
        layers.append(acts)
        x = acts["h"]
    logits = x @ params["output"]["kernel"] + params["output"]["bias"][None, :]
    return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), layers


def _lstm(z_in_NxG, p, H, dtype):
    def step(carry, z_x):
        c, h = carry
        i, f, g, o = jnp.split(z_x + matmul(h, p["recurrent_kernel"], dtype), 4)
        i, f, g, o = jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)
        c = f * c + i * g
        h = o * jnp.tanh(c)
        return (c, h), {"h": h, "c": c, "i": i, "f": f, "g": g, "o": o}
    zero = jnp.zeros(H, jnp.float32)
    return jax.lax.scan(step, (zero, zero), z_in_NxG)[1]


def _gru(z_in_NxG, p, H, dtype):
    def step(h, z_x):
        zh = matmul(h, p["recurrent_kernel"], dtype) + p["recurrent_bias"]
        r, u = jnp.split(jax.nn.sigmoid(z_x[:2 * H] + zh[:2 * H]), 2)
        n = jnp.tanh(z_x[2 * H:] + r * zh[2 * H:])
        h = (1 - u) * n + u * h
        return h, {"h": h, "r": r, "u": u, "n": n}
    return jax.lax.scan(step, jnp.zeros(H, jnp.float32), z_in_NxG)[1]


def _rnn(z_in_NxH, p, H, dtype):
    def step(h, z_x):
        h = jnp.tanh(z_x + matmul(h, p["recurrent_kernel"], dtype))
        return h, {"h": h}
    return jax.lax.scan(step, jnp.zeros(H, jnp.float32), z_in_NxH)[1]


_CELLS = {"lstm": _lstm, "gru": _gru, "rnn": _rnn}


# --- finding units -------------------------------------------------------------------------


@dataclass(frozen=True)
class UnitScore:
    unit: int       # column of the activation matrix
    auc: float      # P(activation at a chosen position > at another one); 0.5: no separation
    effect: float   # Cohen's d: difference of the means over their pooled standard deviation

    @property
    def separation(self) -> float:
        """How well the unit tells the positions apart, either way round: |AUC - 0.5| x 2, in [0, 1]."""
        return abs(self.auc - 0.5) * 2


def auc_per_unit(acts_NxU: np.ndarray, chosen_N: np.ndarray) -> np.ndarray:
    """The area under the ROC curve of each unit as a detector of the chosen positions (ties count
    half): 1.0 when the unit is higher at every chosen position than anywhere else, 0.5 for noise."""
    acts_NxU, chosen_N = np.asarray(acts_NxU, np.float64), np.asarray(chosen_N, bool)
    inside, outside = acts_NxU[chosen_N], np.sort(acts_NxU[~chosen_N], axis=0)
    if len(inside) == 0 or len(outside) == 0:
        raise ValueError("the positions must include some chars and leave out some")
    aucs = np.empty(acts_NxU.shape[1])
    for u in range(acts_NxU.shape[1]):
        below = np.searchsorted(outside[:, u], inside[:, u], side="left")
        up_to = np.searchsorted(outside[:, u], inside[:, u], side="right")
        aucs[u] = (below + up_to).mean() / (2 * len(outside))
    return aucs


def effect_sizes(acts_NxU: np.ndarray, chosen_N: np.ndarray) -> np.ndarray:
    """Cohen's d of each unit between the chosen positions and the rest (0 where both are constant)."""
    acts_NxU, chosen_N = np.asarray(acts_NxU, np.float64), np.asarray(chosen_N, bool)
    a, b = acts_NxU[chosen_N], acts_NxU[~chosen_N]
    pooled = np.sqrt(((len(a) - 1) * a.var(axis=0, ddof=1 if len(a) > 1 else 0)
                      + (len(b) - 1) * b.var(axis=0, ddof=1 if len(b) > 1 else 0)) / max(len(a) + len(b) - 2, 1))
    diff = a.mean(axis=0) - b.mean(axis=0)
    return np.divide(diff, pooled, out=np.zeros_like(diff), where=pooled > 0)


def rank_units(acts_NxU: np.ndarray, chosen_N: np.ndarray, among_N: np.ndarray | None = None,
               top: int = 10) -> list[UnitScore]:
    """The `top` units that best separate the chosen positions from the other ones (only those in
    `among`, when given: vowels among letters), by AUC either way round, then by effect size."""
    acts_NxU, chosen_N = np.asarray(acts_NxU), np.asarray(chosen_N, bool)
    if among_N is not None:
        acts_NxU, chosen_N = acts_NxU[np.asarray(among_N, bool)], chosen_N[np.asarray(among_N, bool)]
    aucs, effects = auc_per_unit(acts_NxU, chosen_N), effect_sizes(acts_NxU, chosen_N)
    order = np.lexsort((-np.abs(effects), -np.abs(aucs - 0.5)))[:top]
    return [UnitScore(int(u), float(aucs[u]), float(effects[u])) for u in order]


# --- ready hypotheses, computed on the text ----------------------------------------------


@dataclass(frozen=True)
class Hypothesis:
    name: str
    chosen: np.ndarray              # [N] bool
    among: np.ndarray | None = None  # [N] bool: compare only within these positions


def hypotheses(text: str) -> list[Hypothesis]:
    """Positions of structure a char model may track, each as a set of chars of `text`. Those that
    the text does not show (no quotes, say) are left out."""
    n = len(text)
    chars = np.array(list(text)) if n else np.array([], str)
    letter = np.array([c.isalpha() for c in text], bool)
    column = np.zeros(n, int)
    line_length = np.zeros(n, int)
    start = 0
    for i, c in enumerate(text + "\n"):
        if c == "\n":
            column[start:i] = np.arange(i - start)
            line_length[start:i + 1 if i < n else i] = i - start
            start = i + 1
    after_newline = np.zeros(n, bool)
    after_newline[1:] = chars[:-1] == "\n"
    word_start = letter.copy()
    word_start[1:] &= ~letter[:-1]
    found = [
        Hypothesis("inside quotes", _between(text, '"', '"') | _between(text, "\u201c", "\u201d")
                   | _between(_single_quotes(text), "\u2018", "\u2019")),
        Hypothesis("inside parentheses", _between(text, "(", ")")),
        Hypothesis("past the middle of the line", (column > line_length / 2) & (chars != "\n")),
        Hypothesis("just after a newline", after_newline),
        Hypothesis("start of a word", word_start),
        Hypothesis("vowel (among letters)", np.isin(chars, list("aeiouAEIOU")), among=letter),
    ]
    return [h for h in found if _two_sided(h)]


def _between(text: str, opening: str, closing: str) -> np.ndarray:
    """Where the reader is inside a pair of marks after reading each char: from the opening mark
    (included) to the closing one (excluded), nesting counted; a mark that both opens and closes
    (a straight quote) toggles."""
    inside, depth = np.zeros(len(text), bool), 0
    for i, c in enumerate(text):
        if c == opening and opening == closing:
            depth = 1 - depth
        elif c == opening:
            depth += 1
        elif c == closing and depth > 0:
            depth -= 1
        inside[i] = depth > 0
    return inside


def _single_quotes(text: str) -> str:
    """The text with each straight single quote that opens or closes a quotation made a curly one
    (Alice's dialogue is 'quoted' so); one between two letters is an apostrophe and stays."""
    chars = list(text)
    for i, c in enumerate(text):
        if c != "'":
            continue
        before = text[i - 1] if i > 0 else " "
        after = text[i + 1] if i + 1 < len(text) else " "
        if before.isalnum() and after.isalnum():
            continue  # don't, that's
        if not before.isalnum() and not after.isspace():
            chars[i] = "\u2018"
        elif not before.isspace() and not after.isalnum():
            chars[i] = "\u2019"
    return "".join(chars)


def _two_sided(h: Hypothesis) -> bool:
    chosen = h.chosen if h.among is None else h.chosen[h.among]
    return 0 < int(chosen.sum()) < len(chosen)


# --- gate saturation -------------------------------------------------------------------


def saturation(tr: Trace, cell: str) -> list[dict[str, dict[str, np.ndarray]]]:
    """Per layer, per sigmoid gate: each unit's share of chars with the gate below 0.1 ("low") and
    above 0.9 ("high"), [H] each (Karpathy, Johnson & Fei-Fei 2015, fig. 3)."""
    return [{g: {"low": (acts[g] < LOW).mean(axis=0), "high": (acts[g] > HIGH).mean(axis=0)}
             for g in SIGMOID_GATES[cell]} for acts in tr.layers]
