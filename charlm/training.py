"""Train state, optimizer, loss and the jitted train/eval steps. No I/O, no loop.

`train_step(state, batch, rng) -> (state, metrics)` is pure: the dropout key is
`fold_in(rng, state.step)`, so a run is a function of (seed, data order) alone.
`stateful_train_step` is the same step for training streams: it also takes the LSTM state
left by the previous batch and returns the new one (truncated backprop through time).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct
from flax.training import train_state

from charlm.config import RunConfig
from charlm.host import COMPILER_OPTIONS
from charlm.model import CharLSTM, Carry, init_params

class TrainState(train_state.TrainState):
    """Flax's TrainState (step, params, opt_state; apply_fn and tx static) plus an optional
    exponential moving average of the weights, updated after every step."""

    ema_params: Any = None  # None: no averaging
    ema_decay: float = struct.field(pytree_node=False, default=0.0)

    def apply_gradients(self, *, grads, **kwargs) -> "TrainState":
        new = super().apply_gradients(grads=grads, **kwargs)
        if self.ema_params is None:
            return new
        # Warm-up as TensorFlow's ExponentialMovingAverage(num_updates): early on the average
        # follows the weights closely instead of remembering the random init for ~1/(1-decay) steps.
        step = new.step.astype(jnp.float32)
        decay = jnp.minimum(self.ema_decay, (1.0 + step) / (10.0 + step))
        ema = jax.tree.map(lambda e, p: e * decay + (1.0 - decay) * p, self.ema_params, new.params)
        return new.replace(ema_params=ema)


def eval_params(state: TrainState):
    """The weights to validate and sample with: the moving average when there is one."""
    return state.params if state.ema_params is None else state.ema_params


def learning_rate_schedule(cfg: RunConfig, total_steps: int) -> optax.Schedule:
    """The lr at each step: optional linear warm-up, then constant, cosine or exponential decay."""
    lr, warmup = cfg.train.learning_rate, cfg.train.warmup_steps
    decay_steps = max(1, total_steps - warmup)
    if cfg.train.lr_schedule == "cosine":
        after = optax.cosine_decay_schedule(lr, decay_steps)
    elif cfg.train.lr_schedule == "exponential":
        after = optax.exponential_decay(lr, decay_steps, cfg.train.lr_decay)
    else:
        after = optax.constant_schedule(lr)
    if warmup == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), after], [warmup])


def decays(params):
    """Which params weight decay shrinks: the kernels (input, recurrent, output), not the biases
    or the embedding (a rare char's row would decay between its few updates)."""
    return jax.tree_util.tree_map_with_path(lambda path, _: str(getattr(path[-1], "key", "")).endswith("kernel"),
                                            params)


def scale_body_updates(scale: float, ramp_steps: int) -> optax.GradientTransformation:
    """Multiplies the updates of every param outside the output layer by a factor that rises
    linearly from `scale` to 1 over `ramp_steps` (ULMFiT's discriminative rates; scale 0 is its
    gradual unfreezing, the output layer adapting first to a fine-tuned model's new text)."""

    def init(params):
        return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

    def update(updates, state, params=None):
        rise = state.count / ramp_steps if ramp_steps > 0 else 0.0
        factor = jnp.minimum(1.0, scale + (1.0 - scale) * rise)
        updates = jax.tree_util.tree_map_with_path(
            lambda path, u: u if getattr(path[0], "key", None) == "output" else u * factor.astype(u.dtype), updates)
        return updates, optax.ScaleByScheduleState(count=optax.safe_int32_increment(state.count))

    return optax.GradientTransformation(init, update)


def make_optimizer(cfg: RunConfig, total_steps: int = 1) -> optax.GradientTransformation:
    """Adam on the scheduled lr (AdamW with decoupled weight decay when set), after optional
    global-norm clipping, with the body's updates scaled down at first when fine-tuning asks."""
    lr = learning_rate_schedule(cfg, total_steps)
    if cfg.train.weight_decay > 0:
        adam = optax.adamw(lr, weight_decay=cfg.train.weight_decay, mask=decays)
    else:  # plain Adam: the same optimizer state as before weight decay existed
        adam = optax.adam(lr)
    if cfg.train.body_lr_scale < 1:  # off: the optimizer state keeps its structure
        adam = optax.chain(adam, scale_body_updates(cfg.train.body_lr_scale, cfg.train.body_lr_ramp))
    if cfg.train.clip_norm is None:
        return adam
    return optax.chain(optax.clip_by_global_norm(cfg.train.clip_norm), adam)


def create_train_state(cfg: RunConfig, rng: jax.Array, total_steps: int = 1) -> TrainState:
    """Fresh params and optimizer state. `total_steps` sets the horizon of decaying lr schedules."""
    model = CharLSTM(cfg.model)
    params = init_params(cfg.model, rng)
    ema = jax.tree.map(jnp.copy, params) if cfg.train.ema_decay > 0 else None
    return TrainState.create(apply_fn=model.apply, params=params, tx=make_optimizer(cfg, total_steps),
                             ema_params=ema, ema_decay=cfg.train.ema_decay)


def train_state_from(cfg: RunConfig, params, opt_state, step, total_steps: int = 1, ema_params=None) -> TrainState:
    """A train state around existing arrays (a restored checkpoint's). Initialising fresh params
    only to replace them would cost about 2.5 s in a new process (the orthogonal init's ops)."""
    return TrainState(step=step, apply_fn=CharLSTM(cfg.model).apply, params=params,
                      tx=make_optimizer(cfg, total_steps), opt_state=opt_state, ema_params=ema_params,
                      ema_decay=cfg.train.ema_decay)


def sequence_nll(logits, targets, weights):
    """Summed cross-entropy (nats) and the number of scored chars; any leading shape."""
    nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    return jnp.sum(nll * weights), jnp.sum(weights)


def batch_loss(params, apply_fn, batch: dict, rng: jax.Array | None, objective: str = "last",
               carry: Carry | None = None):
    """Mean cross-entropy over the scored chars of a batch.

    objective "last" scores the char after each window (the tutorial); "all" scores the
    next char at every position (dense targets). Padding (weight 0) contributes nothing.
    Returns (loss, (number of scored chars, final carry)).
    """
    deterministic = rng is None
    last = objective == "last"
    logits, new_carry = apply_fn({"params": params}, batch["inputs"], carry, deterministic=deterministic,
                                 last_only=last, rngs=None if deterministic else {"dropout": rng})
    if last:
        total, count = sequence_nll(logits, batch["targets"][:, -1], batch["weights"][:, -1])
    else:
        total, count = sequence_nll(logits, batch["targets"], batch["weights"])
    return total / jnp.maximum(count, 1.0), (count, new_carry)


def _step(state: TrainState, batch: dict, rng: jax.Array, objective: str, carry: Carry | None):
    dropout_rng = jax.random.fold_in(rng, state.step)
    grad_fn = jax.value_and_grad(batch_loss, has_aux=True)
    (loss, (count, carry)), grads = grad_fn(state.params, state.apply_fn, batch, dropout_rng, objective, carry)
    return state.apply_gradients(grads=grads), {"loss": loss, "count": count}, carry


@functools.partial(jax.jit, static_argnames="objective", donate_argnums=0, compiler_options=COMPILER_OPTIONS)
def train_step(state: TrainState, batch: dict, rng: jax.Array, objective: str = "last"):
    """One Adam step on a batch of windows, each from a zero state. Returns (state, {'loss', 'count'})."""
    state, metrics, _ = _step(state, batch, rng, objective, None)
    return state, metrics


@functools.partial(jax.jit, static_argnames="objective", donate_argnums=0, compiler_options=COMPILER_OPTIONS)
def stateful_train_step(state: TrainState, batch: dict, rng: jax.Array, carry: Carry, objective: str = "all"):
    """One Adam step that starts from `carry` and returns (state, metrics, carry after the batch).

    Gradients stop at the batch boundary: the carry enters as a constant."""
    return _step(state, batch, rng, objective, jax.lax.stop_gradient(carry))


@functools.partial(jax.jit, static_argnames="objective")
def eval_step(state: TrainState, batch: dict, objective: str = "last"):
    """Loss without dropout or an update (with the averaged weights, if any): {'loss', 'count'}."""
    loss, (count, _) = batch_loss(eval_params(state), state.apply_fn, batch, None, objective)
    return {"loss": loss, "count": count}
