"""The hand-written LSTM, GRU and tanh RNN backward passes against JAX autodiff of the textbook steps, in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from charlm.recurrence import gru_recurrence, lstm_recurrence, rnn_recurrence

T, B, D, H = 6, 3, 2, 5  # every size differs, so a swapped axis cannot pass


def textbook(x, W, b, U, c0, h0, mask):
    """The LSTM step as written in the papers (jax.nn.sigmoid), for autodiff to differentiate."""
    def step(carry, inputs):
        c, h = carry
        x_t, m_t = inputs
        z = (x_t if W is None else x_t @ W + b[None, :]) + h @ U
        i, f, g, o = jnp.split(z, 4, axis=-1)
        new_c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        new_h = jax.nn.sigmoid(o) * jnp.tanh(new_c)
        if m_t is not None:
            new_c, new_h = jnp.where(m_t[:, None], new_c, c), jnp.where(m_t[:, None], new_h, h)
        return (new_c, new_h), new_h
    return jax.lax.scan(step, (c0, h0), (x, mask))


def textbook_gru(x, W, b, U, bh, h0, mask):
    """The GRU step as cuDNN / char-rnn write it (reset gate inside the candidate's recurrent product)."""
    def step(h, inputs):
        x_t, m_t = inputs
        zx = x_t if W is None else x_t @ W + b[None, :]
        zh = h @ U + bh[None, :]
        (xr, xu, xn), (hr, hu, hn) = jnp.split(zx, 3, axis=-1), jnp.split(zh, 3, axis=-1)
        r, u = jax.nn.sigmoid(xr + hr), jax.nn.sigmoid(xu + hu)
        new_h = (1 - u) * jnp.tanh(xn + r * hn) + u * h
        if m_t is not None:
            new_h = jnp.where(m_t[:, None], new_h, h)
        return new_h, new_h
    return jax.lax.scan(step, h0, (x, mask))


def textbook_rnn(x, W, b, U, h0, mask):
    """The Elman RNN step, h' = tanh(x W + b + h U)."""
    def step(h, inputs):
        x_t, m_t = inputs
        new_h = jnp.tanh((x_t if W is None else x_t @ W + b[None, :]) + h @ U)
        if m_t is not None:
            new_h = jnp.where(m_t[:, None], new_h, h)
        return new_h, new_h
    return jax.lax.scan(step, h0, (x, mask))


def inputs(projected: bool, masked: bool, gates: int = 4):
    keys = jax.random.split(jax.random.key(0), 8)
    D_in = gates * H if projected else D
    x = jax.random.normal(keys[0], (T, B, D_in), jnp.float64)
    W = None if projected else jax.random.normal(keys[1], (D, gates * H), jnp.float64)
    b = None if projected else 0.5 * jax.random.normal(keys[2], (gates * H,), jnp.float64)
    U = 0.5 * jax.random.normal(keys[3], (H, gates * H), jnp.float64)
    c0 = jax.random.normal(keys[4], (B, H), jnp.float64)
    h0 = jax.random.normal(keys[5], (B, H), jnp.float64)
    mask = jax.random.bernoulli(keys[6], 0.6, (T, B)) if masked else None
    return x, W, b, U, c0, h0, mask


def weighted_sum(run, args, mask, matmul_dtype=None):
    """A loss that touches every output (all h, final c and h) with different weights."""
    (c, h), hs = run(*args, mask, **({} if matmul_dtype is None else {"matmul_dtype": matmul_dtype}))
    r = jax.random.normal(jax.random.key(1), hs.shape, hs.dtype)
    return jnp.sum(hs * r) + jnp.sum(jnp.sin(c)) + jnp.sum(h * h)


@pytest.mark.parametrize("projected", [False, True], ids=["x@W-inside", "pre-projected"])
@pytest.mark.parametrize("masked", [False, True], ids=["no-mask", "mask"])
def test_gradients_match_autodiff_of_textbook_step(projected, masked):
    with jax.enable_x64(True):
        x, W, b, U, c0, h0, mask = inputs(projected, masked)
        args = (x, W, b, U, c0, h0) if not projected else (x, U, c0, h0)
        ours = lambda *a: weighted_sum(lstm_recurrence, a if not projected else (a[0], None, None, *a[1:]), mask)
        ref = lambda *a: weighted_sum(textbook, a if not projected else (a[0], None, None, *a[1:]), mask)
        argnums = tuple(range(len(args)))
        value, grads = jax.value_and_grad(ours, argnums)(*args)
        ref_value, ref_grads = jax.value_and_grad(ref, argnums)(*args)
    np.testing.assert_allclose(value, ref_value, rtol=1e-12)
    for g, rg in zip(grads, ref_grads):
        np.testing.assert_allclose(np.asarray(g), np.asarray(rg), rtol=1e-9, atol=1e-12)


def check_single_state_cell(ours, textbook_cell, gates: int, projected: bool, masked: bool, extra=()):
    """A cell whose state is h alone (GRU, RNN): its gradients against autodiff of the textbook step.
    `extra`: parameters between U and h0 (the GRU's recurrent bias)."""
    with jax.enable_x64(True):
        x, W, b, U, _, h0, mask = inputs(projected, masked, gates=gates)
        r = jax.random.normal(jax.random.key(1), (T, B, H), jnp.float64)

        def loss(run, *a):
            h, hs = run(*a, mask)
            return jnp.sum(hs * r) + jnp.sum(jnp.sin(h))
        args = (x, W, b, U, *extra, h0) if not projected else (x, U, *extra, h0)
        full = (lambda a: a) if not projected else (lambda a: (a[0], None, None, *a[1:]))
        argnums = tuple(range(len(args)))
        value, grads = jax.value_and_grad(lambda *a: loss(ours, *full(a)), argnums)(*args)
        ref_value, ref_grads = jax.value_and_grad(lambda *a: loss(textbook_cell, *full(a)), argnums)(*args)
    np.testing.assert_allclose(value, ref_value, rtol=1e-12)
    for g, rg in zip(grads, ref_grads):
        np.testing.assert_allclose(np.asarray(g), np.asarray(rg), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("projected", [False, True], ids=["x@W-inside", "pre-projected"])
@pytest.mark.parametrize("masked", [False, True], ids=["no-mask", "mask"])
def test_gru_gradients_match_autodiff_of_textbook_step(projected, masked):
    with jax.enable_x64(True):
        bh = 0.3 * jax.random.normal(jax.random.key(7), (3 * H,), jnp.float64)
    check_single_state_cell(gru_recurrence, textbook_gru, 3, projected, masked, extra=(bh,))


@pytest.mark.parametrize("projected, masked", [(False, False), (True, True)], ids=["x@W-inside", "pre-projected-mask"])
def test_rnn_gradients_match_autodiff_of_textbook_step(projected, masked):
    check_single_state_cell(rnn_recurrence, textbook_rnn, 1, projected, masked)


def test_bfloat16_matmuls_stay_close_to_float32():
    x, W, b, U, c0, h0, _ = (a if a is None else a.astype(jnp.float32) for a in inputs(False, False))
    args = (x, W, b, U, c0, h0)
    f32 = jax.grad(lambda *a: weighted_sum(lstm_recurrence, a, None), argnums=(1, 3))(*args)
    bf16 = jax.grad(lambda *a: weighted_sum(lstm_recurrence, a, None, jnp.bfloat16), argnums=(1, 3))(*args)
    for g, rg in zip(bf16, f32):
        assert g.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(g), np.asarray(rg), rtol=0.05, atol=0.05 * float(jnp.max(jnp.abs(rg))))
