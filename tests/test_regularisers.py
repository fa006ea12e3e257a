"""The regularisers: exact gradients through the hand-written recurrence, their masks, weight decay's
exclusions, the weight average, and the step with every rate at 0 unchanged."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import charlm.model as model_module
from charlm.config import make_run_config
from charlm.data import gather_batch
from charlm.model import CharLSTM, init_params, zero_carry
from charlm.training import batch_loss, create_train_state, eval_params, make_optimizer, stateful_train_step
from tests.test_recurrence import textbook, textbook_gru, textbook_rnn

V, B, T, H = 7, 4, 8, 6  # every size differs

REGULARISERS = {
    "variational-dropout": dict(variational=True, dropout=0.4, input_dropout=0.3),
    "weight-drop": dict(weight_drop=0.5),
    "embed-dropout": dict(embed_dropout=0.3),
    "all": dict(variational=True, dropout=0.4, input_dropout=0.3, weight_drop=0.5, embed_dropout=0.3),
}


def model_cfg(**kw):
    cfg = make_run_config(hidden=H, layers=2, seq_length=T, batch_size=B, embed_dim=5, objective="all", **kw)
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=V))


def batch():
    ids = (np.arange(200, dtype=np.int32) * 5 + np.arange(200) // 7) % V
    return gather_batch(ids, np.array([0, 13, 50, 101]), T)


@pytest.mark.parametrize("reg, cell, encoding",
                         [(r, "lstm", "embed") for r in sorted(REGULARISERS) if r != "all"]
                         + [("all", c, e) for c in ("lstm", "gru") for e in ("embed", "onehot")] + [("all", "rnn", "onehot")])
def test_gradients_match_autodiff_of_the_textbook_step_with_each_regulariser(monkeypatch, reg, cell, encoding):
    """The same dropout key draws the same masks in both models; only the recurrence differs."""
    cfg = model_cfg(cell=cell, input_encoding=encoding, **REGULARISERS[reg])
    rng = jax.random.key(5)

    def grads():
        with jax.enable_x64(True):
            module = CharLSTM(cfg.model, jnp.float64)
            params = init_params(cfg.model, jax.random.key(0), jnp.float64)
            carry = zero_carry(cfg.model, B, jnp.float64)
            return jax.grad(lambda p: batch_loss(p, module.apply, batch(), rng, "all", carry)[0])(params)

    ours = grads()
    monkeypatch.setattr(model_module, "lstm_recurrence", lambda x, W, b, U, c0, h0, m, _: textbook(x, W, b, U, c0, h0, m))
    monkeypatch.setattr(model_module, "gru_recurrence", lambda x, W, b, U, bh, h0, m, _: textbook_gru(x, W, b, U, bh, h0, m))
    monkeypatch.setattr(model_module, "rnn_recurrence", lambda x, W, b, U, h0, m, _: textbook_rnn(x, W, b, U, h0, m))
    reference = grads()
    for (path, g), r in zip(jax.tree_util.tree_leaves_with_path(ours), jax.tree.leaves(reference)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-9, atol=1e-12, err_msg=str(path))


def dropout_masks(cfg, module_name):
    """The keep pattern (output != 0) of one named dropout module's output, [T, B, features]."""
    params = init_params(cfg.model, jax.random.key(0))
    _, state = CharLSTM(cfg.model).apply({"params": params}, batch()["inputs"], deterministic=False,
                                         rngs={"dropout": jax.random.key(1)}, capture_intermediates=True,
                                         mutable=["intermediates"])
    return np.asarray(state["intermediates"][module_name]["__call__"][0]) != 0


@pytest.mark.parametrize("name", ["input_dropout", "Dropout_0", "Dropout_1"])
def test_variational_masks_are_constant_over_time_and_differ_across_sequences(name):
    keep = dropout_masks(model_cfg(input_encoding="embed", variational=True, dropout=0.5, input_dropout=0.5), name)
    assert keep.shape[:2] == (T, B)
    assert (keep == keep[:1]).all(), "one mask per sequence, the same at every step"
    assert not (keep[0] == keep[0, :1]).all(), "each sequence draws its own mask"
    per_step = dropout_masks(model_cfg(input_encoding="embed", dropout=0.5, input_dropout=0.5), name)
    assert not (per_step == per_step[:1]).all(), "without --variational each step draws a new mask"


def test_weight_drop_zeroes_the_gradient_of_the_dropped_recurrent_weights():
    cfg = model_cfg(weight_drop=0.5, dropout=0.0)
    state = create_train_state(cfg, jax.random.key(0))
    g = jax.grad(lambda p: batch_loss(p, state.apply_fn, batch(), jax.random.key(2), "all")[0])(state.params)
    dropped = float(np.mean(np.asarray(g["lstm_0"]["recurrent_kernel"]) == 0))
    assert 0.35 < dropped < 0.65  # one mask over U for the whole batch, so dropped weights get no gradient
    assert float(np.mean(np.asarray(g["lstm_0"]["input_kernel"]) == 0)) < 0.05


def test_embed_dropout_drops_whole_chars():
    cfg = model_cfg(input_encoding="embed", embed_dropout=0.5, dropout=0.0)
    params = init_params(cfg.model, jax.random.key(0))
    ids = batch()["inputs"]
    g = jax.grad(lambda p: batch_loss(p, CharLSTM(cfg.model).apply, batch(), jax.random.key(3), "all")[0])(params)
    rows = np.abs(np.asarray(g["embed"]["embedding"])).sum(axis=1)
    present = np.unique(ids)
    assert 0 < (rows[present] == 0).sum() < len(present), "some chars dropped everywhere they occur, not all"


