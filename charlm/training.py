"""Train state, loss and the jitted Adam train/eval steps. No I/O, no loop.

`train_step(state, batch, rng) -> (state, metrics)` is pure: the dropout key is
`fold_in(rng, state.step)`, so a run is a function of (seed, data order) alone.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from charlm.config import RunConfig
from charlm.model import CharLSTM, init_params


# Flax's TrainState: step, params, opt_state (pytree leaves) plus apply_fn and tx (static).
TrainState = train_state.TrainState


def make_optimizer(cfg: RunConfig) -> optax.GradientTransformation:
    return optax.adam(cfg.train.learning_rate)


def create_train_state(cfg: RunConfig, rng: jax.Array) -> TrainState:
    model = CharLSTM(cfg.model)
    return TrainState.create(apply_fn=model.apply, params=init_params(cfg.model, rng), tx=make_optimizer(cfg))


def batch_loss(params, apply_fn, batch: dict, rng: jax.Array | None):
    """Mean cross-entropy of the char after each window (the tutorial's objective).

    Padding rows (weight 0) contribute nothing. Returns (loss, number of scored chars).
    """
    deterministic = rng is None
    logits_BxV, _ = apply_fn({"params": params}, batch["inputs"], deterministic=deterministic, last_only=True,
                             rngs=None if deterministic else {"dropout": rng})
    nll_B = optax.softmax_cross_entropy_with_integer_labels(logits_BxV.astype(jnp.float32), batch["targets"][:, -1])
    w_B = batch["weights"]
    count = jnp.sum(w_B)
    return jnp.sum(nll_B * w_B) / jnp.maximum(count, 1.0), count


@functools.partial(jax.jit, donate_argnums=0)
def train_step(state: TrainState, batch: dict, rng: jax.Array):
    """One Adam step on a batch. Returns the new state and {'loss', 'count'}."""
    dropout_rng = jax.random.fold_in(rng, state.step)
    grad_fn = jax.value_and_grad(batch_loss, has_aux=True)
    (loss, count), grads = grad_fn(state.params, state.apply_fn, batch, dropout_rng)
    return state.apply_gradients(grads=grads), {"loss": loss, "count": count}


@jax.jit
def eval_step(state: TrainState, batch: dict):
    """Loss without dropout or an update: {'loss', 'count'}."""
    loss, count = batch_loss(state.params, state.apply_fn, batch, None)
    return {"loss": loss, "count": count}
