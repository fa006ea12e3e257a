"""The LSTM, GRU and tanh RNN recurrences over a whole window, with hand-written backward passes.

`lstm_recurrence(x, W, b, U, c0, h0, mask)` runs
  z_t = x_t W + b + h_{t-1} U;  i, f, g, o = sigmoid, sigmoid, tanh, sigmoid of split(z_t)
  c_t = f * c_{t-1} + i * g;  h_t = o * tanh(c_t)
for t = 0..T-1. (With W None, x is already x W + b: one-hot inputs are a row lookup.)

Why not let JAX differentiate the scan: on a 2-core CPU, autodiff's backward of the step
costs about three times its forward. It re-evaluates sigmoids, accumulates dU = sum_t
h_{t-1}^T dz_t one small [H, 4H] matmul per step inside the loop, and writes many
per-step temporaries. Here the forward scan saves the gate activations; the backward scan
does only dz_t and dz_t U^T per step; the weight gradients dU, dW are each one large matmul
over all T * B rows after the loop.

Sigmoids are computed as 0.5 * tanh(0.5 x) + 0.5, one tanh over the whole [B, 4H] gate
block. This is identical mathematically, and XLA's CPU logistic is much slower than its tanh.
The gate activations and their derivatives are each one elementwise pass over the block with
per-column constants, not per-gate slices: XLA:CPU runs each per-gate piece as a kernel of its
own, and a step's kernels are launched 100 times per window (about 7 % of a seed-small step).

`matmul_dtype=bfloat16` runs the recurrent matmuls in bfloat16 with float32 accumulation.
The state, the gates and the loss stay float32. CPUs with AVX512-BF16 and GPUs run those
matmuls 2-3x faster.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def _cast(a, dtype):
    """`a` in the matmul dtype (None: as it is). Kernels are cast once, before a loop."""
    return a if dtype is None else a.astype(dtype)


def matmul(a, b, dtype):
    """a @ b with the operands in the matmul dtype and a float32 result (None: as they are)."""
    if dtype is None:
        return a @ b
    return jnp.dot(_cast(a, dtype), _cast(b, dtype), preferred_element_type=jnp.float32)


def _gate_constants(hidden: int, dtype) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-column constants over the [i, f, g, o] gate block, so the activations and the
    derivatives are each one elementwise pass over the whole block:
      scale, shift: gates = tanh(scale * z) * scale + shift is sigmoid(z) for i, f, o
        (scale 0.5, shift 0.5) and tanh(z) for g (scale 1, shift 0);
      bump: a gate's derivative is (1 - gate) * (gate + bump): sigmoid' = s (1 - s) (bump 0),
        tanh' = 1 - g^2 = (1 - g) (1 + g) (bump 1)."""
    def block(sigmoid_value, tanh_value):
        s, t = jnp.full((hidden,), sigmoid_value, dtype), jnp.full((hidden,), tanh_value, dtype)
        return jnp.concatenate([s, s, t, s])[None, :]
    return block(0.5, 1.0), block(0.5, 0.0), block(0.0, 1.0)


def _input_part(x_TxBxD, W_Dx4H, b_4H):
    return x_TxBxD if W_Dx4H is None else x_TxBxD @ W_Dx4H + b_4H[None, :]


def _forward(x_TxBxD, W_Dx4H, b_4H, U_Hx4H, c0_BxH, h0_BxH, mask_TxB, matmul_dtype):
    """The recurrence; returns ((h [T, B, H], final c, final h), residuals for the backward pass)."""
    H = U_Hx4H.shape[0]
    scale, shift, _ = _gate_constants(H, x_TxBxD.dtype)
    U = _cast(U_Hx4H, matmul_dtype)

    def step(carry, inputs):
        c, h = carry
        x_t, m_t = inputs
        z = _input_part(x_t, W_Dx4H, b_4H) + matmul(h, U, matmul_dtype)
        gates = jnp.tanh(z * scale) * scale + shift  # [i, f, g, o], activated
        i, f, g, o = jnp.split(gates, 4, axis=-1)
        new_c = f * c + i * g
        tanh_c = jnp.tanh(new_c)
        new_h = o * tanh_c
        if m_t is not None:  # masked steps leave the state as it was
            keep = m_t[:, None]
            new_c, new_h = jnp.where(keep, new_c, c), jnp.where(keep, new_h, h)
        return (new_c, new_h), (new_h, h, c, gates, tanh_c)

    (c, h), (hs, h_prev, c_prev, gates, tanh_cs) = jax.lax.scan(step, (c0_BxH, h0_BxH), (x_TxBxD, mask_TxB))
    return (hs, c, h), (x_TxBxD, W_Dx4H, U_Hx4H, h_prev, c_prev, gates, tanh_cs, mask_TxB)