def test_weight_decay_leaves_biases_and_the_embedding_untouched():
    cfg = model_cfg(input_encoding="embed", weight_decay=0.5, learning_rate=0.1)
    params = init_params(cfg.model, jax.random.key(0))
    tx = make_optimizer(cfg)
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    for path, u in jax.tree_util.tree_leaves_with_path(updates):
        name = path[-1].key
        if name.endswith("kernel"):
            p = params
            for k in path:
                p = p[k.key]
            np.testing.assert_allclose(np.asarray(u), -0.1 * 0.5 * np.asarray(p), rtol=1e-6)
        else:
            assert not np.asarray(u).any(), f"{jax.tree_util.keystr(path)} must not decay"


def test_weight_average_is_updated_after_each_step_and_used_for_evaluation():
    cfg = model_cfg(ema_decay=0.5, dropout=0.0)
    state = create_train_state(cfg, jax.random.key(0))
    start = jax.tree.map(np.array, state.params)  # the step donates the state's buffers
    carry = zero_carry(cfg.model, B)
    state, _, carry = stateful_train_step(state, batch(), jax.random.key(1), carry)
    # step 1: the warm-up decay is min(0.5, 2/11), so the average is mostly the new weights
    d = 2 / 11
    for e, p0, p in zip(jax.tree.leaves(state.ema_params), jax.tree.leaves(start), jax.tree.leaves(state.params)):
        np.testing.assert_allclose(np.asarray(e), d * np.asarray(p0) + (1 - d) * np.asarray(p), rtol=1e-5, atol=1e-7)
    assert eval_params(state) is state.ema_params
    plain = create_train_state(model_cfg(), jax.random.key(0))
    assert plain.ema_params is None and eval_params(plain) is plain.params


# Recorded with the code before the regularisers existed (commit a678ccb): three stateful steps
# with dropout 0.3 and input dropout 0.2, two layers, clipping. Rates at 0 must leave them as they were.
BEFORE_REGULARISERS = {
    ("embed", "lstm"): ([1.9473661184310913, 1.9419209957122803, 1.9438835382461548], 494.4665222167969),
    ("onehot", "gru"): ([1.9766236543655396, 1.9671170711517334, 1.9403700828552246], 372.35406494140625),
    ("embed", "gru"): ([1.9606150388717651, 1.9430248737335205, 1.9406278133392334], 398.1149597167969),
}


@pytest.mark.parametrize("encoding, cell", sorted(BEFORE_REGULARISERS))
def test_with_every_new_rate_at_zero_the_step_is_the_one_before_regularisers(encoding, cell):
    cfg = make_run_config(hidden=16, layers=2, seq_length=8, batch_size=4, dropout=0.3, input_dropout=0.2,
                          input_encoding=encoding, cell=cell, objective="all", stateful=True, embed_dim=8,
                          clip_norm=1.0, variational=False, weight_drop=0.0, embed_dropout=0.0, weight_decay=0.0,
                          ema_decay=0.0)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=7))
    ids = (np.arange(100, dtype=np.int32) * 3) % 7
    b = gather_batch(ids, np.array([0, 11, 23, 40]), 8)
    state, carry, losses = create_train_state(cfg, jax.random.key(0)), zero_carry(cfg.model, 4), []
    for _ in range(3):
        state, m, carry = stateful_train_step(state, b, jax.random.key(1), carry, objective="all")
        losses.append(float(m["loss"]))
    expected_losses, expected_abs_sum = BEFORE_REGULARISERS[(encoding, cell)]
    assert state.ema_params is None and isinstance(state.opt_state[1][0], optax.ScaleByAdamState)
    np.testing.assert_allclose(losses, expected_losses, rtol=1e-6)  # float32 on this CPU: bit-equal here
    np.testing.assert_allclose(sum(float(np.abs(np.asarray(l)).sum()) for l in jax.tree.leaves(state.params)),
                               expected_abs_sum, rtol=1e-6)


def test_deterministic_passes_ignore_every_regulariser():
    cfg = model_cfg(input_encoding="onehot", **REGULARISERS["all"])
    plain = model_cfg(input_encoding="onehot")
    params = init_params(cfg.model, jax.random.key(0))
    a, _ = CharLSTM(cfg.model).apply({"params": params}, batch()["inputs"])
    b, _ = CharLSTM(plain.model).apply({"params": params}, batch()["inputs"])
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_the_best_checkpoint_holds_the_average_and_the_last_one_the_raw_weights(tmp_path):
    from charlm import checkpoint
    from charlm.trainer import train

    text = "the quick brown fox jumps over the lazy dog. " * 40
    cfg = make_run_config(hidden=8, seq_length=10, batch_size=8, epochs=1, objective="all",
                          val_frac=0.1, ema_decay=0.9, weight_decay=0.1)
    result = train(text, cfg, tmp_path / "ck", log=lambda s: None, progress=False)
    best = checkpoint.restore(tmp_path / "ck")[0]
    last = checkpoint.restore(checkpoint.find_last(tmp_path / "ck"))[0]
    for b, e in zip(jax.tree.leaves(best.params), jax.tree.leaves(result.state.ema_params)):
        np.testing.assert_array_equal(np.asarray(b), np.asarray(e))
    for raw, p, e in zip(jax.tree.leaves(last.params), jax.tree.leaves(result.state.params),
                         jax.tree.leaves(last.ema_params)):
        np.testing.assert_array_equal(np.asarray(raw), np.asarray(p))
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(last.params), jax.tree.leaves(last.ema_params)))
