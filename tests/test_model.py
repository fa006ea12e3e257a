"""The model against a NumPy float64 reference of the LSTM equations, plus shapes and carries."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from charlm.config import ModelConfig
from charlm.model import CharLSTM, init_params, zero_carry

# Every size differs, so a swapped axis cannot pass (torch-rnn's habit).
B, T, E, H, V = 2, 3, 4, 5, 7


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def reference_forward(params, cfg: ModelConfig, ids, carry=None):
    """Textbook LSTM, gate by gate, step by step, in float64. Returns logits [B, T, V], final (c, h)s."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    Hh = cfg.hidden
    if cfg.input_encoding == "scaled":
        x = (ids / cfg.vocab_size)[..., None]
    elif cfg.input_encoding == "onehot":
        x = np.eye(cfg.vocab_size)[ids]
    else:
        x = p["embed"]["embedding"][ids]
    Bn, Tn = ids.shape
    states = carry or [(np.zeros((Bn, Hh)), np.zeros((Bn, Hh)))] * cfg.layers
    finals = []
    for layer in range(cfg.layers):
        W, U, b = (p[f"lstm_{layer}"][k] for k in ("input_kernel", "recurrent_kernel", "bias"))
        c, h = (np.asarray(s, np.float64) for s in states[layer])
        outs = []
        for t in range(Tn):
            z = x[:, t] @ W + b + h @ U
            i = sigmoid(z[:, 0 * Hh:1 * Hh])
            f = sigmoid(z[:, 1 * Hh:2 * Hh])
            g = np.tanh(z[:, 2 * Hh:3 * Hh])
            o = sigmoid(z[:, 3 * Hh:4 * Hh])
            c = f * c + i * g
            h = o * np.tanh(c)
            outs.append(h)
        finals.append((c, h))
        x = np.stack(outs, axis=1)
    logits = x @ p["output"]["kernel"] + p["output"]["bias"]
    return logits, finals


def random_ids(seed=0, shape=(B, T)):
    return np.random.default_rng(seed).integers(0, V, size=shape).astype(np.int32)


