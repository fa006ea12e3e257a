"""The char-LSTM: input encoding -> stacked LSTM layers (each + dropout) -> Dense vocab logits.

One module serves both uses of the same parameters: a forward pass over a whole window
from a zero (or given) state, and single steps with an explicit carry for the sampler
(a window of length 1). Softmax lives in the loss and the sampler, not here.

The recurrent layer is the textbook LSTM cell (Keras gate order i, f, g, o; forget-gate bias
initialised to 1 as Keras' `unit_forget_bias`), with the four gates fused into one matmul:
  z_t = x_t W + h_{t-1} U + b;  i, f, g, o = split(z_t)
  c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g);  h_t = sigmoid(o) * tanh(c_t)
Arrays are time-major inside ([T, B, ...]) because the scan runs over time. Both cells run in
`charlm.recurrence`, whose hand-written backward passes are what make a train step fast on
CPU. One-hot inputs are a row lookup of W done here for all T steps; float inputs (the
tutorial's scalar, an embedding, a lower layer's h) are projected step by step inside it.

The regularisers (variational dropout, DropConnect on U, embedding dropout) all act on the
recurrence's inputs and kernels, outside its custom backward pass: autodiff carries their
masks, and the hand-written gradient of the recurrence itself is unchanged.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from charlm.config import ModelConfig
from charlm.recurrence import gru_recurrence, lstm_recurrence, rnn_recurrence

# One (c, h) pair per layer, each [B, H].
Carry = tuple[tuple[jax.Array, jax.Array], ...]


def zero_carry(cfg: ModelConfig, batch_size: int, dtype: Any = jnp.float32) -> Carry:
    zeros = jnp.zeros((batch_size, cfg.hidden), dtype)
    return tuple((zeros, zeros) for _ in range(cfg.layers))


def _forget_bias_init(hidden: int):
    def init(key, shape, dtype=jnp.float32):
        return jnp.zeros(shape, dtype).at[hidden:2 * hidden].set(1.0)
    return init


GATES = {"lstm": 4, "gru": 3, "rnn": 1}  # blocks per cell: i, f, g, o; r, u, n; the tanh RNN's one
MATMUL_DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}  # ModelConfig.precision -> recurrent matmul dtype
# Float inputs with at least this many features are projected for all steps before the recurrence.
PROJECT_AHEAD_MIN_FEATURES = 16


class RecurrentLayer(nn.Module):
    """One LSTM (or GRU, or tanh RNN) layer scanned over time.

    Attributes:
      hidden: units H.
      cell: "lstm", "gru" or "rnn".
      lookup: the inputs are int ids and x_t W is the row W[id] (one-hot input, without
        building the one-hot vectors); otherwise they are float features [T, B, D].
    """

    hidden: int
    cell: str = "lstm"
    lookup: bool = False
    dtype: Any = jnp.float32
    matmul_dtype: Any = None  # None: dtype; jnp.bfloat16: bf16 recurrent matmuls

    weight_drop: float = 0.0  # DropConnect on the recurrent kernel while training

    @nn.compact
    def __call__(self, x_TxB_, carry, mask_TxB=None, scale_TxB=None, *, in_features: int,
                 deterministic: bool = True):
        """Runs the layer; `scale_TxB` multiplies each step's input projection (input dropout
        on one-hot ids). Returns (final carry, h [T, B, H])."""
        H = self.hidden
        gates = GATES[self.cell]
        bias_init = _forget_bias_init(H) if self.cell == "lstm" else nn.initializers.zeros
        W_DxGH = self.param("input_kernel", nn.initializers.glorot_uniform(), (in_features, gates * H), self.dtype)
        U_HxGH = self.param("recurrent_kernel", nn.initializers.orthogonal(), (H, gates * H), self.dtype)
        b_GH = self.param("bias", bias_init, (gates * H,), self.dtype)
        if self.cell == "gru":  # the recurrent bias sits inside r * (h U + b_h), so it is separate
            bh_GH = self.param("recurrent_bias", nn.initializers.zeros, (gates * H,), self.dtype)

        if self.weight_drop > 0 and not deterministic:
            # DropConnect (AWD-LSTM): one mask over U per batch, applied before the recurrence, so
            # its hand-written backward pass sees an ordinary kernel and autodiff masks dU.
            keep = jax.random.bernoulli(self.make_rng("dropout"), 1 - self.weight_drop, U_HxGH.shape)
            U_HxGH = U_HxGH * keep.astype(U_HxGH.dtype) / (1 - self.weight_drop)

        # One-hot ids are a row lookup of W done here for all steps (scaled by input dropout),
        # passed in pre-projected. Wide float inputs (a lower layer's h, an embedding) are
        # projected here too, as one [T*B, D] x [D, G] matmul, as oneDNN and cuDNN do; the few
        # features of the scaled encoding are projected inside the recurrence's step, where the
        # product fuses into its elementwise pass.
        if self.lookup:
            x_TxB_ = W_DxGH[x_TxB_]
            if scale_TxB is not None:
                x_TxB_ = x_TxB_ * scale_TxB[..., None]
            x_TxB_, W_DxGH, b_GH = x_TxB_ + b_GH[None, None, :], None, None
        elif in_features >= PROJECT_AHEAD_MIN_FEATURES:
            x_TxB_, W_DxGH, b_GH = x_TxB_ @ W_DxGH + b_GH[None, None, :], None, None
        c0, h0 = carry
        if self.cell == "lstm":
            return lstm_recurrence(x_TxB_, W_DxGH, b_GH, U_HxGH, c0, h0, mask_TxB, self.matmul_dtype)
        if self.cell == "gru":
            h, hs = gru_recurrence(x_TxB_, W_DxGH, b_GH, U_HxGH, bh_GH, h0, mask_TxB, self.matmul_dtype)
        else:
            h, hs = rnn_recurrence(x_TxB_, W_DxGH, b_GH, U_HxGH, h0, mask_TxB, self.matmul_dtype)
        return (h, h), hs  # a GRU or RNN has no cell state; the carry's c slot mirrors h


class CharLSTM(nn.Module):
    """The tutorial's network, generalised to `layers` x LSTM(`hidden`) and three input encodings.

    Attributes:
      config: the ModelConfig (vocab_size must be set).
      dtype: compute and parameter dtype (float32; float64 in the reference tests).
    """

    config: ModelConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, ids_BxT, carry: Carry | None = None, *, deterministic: bool = True,
                 last_only: bool = False, mask_BxT=None):
        """Runs the network over a window.

        Args:
          ids_BxT: int token ids [B, T].
          carry: per-layer (c, h) state to start from; zeros when None.
          deterministic: False applies dropout (needs a 'dropout' rng).
          last_only: return logits for the last position only ([B, V]), as the tutorial's
            objective needs; saves the Dense over the other T-1 positions.
          mask_BxT: optional bool mask; where False the state is carried through unchanged.
        Returns:
          (logits [B, T, V] or [B, V], final carry).
        """
        cfg = self.config
        H, V = cfg.hidden, cfg.vocab_size
        if carry is None:
            carry = zero_carry(cfg, ids_BxT.shape[0], self.dtype)
        ids_TxB = ids_BxT.T
        mask_TxB = None if mask_BxT is None else mask_BxT.T
        if cfg.input_encoding == "scaled":  # the tutorial: one float feature, id / vocab
            x, features, lookup = (ids_TxB.astype(self.dtype) / V)[..., None], 1, False
        elif cfg.input_encoding == "onehot":  # one-hot @ W is a row lookup: same math, no matmul
            x, features, lookup = ids_TxB, V, True
        else:  # a learned embedding
            embed = nn.Embed(V, cfg.embed_dim, dtype=self.dtype, param_dtype=self.dtype, name="embed")
            x, features, lookup = embed(ids_TxB), cfg.embed_dim, False

        scale_TxB = None
        if cfg.embed_dropout > 0 and not deterministic:
            # Embedding dropout (AWD-LSTM): a char's row dropped for the whole batch is the same as
            # zeroing its input wherever it occurs, so the kept rows are rescaled by id here.
            keep_V = jax.random.bernoulli(self.make_rng("dropout"), 1 - cfg.embed_dropout, (V,))
            scale_TxB = (keep_V.astype(self.dtype) / (1 - cfg.embed_dropout))[ids_TxB]
            if not lookup:
                x, scale_TxB = x * scale_TxB[..., None], None
        # Variational dropout (Gal & Ghahramani): one mask per sequence, broadcast over time (axis 0).
        over_time = (0,) if cfg.variational else ()
        if cfg.input_dropout > 0 and not deterministic:  # tutorial extension 6: dropout on the inputs
            if lookup:  # dropping a one-hot vector = zeroing (and rescaling) its row of x W
                keep_shape = (ids_TxB.shape[1], V) if cfg.variational else ids_TxB.shape
                keep = jax.random.bernoulli(self.make_rng("dropout"), 1 - cfg.input_dropout, keep_shape)
                if cfg.variational:  # sequence b drops the same input ids at every step
                    keep = jnp.take_along_axis(keep, ids_TxB.T, axis=1).T
                kept = keep.astype(self.dtype) / (1 - cfg.input_dropout)
                scale_TxB = kept if scale_TxB is None else scale_TxB * kept
            else:
                x = nn.Dropout(cfg.input_dropout, broadcast_dims=over_time, deterministic=False,
                               name="input_dropout")(x)

        new_carry = []
        for layer in range(cfg.layers):
            rnn = RecurrentLayer(H, cfg.cell, lookup=lookup and layer == 0, dtype=self.dtype,
                                 matmul_dtype=MATMUL_DTYPES[cfg.precision], weight_drop=cfg.weight_drop,
                                 name=f"{cfg.cell}_{layer}")
            layer_carry, x = rnn(x, carry[layer], mask_TxB, scale_TxB if layer == 0 else None,
                                 in_features=features if layer == 0 else H, deterministic=deterministic)
            new_carry.append(layer_carry)
            if last_only and layer == cfg.layers - 1:
                x = x[-1]
            # between layers and before the Dense; a last-only [B, H] has no time axis to share over
            x = nn.Dropout(cfg.dropout, broadcast_dims=over_time if x.ndim == 3 else (),
                           deterministic=deterministic)(x)
        logits = nn.Dense(V, dtype=self.dtype, param_dtype=self.dtype, name="output")(x)
        return (logits if last_only else jnp.swapaxes(logits, 0, 1)), tuple(new_carry)


def init_params(cfg: ModelConfig, rng: jax.Array, dtype: Any = jnp.float32):
    """Fresh parameters for `cfg` (a [1, 1] dummy input fixes every shape)."""
    return CharLSTM(cfg, dtype).init(rng, jnp.zeros((1, 1), jnp.int32))["params"]
