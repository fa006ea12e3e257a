"""The char-LSTM: input encoding -> stacked LSTM layers (each + dropout) -> Dense vocab logits.

One module serves both uses of the same parameters: a forward pass over a whole window
from a zero (or given) state, and single steps with an explicit carry for the sampler
(a window of length 1). Softmax lives in the loss and the sampler, not here.

The LSTM layer is the textbook cell (Keras gate order i, f, g, o; forget-gate bias
initialised to 1 as Keras' `unit_forget_bias`), with the four gates fused into one matmul:
  z_t = x_t W + h_{t-1} U + b;  i, f, g, o = split(z_t)
  c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g);  h_t = sigmoid(o) * tanh(c_t)
Arrays are time-major inside ([T, B, ...]) because the scan runs over time. The input
projection x_t W stays inside the scan: hoisting it out for all T steps at once was 35 %
slower per train step on a 2-core CPU (it materialises [T, B, 4H] twice in the backward
pass), measured with the tutorial's net at batch 128.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import flax.linen as nn

from charlm.config import ModelConfig

# One (c, h) pair per layer, each [B, H].
Carry = tuple[tuple[jax.Array, jax.Array], ...]


def zero_carry(cfg: ModelConfig, batch_size: int, dtype: Any = jnp.float32) -> Carry:
    zeros = jnp.zeros((batch_size, cfg.hidden), dtype)
    return tuple((zeros, zeros) for _ in range(cfg.layers))


def _forget_bias_init(hidden: int):
    def init(key, shape, dtype=jnp.float32):
        return jnp.zeros(shape, dtype).at[hidden:2 * hidden].set(1.0)
    return init


class LSTMLayer(nn.Module):
    """One LSTM layer scanned over time.

    Attributes:
      hidden: units H.
      lookup: the inputs are int ids and x_t W is the row W[id] (one-hot input, without
        building the one-hot vectors); otherwise they are float features [T, B, D].
    """

    hidden: int
    lookup: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_TxB_, carry, mask_TxB=None, *, in_features: int):
        H = self.hidden
        W_Dx4H = self.param("input_kernel", nn.initializers.glorot_uniform(), (in_features, 4 * H), self.dtype)
        U_Hx4H = self.param("recurrent_kernel", nn.initializers.orthogonal(), (H, 4 * H), self.dtype)
        b_4H = self.param("bias", _forget_bias_init(H), (4 * H,), self.dtype)

        def step(carry, inputs):
            c_BxH, h_BxH = carry
            x_B_, m_B = inputs
            xw_Bx4H = W_Dx4H[x_B_] if self.lookup else x_B_ @ W_Dx4H
            z = xw_Bx4H + h_BxH @ U_Hx4H + b_4H[None, :]
            i, f, g, o = jnp.split(z, 4, axis=-1)
            new_c = jax.nn.sigmoid(f) * c_BxH + jax.nn.sigmoid(i) * jnp.tanh(g)
            new_h = jax.nn.sigmoid(o) * jnp.tanh(new_c)
            if m_B is not None:  # masked steps leave the state as it was
                keep = m_B[:, None]
                new_c, new_h = jnp.where(keep, new_c, c_BxH), jnp.where(keep, new_h, h_BxH)
            return (new_c, new_h), new_h

        return jax.lax.scan(step, carry, (x_TxB_, mask_TxB))


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

        new_carry = []
        for layer in range(cfg.layers):
            lstm = LSTMLayer(H, lookup=lookup and layer == 0, dtype=self.dtype, name=f"lstm_{layer}")
            layer_carry, x = lstm(x, carry[layer], mask_TxB, in_features=features if layer == 0 else H)
            new_carry.append(layer_carry)
            if last_only and layer == cfg.layers - 1:
                x = x[-1]
            x = nn.Dropout(cfg.dropout, deterministic=deterministic)(x)
        logits = nn.Dense(V, dtype=self.dtype, param_dtype=self.dtype, name="output")(x)
        return (logits if last_only else jnp.swapaxes(logits, 0, 1)), tuple(new_carry)


def init_params(cfg: ModelConfig, rng: jax.Array, dtype: Any = jnp.float32):
    """Fresh parameters for `cfg` (a [1, 1] dummy input fixes every shape)."""
    return CharLSTM(cfg, dtype).init(rng, jnp.zeros((1, 1), jnp.int32))["params"]
