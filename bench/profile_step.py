"""Where a train step's time goes: per-XLA-op totals from a jax.profiler trace.

    python -m bench.profile_step --setup seed-small            # both cores
    XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \
        taskset -c 1 python -m bench.profile_step --setup seed-small   # one core: steadier on a busy machine

Runs a few warm steps, traces three more (perfetto JSON, no TensorBoard needed) and prints
the ops by total time per step. `while.*` are the scans (forward and backward), the
`ynn_fusion*` inside them the per-step matmuls, `dot_general*` the weight-gradient matmuls.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import tempfile
from pathlib import Path

import jax

from bench import perfkit
from charlm.host import allocator_status, tune_allocator
from charlm.training import create_train_state, train_step

TRACED_STEPS = 3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--setup", choices=sorted(perfkit.SETUPS), default="seed-small")
    p.add_argument("--precision", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--text", default=perfkit.DEFAULT_TEXT)
    p.add_argument("--top", type=int, default=25, help="ops to list")
    args = p.parse_args()
    tune_allocator()  # as charlm.train does, before JAX's first computation
    setup = perfkit.SETUPS[args.setup]
    tokens, vocab_size = perfkit.load_tokens(args.text)
    cfg = perfkit.charlm_config(setup, vocab_size, args.precision)
    state = create_train_state(cfg, jax.random.key(0))
    batches = perfkit.fixed_batches(tokens, setup, 3 + TRACED_STEPS)
    rng = jax.random.key(1)
    for batch in batches[:3]:  # compile and warm up
        state, metrics = train_step(state, batch, rng, objective=setup.objective)
    jax.block_until_ready(metrics)
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            for batch in batches[3:]:
                state, metrics = train_step(state, batch, rng, objective=setup.objective)
            jax.block_until_ready(metrics)
        trace_file = next(Path(trace_dir).rglob("*perfetto_trace.json.gz"))
        events = json.load(gzip.open(trace_file))
    events = events["traceEvents"] if isinstance(events, dict) else events
    total, calls = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("ph") == "X" and not e["name"].startswith(("$", "ThunkExecutor")):
            total[e["name"]] += e.get("dur", 0)
            calls[e["name"]] += 1
    print(f"{args.setup} ({args.precision}, allocator {allocator_status()}): ms per step by XLA op, "
          f"over {TRACED_STEPS} traced steps")
    for name, us in total.most_common(args.top):
        print(f"{us / TRACED_STEPS / 1000:9.1f} ms  {calls[name] / TRACED_STEPS:6.0f} calls  {name[:90]}")


if __name__ == "__main__":
    main()