def perturbed(params, seed=1):
    """Random non-zero biases too, so a dropped bias term shows up."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(tree, [l + 0.3 * jax.random.normal(k, l.shape, l.dtype) for l, k in zip(leaves, keys)])


@pytest.mark.parametrize("encoding", ["scaled", "onehot", "embed"])
@pytest.mark.parametrize("layers", [1, 2])
def test_forward_matches_numpy_reference_float64(encoding, layers):
    cfg = ModelConfig(vocab_size=V, hidden=H, layers=layers, input_encoding=encoding, embed_dim=E)
    ids = random_ids()
    with jax.enable_x64(True):
        params = perturbed(init_params(cfg, jax.random.key(0), jnp.float64))
        logits, carry = CharLSTM(cfg, jnp.float64).apply({"params": params}, jnp.asarray(ids))
        assert logits.dtype == jnp.float64
        ref_logits, ref_carry = reference_forward(params, cfg, ids)
    np.testing.assert_allclose(np.asarray(logits), ref_logits, rtol=1e-5, atol=1e-12)
    for (c, h), (rc, rh) in zip(carry, ref_carry):
        np.testing.assert_allclose(np.asarray(c), rc, rtol=1e-5, atol=1e-12)
        np.testing.assert_allclose(np.asarray(h), rh, rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("layers", [1, 2])
def test_forward_matches_numpy_reference_float32(layers):
    cfg = ModelConfig(vocab_size=V, hidden=H, layers=layers)
    params = perturbed(init_params(cfg, jax.random.key(0)))
    ids = random_ids(3, (B, 20))
    logits, _ = CharLSTM(cfg).apply({"params": params}, jnp.asarray(ids))
    ref_logits, _ = reference_forward(params, cfg, ids)
    np.testing.assert_allclose(np.asarray(logits), ref_logits, rtol=1e-4, atol=1e-5)


def test_shapes_and_last_only():
    cfg = ModelConfig(vocab_size=V, hidden=H, layers=2)
    model = CharLSTM(cfg)
    params = init_params(cfg, jax.random.key(0))
    ids = jnp.asarray(random_ids())
    logits, carry = model.apply({"params": params}, ids)
    assert logits.shape == (B, T, V)
    assert len(carry) == 2 and all(c.shape == (B, H) and h.shape == (B, H) for c, h in carry)
    last, _ = model.apply({"params": params}, ids, last_only=True)
    assert last.shape == (B, V)
    np.testing.assert_allclose(last, logits[:, -1], rtol=1e-6)


def test_param_names_and_shapes():
    cfg = ModelConfig(vocab_size=V, hidden=H, layers=2)
    shapes = jax.tree.map(jnp.shape, init_params(cfg, jax.random.key(0)))
    assert shapes == {"lstm_0": {"input_kernel": (1, 4 * H), "recurrent_kernel": (H, 4 * H), "bias": (4 * H,)},
                      "lstm_1": {"input_kernel": (H, 4 * H), "recurrent_kernel": (H, 4 * H), "bias": (4 * H,)},
                      "output": {"kernel": (H, V), "bias": (V,)}}


def test_forget_gate_bias_starts_at_one():
    params = init_params(ModelConfig(vocab_size=V, hidden=H), jax.random.key(0))
    bias = np.asarray(params["lstm_0"]["bias"])
    assert (bias[H:2 * H] == 1).all() and (bias[:H] == 0).all() and (bias[2 * H:] == 0).all()


def test_stepping_with_carry_equals_the_whole_window():
    cfg = ModelConfig(vocab_size=V, hidden=H, layers=2)
    model = CharLSTM(cfg)
    params = perturbed(init_params(cfg, jax.random.key(0)))
    ids = jnp.asarray(random_ids(5, (B, 9)))
    full, full_carry = model.apply({"params": params}, ids)
    carry = zero_carry(cfg, B)
    for t in range(ids.shape[1]):
        step_logits, carry = model.apply({"params": params}, ids[:, t:t + 1], carry)
        np.testing.assert_allclose(step_logits[:, 0], full[:, t], rtol=1e-5, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), carry, full_carry)


def test_mask_leaves_state_unchanged():
    cfg = ModelConfig(vocab_size=V, hidden=H)
    model = CharLSTM(cfg)
    params = perturbed(init_params(cfg, jax.random.key(0)))
    ids = jnp.asarray(random_ids(6, (B, 6)))
    mask = jnp.asarray([[False, False, True, True, True, True]] * B)
    masked, _ = model.apply({"params": params}, ids, last_only=True, mask_BxT=mask)
    plain, _ = model.apply({"params": params}, ids[:, 2:], last_only=True)
    np.testing.assert_allclose(masked, plain, rtol=1e-5, atol=1e-6)


def test_dropout_only_in_training_mode():
    cfg = ModelConfig(vocab_size=V, hidden=H, dropout=0.5)
    model = CharLSTM(cfg)
    params = init_params(cfg, jax.random.key(0))
    ids = jnp.asarray(random_ids())
    a, _ = model.apply({"params": params}, ids)
    b, _ = model.apply({"params": params}, ids)
    c, _ = model.apply({"params": params}, ids, deterministic=False, rngs={"dropout": jax.random.key(1)})
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def reference_gru(params, cfg: ModelConfig, ids):
    """Textbook GRU (char-rnn / cuDNN form) in float64: one-hot inputs, one layer."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params["gru_0"])
    x = np.eye(cfg.vocab_size)[ids]
    Hh = cfg.hidden
    h = np.zeros((ids.shape[0], Hh))
    outs = []
    for t in range(ids.shape[1]):
        zx = x[:, t] @ p["input_kernel"] + p["bias"]
        zh = h @ p["recurrent_kernel"] + p["recurrent_bias"]
        r = sigmoid(zx[:, :Hh] + zh[:, :Hh])
        u = sigmoid(zx[:, Hh:2 * Hh] + zh[:, Hh:2 * Hh])
        n = np.tanh(zx[:, 2 * Hh:] + r * zh[:, 2 * Hh:])
        h = (1 - u) * n + u * h
        outs.append(h)
    out = jax.tree.map(lambda a: np.asarray(a, np.float64), params["output"])
    return np.stack(outs, 1) @ out["kernel"] + out["bias"]


