import dataclasses
import math

import jax
import numpy as np
import optax
import pytest

from charlm.config import make_run_config
from charlm.data import Vocab, gather_batch, window_starts
from charlm.model import zero_carry
from charlm.trainer import train
from charlm.training import (batch_loss, create_train_state, eval_step, learning_rate_schedule, stateful_train_step,
                             train_step)


def tiny_cfg(vocab_size, **kw):
    cfg = make_run_config(hidden=16, seq_length=8, batch_size=16, dropout=0.0, **kw)
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=vocab_size))


def test_loss_is_the_weighted_cross_entropy_of_the_last_char():
    ids = np.arange(40, dtype=np.int32) % 7
    cfg = tiny_cfg(7)
    state = create_train_state(cfg, jax.random.key(0))
    batch = gather_batch(ids, np.array([0, 5, 9]), 8, batch_size=4)
    loss, (count, _) = batch_loss(state.params, state.apply_fn, batch, None)
    logits, _ = state.apply_fn({"params": state.params}, batch["inputs"][:3])
    expected = optax.softmax_cross_entropy_with_integer_labels(logits[:, -1], batch["targets"][:3, -1]).mean()
    assert float(count) == 3.0
    np.testing.assert_allclose(float(loss), float(expected), rtol=1e-6)


def test_train_step_is_deterministic_and_lowers_the_loss():
    ids = np.arange(200, dtype=np.int32) % 5
    cfg = tiny_cfg(5)
    batch = gather_batch(ids, np.arange(16), 8)
    losses = []
    for _ in range(2):
        state = create_train_state(cfg, jax.random.key(0))
        run = []
        for _ in range(5):
            state, m = train_step(state, batch, jax.random.key(1))
            run.append(float(m["loss"]))
        losses.append(run)
    assert losses[0] == losses[1]
    assert losses[0][-1] < losses[0][0]
    assert int(state.step) == 5


def test_tiny_model_learns_a_repeated_text(tmp_path):
    """A repeated short phrase is fully predictable: the loss must drop near zero in seconds."""
    text = "abcdefgh " * 300
    cfg = make_run_config(hidden=32, seq_length=8, batch_size=64, dropout=0.0, epochs=6, learning_rate=1e-2,
                          input_encoding="onehot")
    result = train(text, cfg, tmp_path / "ck", log=lambda s: None, progress=False)
    assert result.best_loss < 0.05, result.history
    state = result.state
    vocab = Vocab.from_text(text)
    batch = gather_batch(vocab.encode(text), window_starts(len(text), 8)[:64], 8)
    assert float(eval_step(state, batch)["loss"]) < 0.05


def trained_like_state(vocab_size=7, **kw):
    """A state whose params have been perturbed, so the losses below are not all ~log(V)."""
    cfg = tiny_cfg(vocab_size, **kw)
    state = create_train_state(cfg, jax.random.key(0))
    leaves, tree = jax.tree.flatten(state.params)
    keys = jax.random.split(jax.random.key(3), len(leaves))
    params = jax.tree.unflatten(tree, [p + 0.5 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
    return cfg, state.replace(params=params)


def test_dense_loss_is_the_mean_of_per_position_losses_computed_one_by_one():
    cfg, state = trained_like_state()
    ids = np.random.default_rng(0).integers(0, 7, 60).astype(np.int32)
    batch = gather_batch(ids, np.array([0, 11, 23]), 8, batch_size=4)
    dense, (count, _) = batch_loss(state.params, state.apply_fn, batch, None, "all")
    one_by_one = []
    apply = jax.jit(lambda inputs: state.apply_fn({"params": state.params}, inputs, last_only=True))
    for b in range(3):
        for t in range(8):  # position t, predicted from the window's first t+1 chars only
            logits, _ = apply(batch["inputs"][b:b + 1, :t + 1])
            one_by_one.append(float(optax.softmax_cross_entropy_with_integer_labels(
                logits, batch["targets"][b:b + 1, t])[0]))
    assert float(count) == 24
    np.testing.assert_allclose(float(dense), np.mean(one_by_one), rtol=1e-5)


def test_carrying_state_over_two_half_windows_equals_one_full_window():
    cfg, state = trained_like_state()
    ids = np.random.default_rng(1).integers(0, 7, 60).astype(np.int32)
    full = gather_batch(ids, np.array([0, 20]), 8)
    first, second = gather_batch(ids, np.array([0, 20]), 4), gather_batch(ids, np.array([4, 24]), 4)
    loss_full, _ = batch_loss(state.params, state.apply_fn, full, None, "all")
    loss_a, (_, carry) = batch_loss(state.params, state.apply_fn, first, None, "all", zero_carry(cfg.model, 2))
    loss_b, _ = batch_loss(state.params, state.apply_fn, second, None, "all", carry)
    np.testing.assert_allclose(float(loss_full), (float(loss_a) + float(loss_b)) / 2, rtol=1e-5)
    # without the carry the second half is scored differently
    loss_b_cold, _ = batch_loss(state.params, state.apply_fn, second, None, "all")
    assert abs(float(loss_b_cold) - float(loss_b)) > 1e-4


def test_stateful_train_step_returns_the_carry_after_the_batch():
    cfg, state = trained_like_state()
    ids = np.random.default_rng(2).integers(0, 7, 60).astype(np.int32)
    batch = gather_batch(ids, np.array([0, 20]), 8)
    _, (_, expected) = batch_loss(state.params, state.apply_fn, batch, None, "all", zero_carry(cfg.model, 2))
    cfg0 = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, dropout=0.0))
    state0 = create_train_state(cfg0, jax.random.key(0)).replace(params=state.params)
    _, metrics, carry = stateful_train_step(state0, batch, jax.random.key(0), zero_carry(cfg.model, 2))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), carry, expected)


