import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from charlm.config import make_run_config
from charlm.data import Vocab, gather_batch, window_starts
from charlm.trainer import train
from charlm.training import batch_loss, create_train_state, eval_step, train_step


def tiny_cfg(vocab_size, **kw):
    cfg = make_run_config(hidden=16, seq_length=8, batch_size=16, dropout=0.0, **kw)
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=vocab_size))


def test_loss_is_the_weighted_cross_entropy_of_the_last_char():
    ids = np.arange(40, dtype=np.int32) % 7
    cfg = tiny_cfg(7)
    state = create_train_state(cfg, jax.random.key(0))
    batch = gather_batch(ids, np.array([0, 5, 9]), 8, batch_size=4)
    loss, count = batch_loss(state.params, state.apply_fn, batch, None)
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