def _backward(matmul_dtype, residuals, cotangents):
    x_TxBxD, W_Dx4H, U_Hx4H, h_prev, c_prev, gates, tanh_cs, mask_TxB = residuals
    dhs, dc_last, dh_last = cotangents
    Ut = _cast(U_Hx4H.T, matmul_dtype)
    _, _, bump = _gate_constants(U_Hx4H.shape[0], gates.dtype)

    def step(carry, inputs):
        dc_in, dh_in = carry  # gradients flowing into this step's output state
        dh_t, c_p, gate, tanh_c, m_t = inputs
        i, f, g, o = jnp.split(gate, 4, axis=-1)
        dh = dh_in + dh_t
        dc = dc_in + dh * o * (1 - tanh_c * tanh_c)
        # d loss / d gate for [i, f, g, o] is [dc g, dc c_prev, dc i, dh tanh(c)]; times each
        # gate's derivative, as one elementwise pass over the block.
        upstream = jnp.concatenate([dc * g, dc * c_p, dc * i, dh * tanh_c], axis=-1)
        dz = upstream * (1 - gate) * (gate + bump)
        dc_prev = dc * f
        if m_t is not None:  # a masked step passed its input state straight through
            keep = m_t[:, None]
            dz = jnp.where(keep, dz, 0)
            dc_prev = jnp.where(keep, dc_prev, dc_in)
            return (dc_prev, jnp.where(keep, matmul(dz, Ut, matmul_dtype), dh)), dz
        return (dc_prev, matmul(dz, Ut, matmul_dtype)), dz

    (dc0, dh0), dz_TxBx4H = jax.lax.scan(step, (dc_last, dh_last), (dhs, c_prev, gates, tanh_cs, mask_TxB),
                                         reverse=True)
    dU = _recurrent_weight_grad(h_prev, dz_TxBx4H, matmul_dtype).astype(U_Hx4H.dtype)
    return (*_input_grads(x_TxBxD, W_Dx4H, dz_TxBx4H), dU, dc0, dh0, _mask_grad(mask_TxB))


def _recurrent_weight_grad(h_prev_TxBxH, dz_TxBxG, matmul_dtype):
    """sum_t h_{t-1}^T dz_t as one matmul over all T * B rows. The forward scan saved each step's
    incoming h for this: pairing the output sequence with dz shifted by one step would copy both
    (slices of the stacks, 65 MB a seed-small step)."""
    H, G = h_prev_TxBxH.shape[-1], dz_TxBxG.shape[-1]
    return matmul(h_prev_TxBxH.reshape(-1, H).T, dz_TxBxG.reshape(-1, G), matmul_dtype)


def _input_grads(x_TxBxD, W_DxG, dz_TxBxG):
    """(dx, dW, db) of the input part x W + b, given its stacked gradient dz."""
    if W_DxG is None:  # the caller projected the input: its gradient is dz itself
        return dz_TxBxG, None, None
    (T, B, G), D = dz_TxBxG.shape, W_DxG.shape[0]
    dW = x_TxBxD.reshape(-1, D).T @ dz_TxBxG.reshape(-1, G)
    dx = (dz_TxBxG.reshape(-1, G) @ W_DxG.T).reshape(T, B, D)
    return dx, dW, dz_TxBxG.sum(axis=(0, 1))


def _mask_grad(mask_TxB):
    return None if mask_TxB is None else jnp.zeros(mask_TxB.shape, jax.dtypes.float0)