def test_clip_norm_limits_the_update():
    ids = np.arange(200, dtype=np.int32) % 5
    batch = gather_batch(ids, np.arange(16), 8)
    moved = {}
    for clip in (None, 1e-12):  # a 1e-12 gradient is below Adam's epsilon: almost no step
        cfg = tiny_cfg(5, clip_norm=clip)
        state = create_train_state(cfg, jax.random.key(0))
        before = jax.tree.map(np.asarray, state.params)
        state, _ = train_step(state, batch, jax.random.key(1))
        moved[clip] = max(float(np.abs(a - np.asarray(b)).max())
                          for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(state.params)))
    assert moved[None] > 1e-4 and moved[1e-12] < 1e-6


@pytest.mark.parametrize("schedule, at_end", [("constant", 1e-3), ("cosine", 0.0), ("exponential", 1e-4)])
def test_lr_schedules(schedule, at_end):
    cfg = tiny_cfg(5, lr_schedule=schedule, warmup_steps=10, lr_decay=0.1)
    lr = learning_rate_schedule(cfg, total_steps=110)
    assert float(lr(0)) == 0.0 and math.isclose(float(lr(5)), 5e-4, rel_tol=1e-5)
    assert math.isclose(float(lr(10)), 1e-3, rel_tol=1e-5)
    assert math.isclose(float(lr(110)), at_end, rel_tol=1e-4, abs_tol=1e-9)


def test_warmup_is_used_by_the_optimizer():
    """With warm-up the first step has lr 0 and leaves the params as they were."""
    ids = np.arange(200, dtype=np.int32) % 5
    batch = gather_batch(ids, np.arange(16), 8)
    cfg = tiny_cfg(5, warmup_steps=10)
    state = create_train_state(cfg, jax.random.key(0), total_steps=100)
    before = jax.tree.map(np.asarray, state.params)
    state, _ = train_step(state, batch, jax.random.key(1))
    jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.asarray, state.params))


def test_body_lr_scale_freezes_all_but_the_output_layer_at_first_then_ramps():
    import jax
    import numpy as np

    from charlm.config import make_run_config
    from charlm.training import make_optimizer

    cfg = make_run_config("fast", vocab_size=5, hidden=4, embed_dim=3, body_lr_scale=0.0, body_lr_ramp=2,
                          clip_norm=None, warmup_steps=0, lr_schedule="constant")
    params = {"embed": {"embedding": np.ones((5, 3), np.float32)}, "output": {"bias": np.ones(5, np.float32)}}
    grads = jax.tree.map(np.ones_like, params)
    tx = make_optimizer(cfg)
    state = tx.init(params)
    steps = []
    for _ in range(3):
        updates, state = tx.update(grads, state, params)
        steps.append((float(updates["embed"]["embedding"][0, 0]), float(updates["output"]["bias"][0])))
    lr = cfg.train.learning_rate
    np.testing.assert_allclose(steps, [(0.0, -lr), (-lr / 2, -lr), (-lr, -lr)], rtol=1e-4)
    assert len(jax.tree.leaves(make_optimizer(make_run_config("fast")).init(params))) < len(jax.tree.leaves(state))
