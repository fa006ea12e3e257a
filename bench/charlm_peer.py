"""charlm's own measurements for bench.run, through charlm's public functions only.

    python -m bench.charlm_peer train --setup seed-small --warmup 3 --steps 20
    python -m bench.charlm_peer sample --chars 1000 --window-chars 100 --streams 64
    python -m bench.charlm_peer matmul --matmul-n 2048

Each run is one task and prints one JSON line. `train` times `charlm.training.train_step` on
numpy batches, as the trainer feeds it; `sample` times the jitted samplers
(`generate_stateful` for 1 and for N streams, `generate_window` for the tutorial's exact
window mode) on untrained params, argmax; `matmul` is XLA's f32 matmul ceiling on this machine.
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp

from bench import perfkit
from charlm.host import allocator_status, tune_allocator
from charlm.sampling import generate_stateful, generate_window
from charlm.training import create_train_state, train_step


def _config(setup: perfkit.Setup, vocab_size: int):
    # bench.run sets the precision per implementation row ("charlm" float32, "charlm-bf16" bfloat16).
    return perfkit.charlm_config(setup, vocab_size, os.environ.get("CHARLM_BENCH_PRECISION", "float32"))


def make_step(setup: perfkit.Setup, vocab_size: int):
    tune_allocator()  # as charlm.train does, before JAX's first computation (CHARLM_ALLOCATOR=system: not)
    cfg = _config(setup, vocab_size)
    # One-element lists: train_step donates the state, so each step must replace it.
    state = [create_train_state(cfg, jax.random.key(0))]
    rng = jax.random.key(1)

    def step(batch: dict) -> None:
        state[0], metrics = train_step(state[0], batch, rng, objective=setup.objective)
        jax.block_until_ready(metrics)

    return step


def sample(args: argparse.Namespace, tokens, vocab_size: int) -> dict:
    cfg = _config(perfkit.SETUPS["seed-small"], vocab_size)
    params = create_train_state(cfg, jax.random.key(0)).params
    rng = jax.random.key(2)
    prime = jnp.asarray(perfkit.primes(tokens, args.streams))

    def stateful(rows: int):
        return lambda: generate_stateful(params, cfg.model, prime[:rows], rng, length=args.chars).block_until_ready()

    def window():
        return generate_window(params, cfg.model, prime[:1], rng, length=args.window_chars,
                               seq_length=cfg.data.seq_length).block_until_ready()

    return {"prime_chars": prime.shape[1], "samples": [
        perfkit.time_sampler("stateful", 1, args.chars, stateful(1), args.reps),
        perfkit.time_sampler("stateful", args.streams, args.chars, stateful(args.streams), args.reps),
        perfkit.time_sampler("window", 1, args.window_chars, window, args.reps),
    ]}


def matmul(args: argparse.Namespace, tokens, vocab_size: int) -> dict:
    n = args.matmul_n
    a, b = jax.random.normal(jax.random.key(0), (2, n, n), jnp.float32)
    product = jax.jit(jnp.matmul)
    timing = perfkit.time_calls(lambda: product(a, b).block_until_ready(), max(args.reps, 5))
    return {"n": n, **timing, "gflops": 2 * n ** 3 / timing["seconds"] / 1e9}


def versions() -> dict:
    import flax
    import jaxlib

    return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__,
            "device": str(jax.devices()[0]), "allocator": allocator_status().replace("not tuned yet", "system")}


if __name__ == "__main__":
    bf16 = os.environ.get("CHARLM_BENCH_PRECISION") == "bfloat16"
    perfkit.peer_main("charlm-bf16" if bf16 else "charlm", make_step, {"sample": sample, "matmul": matmul}, versions)