def _with_backward(forward, backward, matmul_dtype_at: int = 7):
    """forward's outputs as a function whose gradient is `backward` (the last argument, the
    matmul dtype at position `matmul_dtype_at`, is static)."""
    run = jax.custom_vjp(lambda *args: forward(*args)[0], nondiff_argnums=(matmul_dtype_at,))
    run.defvjp(forward, backward)
    return run


_recurrence = _with_backward(_forward, _backward)


def lstm_recurrence(x_TxBxD: jax.Array, W_Dx4H: jax.Array | None, b_4H: jax.Array | None, U_Hx4H: jax.Array,
                    c0_BxH: jax.Array, h0_BxH: jax.Array, mask_TxB: jax.Array | None = None,
                    matmul_dtype: Any = None):
    """Runs the LSTM over T steps.

    Args:
      x_TxBxD: the inputs; with W_Dx4H None, already the input part of the gates (x W + b, from
        a row lookup), so D = 4H.
      W_Dx4H, b_4H: the input kernel and bias (gate order i, f, g, o), applied step by step:
        for small D that is cheaper than materialising x W for all steps.
      U_Hx4H: the recurrent kernel.
      c0_BxH, h0_BxH: the state to start from.
      mask_TxB: optional bool; where False the step leaves the state unchanged.
      matmul_dtype: None (the parameters' dtype) or jnp.bfloat16 for the recurrent matmuls.
    Returns:
      (h for every step [T, B, H], (final c, final h)).
    """
    hs, c, h = _recurrence(x_TxBxD, W_Dx4H, b_4H, U_Hx4H, c0_BxH, h0_BxH, mask_TxB, matmul_dtype)
    return (c, h), hs


# --- GRU (cuDNN / char-rnn form): the reset gate scales the recurrent part of the candidate ---
#   zx = x W + b, zh = h U + b_h (each split r, u, n);  r, u = sigmoid(zx_ru + zh_ru)
#   n = tanh(zx_n + r * zh_n);  h' = (1 - u) * n + u * h


def _gru_forward(x_TxBxD, W_Dx3H, b_3H, U_Hx3H, bh_3H, h0_BxH, mask_TxB, matmul_dtype):
    H = U_Hx3H.shape[0]
    U = _cast(U_Hx3H, matmul_dtype)

    def step(h, inputs):
        x_t, m_t = inputs
        zx = _input_part(x_t, W_Dx3H, b_3H)
        zh = matmul(h, U, matmul_dtype) + bh_3H[None, :]
        a = jnp.tanh(0.5 * (zx[:, :2 * H] + zh[:, :2 * H]))  # sigmoid(v) = 0.5 tanh(v / 2) + 0.5
        r, u = jnp.split(0.5 * a + 0.5, 2, axis=-1)
        hn = zh[:, 2 * H:]
        n = jnp.tanh(zx[:, 2 * H:] + r * hn)
        new_h = (1 - u) * n + u * h
        if m_t is not None:
            new_h = jnp.where(m_t[:, None], new_h, h)
        return new_h, (new_h, h, jnp.concatenate([r, u, n, hn], axis=-1))

    h, (hs, h_prev, saved) = jax.lax.scan(step, h0_BxH, (x_TxBxD, mask_TxB))
    return (hs, h), (x_TxBxD, W_Dx3H, U_Hx3H, h_prev, saved, mask_TxB)


def _gru_backward(matmul_dtype, residuals, cotangents):
    x_TxBxD, W_Dx3H, U_Hx3H, h_prev, saved, mask_TxB = residuals
    dhs, dh_last = cotangents
    Ut = _cast(U_Hx3H.T, matmul_dtype)

    def step(dh_in, inputs):
        dh_t, h_p, s, m_t = inputs
        r, u, n, hn = jnp.split(s, 4, axis=-1)
        dh = dh_in + dh_t
        dan = dh * (1 - u) * (1 - n * n)
        dar = dan * hn * r * (1 - r)
        dau = dh * (h_p - n) * u * (1 - u)
        dzx = jnp.concatenate([dar, dau, dan], axis=-1)
        dzh = jnp.concatenate([dar, dau, dan * r], axis=-1)
        dh_prev = dh * u + matmul(dzh, Ut, matmul_dtype)
        if m_t is not None:  # a masked step passed its input state straight through
            keep = m_t[:, None]
            dzx, dzh, dh_prev = jnp.where(keep, dzx, 0), jnp.where(keep, dzh, 0), jnp.where(keep, dh_prev, dh)
        return dh_prev, (dzx, dzh)

    dh0, (dzx, dzh) = jax.lax.scan(step, dh_last, (dhs, h_prev, saved, mask_TxB), reverse=True)
    dU = _recurrent_weight_grad(h_prev, dzh, matmul_dtype).astype(U_Hx3H.dtype)
    return (*_input_grads(x_TxBxD, W_Dx3H, dzx), dU, dzh.sum(axis=(0, 1)), dh0, _mask_grad(mask_TxB))


