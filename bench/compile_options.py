"""XLA compile options on charlm's real train step, A/B in one process: steps alternate between variants.

    python -m bench.compile_options --setup seed-small --steps 40
    python -m bench.compile_options --setup seed-big --variant vector-512 '{"xla_cpu_prefer_vector_width": 512}'

Where bench.xla_flags needs a process per variant (XLA_FLAGS is read once, at start), an
option that `jax.jit(..., compiler_options=...)` takes can be compared inside one process:
each variant jits the same train step with its options and its own copy of the state, and
step i of every variant runs before step i + 1 of any, on the same batch, in an order that
rotates from step to step. Slow drifts of a
noisy machine then hit every variant alike. `base` is charlm's own options
(charlm.host.COMPILER_OPTIONS); a variant's options are added to them, and a null value
removes one. The losses must agree: an option may change speed, not the step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import jax
import numpy as np

from bench import perfkit, run
from charlm.host import COMPILER_OPTIONS, allocator_status, tune_allocator
from charlm.training import _step, create_train_state

VARIANTS = {
    # XLA:CPU prefers 256-bit vectors (AVX-512 used to lower the clock); ignored without AVX-512.
    "vector-512": {"xla_cpu_prefer_vector_width": 512},
    "no-region-analysis": {"xla_cpu_copy_insertion_use_region_analysis": None},
}
WARMUP = 3


def options(extra: dict) -> dict:
    merged = {**COMPILER_OPTIONS, **extra}
    return {k: v for k, v in merged.items() if v is not None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--setup", default="seed-small", choices=sorted(perfkit.SETUPS))
    p.add_argument("--precision", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--steps", type=int, default=40, help="timed steps per variant")
    p.add_argument("--variant", nargs=2, action="append", metavar=("NAME", "JSON"),
                   help="a variant of your own (default: the built-in ones)")
    p.add_argument("--text", default=run.DEFAULT_TEXT)
    p.add_argument("--out", default=str(run.REPO / "bench" / "results" / "compile-options.json"))
    a = p.parse_args()
    if any(name == "base" for name, _ in a.variant or ()):
        p.error("'base' is charlm's own options; name your variant otherwise")
    tune_allocator()  # as charlm.train does, before JAX's first computation
    chosen = {"base": {}, **({n: json.loads(o) for n, o in a.variant} if a.variant else VARIANTS)}
    setup = perfkit.SETUPS[a.setup]
    tokens, vocab_size = perfkit.load_tokens(a.text)
    cfg = perfkit.charlm_config(setup, vocab_size, a.precision)
    batches = perfkit.fixed_batches(tokens, setup, 8)
    rng = jax.random.key(1)

    def step_fn(s, b, r):
        return _step(s, b, r, setup.objective, None)[:2]

    steps = {n: jax.jit(step_fn, donate_argnums=0, compiler_options=options(o)) for n, o in chosen.items()}
    states = {n: create_train_state(cfg, jax.random.key(0)) for n in chosen}
    times: dict[str, list[float]] = {n: [] for n in chosen}
    losses: dict[str, list[float]] = {n: [] for n in chosen}
    names = list(chosen)
    for i in range(WARMUP + a.steps):
        for n in names[i % len(names):] + names[:i % len(names)]:  # each variant takes every place in turn
            t0 = time.perf_counter()
            states[n], metrics = steps[n](states[n], batches[i % len(batches)], rng)
            jax.block_until_ready(metrics)
            if i >= WARMUP:
                times[n].append(time.perf_counter() - t0)
            losses[n].append(float(metrics["loss"]))
    base = statistics.median(times["base"])
    summary = {n: {"options": options(chosen[n]), "median_ms": statistics.median(t) * 1e3,
                   "p25_ms": float(np.percentile(t, 25)) * 1e3, "speedup": base / statistics.median(t),
                   "max_loss_diff": max(abs(x - y) for x, y in zip(losses[n], losses["base"]))}
               for n, t in times.items()}
    Path(a.out).write_text(json.dumps({"setup": a.setup, "precision": a.precision, "steps": a.steps,
                                       "allocator": allocator_status(),
                                       "summary": summary, "ms": {n: [x * 1e3 for x in t] for n, t in times.items()}},
                                      indent=1))
    print(f"{a.setup} ({a.precision}), {a.steps} alternating steps per variant")
    for n, s in summary.items():
        print(f"{n:20s} median {s['median_ms']:7.1f} ms  p25 {s['p25_ms']:7.1f}  {s['speedup']:.3f}x base  "
              f"max |loss - base's| {s['max_loss_diff']:.2e}")


if __name__ == "__main__":
    main()