def test_gru_matches_numpy_reference():
    cfg = ModelConfig(vocab_size=V, hidden=H, cell="gru", input_encoding="onehot")
    ids = random_ids(7)
    with jax.enable_x64(True):
        params = perturbed(init_params(cfg, jax.random.key(0), jnp.float64))
        assert set(params) == {"gru_0", "output"}
        logits, _ = CharLSTM(cfg, jnp.float64).apply({"params": params}, jnp.asarray(ids))
        ref = reference_gru(params, cfg, ids)
    np.testing.assert_allclose(np.asarray(logits), ref, rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("encoding", ["scaled", "onehot", "embed"])
def test_input_dropout_changes_training_outputs_only(encoding):
    cfg = ModelConfig(vocab_size=V, hidden=H, dropout=0.0, input_encoding=encoding, embed_dim=E)
    params = init_params(cfg, jax.random.key(0))
    ids = jnp.asarray(random_ids(8, (4, 10)))
    rngs = {"dropout": jax.random.key(1)}
    plain, _ = CharLSTM(cfg).apply({"params": params}, ids, deterministic=False, rngs=rngs)
    dropped_cfg = ModelConfig(vocab_size=V, hidden=H, dropout=0.0, input_encoding=encoding, embed_dim=E,
                              input_dropout=0.5)
    dropped, _ = CharLSTM(dropped_cfg).apply({"params": params}, ids, deterministic=False, rngs=rngs)
    evaluated, _ = CharLSTM(dropped_cfg).apply({"params": params}, ids)
    assert not np.allclose(plain, dropped)
    np.testing.assert_allclose(plain, evaluated, rtol=1e-6)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("encoding", ["scaled", "embed"])
def test_inputs_projected_ahead_match_the_step_by_step_projection(monkeypatch, cell, encoding):
    """Wide inputs are projected for all steps before the recurrence: the same outputs and float64
    gradients (with a mask) as projecting inside the step, whose backward pass test_recurrence
    checks against autodiff, and for the LSTM the NumPy reference's logits."""
    import charlm.model as model

    cfg = ModelConfig(vocab_size=V, hidden=H, layers=2, cell=cell, input_encoding=encoding, embed_dim=E)
    ids = random_ids(2, (B, 8))
    mask = np.random.default_rng(3).random((B, 8)) < 0.7
    mask[:, 0] = True
    with jax.enable_x64(True):
        params = perturbed(init_params(cfg, jax.random.key(0), jnp.float64))
        weights = jax.random.normal(jax.random.key(4), (B, 8, V), jnp.float64)

        def loss(p):
            logits, _ = CharLSTM(cfg, jnp.float64).apply({"params": p}, jnp.asarray(ids), mask_BxT=jnp.asarray(mask))
            return jnp.sum(logits * weights)
        results = []
        for threshold in (10 ** 9, 1):  # every input projected inside the step; every one ahead
            monkeypatch.setattr(model, "PROJECT_AHEAD_MIN_FEATURES", threshold)
            results.append(jax.value_and_grad(loss)(params))
            if cell == "lstm" and threshold == 1:
                logits, _ = CharLSTM(cfg, jnp.float64).apply({"params": params}, jnp.asarray(ids))
                np.testing.assert_allclose(np.asarray(logits), reference_forward(params, cfg, ids)[0], rtol=1e-9)
    (value, grads), (ahead_value, ahead_grads) = results
    np.testing.assert_allclose(ahead_value, value, rtol=1e-12)
    for g, a in zip(jax.tree.leaves(grads), jax.tree.leaves(ahead_grads)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(g), rtol=1e-9, atol=1e-12)