_gru = _with_backward(_gru_forward, _gru_backward)


def gru_recurrence(x_TxBxD: jax.Array, W_Dx3H: jax.Array | None, b_3H: jax.Array | None, U_Hx3H: jax.Array,
                   bh_3H: jax.Array, h0_BxH: jax.Array, mask_TxB: jax.Array | None = None,
                   matmul_dtype: Any = None):
    """Runs the GRU over T steps, with the same conventions as `lstm_recurrence` (gate order r, u, n;
    `bh_3H` is the recurrent bias, inside the reset gate's product). Returns (final h, h [T, B, H])."""
    hs, h = _gru(x_TxBxD, W_Dx3H, b_3H, U_Hx3H, bh_3H, h0_BxH, mask_TxB, matmul_dtype)
    return h, hs


# --- Vanilla RNN (Elman; char-rnn's `rnn`): h' = tanh(x W + b + h U) ---


def _rnn_forward(x_TxBxD, W_DxH, b_H, U_HxH, h0_BxH, mask_TxB, matmul_dtype):
    U = _cast(U_HxH, matmul_dtype)

    def step(h, inputs):
        x_t, m_t = inputs
        new_h = jnp.tanh(_input_part(x_t, W_DxH, b_H) + matmul(h, U, matmul_dtype))
        if m_t is not None:
            new_h = jnp.where(m_t[:, None], new_h, h)
        return new_h, (new_h, h)

    h, (hs, h_prev) = jax.lax.scan(step, h0_BxH, (x_TxBxD, mask_TxB))
    return (hs, h), (x_TxBxD, W_DxH, U_HxH, hs, h_prev, mask_TxB)


def _rnn_backward(matmul_dtype, residuals, cotangents):
    x_TxBxD, W_DxH, U_HxH, hs, h_prev, mask_TxB = residuals
    dhs, dh_last = cotangents
    Ut = _cast(U_HxH.T, matmul_dtype)

    def step(dh_in, inputs):
        dh_t, h_t, m_t = inputs
        dz = (dh_in + dh_t) * (1 - h_t * h_t)
        if m_t is not None:  # a masked step passed its input state straight through
            keep = m_t[:, None]
            dz = jnp.where(keep, dz, 0)
            return jnp.where(keep, matmul(dz, Ut, matmul_dtype), dh_in + dh_t), dz
        return matmul(dz, Ut, matmul_dtype), dz

    dh0, dz_TxBxH = jax.lax.scan(step, dh_last, (dhs, hs, mask_TxB), reverse=True)
    dU = _recurrent_weight_grad(h_prev, dz_TxBxH, matmul_dtype).astype(U_HxH.dtype)
    return (*_input_grads(x_TxBxD, W_DxH, dz_TxBxH), dU, dh0, _mask_grad(mask_TxB))


_rnn = _with_backward(_rnn_forward, _rnn_backward, matmul_dtype_at=6)


def rnn_recurrence(x_TxBxD: jax.Array, W_DxH: jax.Array | None, b_H: jax.Array | None, U_HxH: jax.Array,
                   h0_BxH: jax.Array, mask_TxB: jax.Array | None = None, matmul_dtype: Any = None):
    """Runs the tanh RNN over T steps, with the same conventions as `lstm_recurrence` (one gate
    block: G = H). Returns (final h, h [T, B, H])."""
    hs, h = _rnn(x_TxBxD, W_DxH, b_H, U_HxH, h0_BxH, mask_TxB, matmul_dtype)
    return h, hs
