"""Shared pieces of the CPU performance suite (`python -m bench.run`): data, setups, FLOPs, timing.

Imported by every peer process, so it must not import jax, torch or keras: each peer loads
only its own framework, and its peak RSS and thread pools are its own. The corpus is the
book cleaned as charlm cleans it by default (lowercase, Gutenberg header stripped), and every
peer draws the same batches from it with the same seed.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from charlm.config import RunConfig, make_run_config
from charlm.corpus import clean_text, read_text
from charlm.data import Vocab, gather_batch, num_windows, window_starts

DEFAULT_TEXT = "../shared/data/wonderland.txt"
HIDDEN = 256
SEQ_LENGTH = 100
DROPOUT = 0.2
LEARNING_RATE = 1e-3  # Adam, as Keras' default
BATCH_SEED = 1234


@dataclass(frozen=True)
class Setup:
    """One training configuration, as every implementation builds it."""

    preset: str      # the charlm preset it starts from
    layers: int      # stacked LSTM(256) layers
    batch: int       # windows per Adam step
    objective: str   # last: score the char after the window; all: every position
    stride: int      # step between window starts (the epoch's window count)


SETUPS = {
    "seed-small": Setup("seed-small", layers=1, batch=128, objective="last", stride=1),
    "seed-big": Setup("seed-big", layers=2, batch=64, objective="last", stride=1),
    "dense-small": Setup("seed-small", layers=1, batch=128, objective="all", stride=SEQ_LENGTH),
}


def charlm_config(setup: Setup, vocab_size: int, precision: str = "float32") -> RunConfig:
    """charlm's run config for a setup (its preset with the setup's shape, batch and objective)."""
    return make_run_config(setup.preset, vocab_size=vocab_size, objective=setup.objective, stride=setup.stride,
                           batch_size=setup.batch, layers=setup.layers, precision=precision)


def load_tokens(path: str) -> tuple[np.ndarray, int]:
    """The book as int32 ids and its vocabulary size (45 for Alice)."""
    vocab_text = clean_text(read_text(path))
    vocab = Vocab.from_text(vocab_text)
    return vocab.encode(vocab_text), vocab.size


def fixed_batches(tokens: np.ndarray, setup: Setup, count: int) -> list[dict]:
    """`count` batches of random windows (charlm's dict: inputs/targets/weights [B, T]), the same in
    every process: the windows are drawn from a fixed seed."""
    starts = window_starts(len(tokens), SEQ_LENGTH, setup.stride)
    rng = np.random.default_rng(BATCH_SEED)
    picks = rng.choice(starts, size=(count, setup.batch), replace=len(starts) < count * setup.batch)
    return [gather_batch(tokens, row, SEQ_LENGTH) for row in picks]


def scaled_inputs(batch: dict, vocab_size: int) -> np.ndarray:
    """The tutorial's input: id / vocab as one float feature, [B, T, 1]."""
    return (batch["inputs"].astype(np.float32) / vocab_size)[..., None]


def primes(tokens: np.ndarray, streams: int) -> np.ndarray:
    """[streams, 100] prime windows from the book, the same in every process."""
    starts = np.random.default_rng(BATCH_SEED).choice(num_windows(len(tokens), SEQ_LENGTH), size=streams)
    return np.stack([tokens[s:s + SEQ_LENGTH] for s in starts]).astype(np.int32)


def windows_per_epoch(n_tokens: int, setup: Setup) -> int:
    return num_windows(n_tokens, SEQ_LENGTH, setup.stride)


def train_flops(setup: Setup, vocab_size: int) -> float:
    """Analytic FLOPs of one training step: 3x the forward pass (forward + backward ~ 2x forward).

    Forward per window: each LSTM layer does 2*(D+H)*4H per time step (D = 1 for the scaled
    input, H for the layers above); the Dense does 2*H*V per scored position.
    """
    H, T = HIDDEN, SEQ_LENGTH
    lstm = sum(2 * (D + H) * 4 * H for D in [1] + [H] * (setup.layers - 1)) * T
    dense = 2 * H * vocab_size * (T if setup.objective == "all" else 1)
    return 3.0 * setup.batch * (lstm + dense)


def time_steps(step: Callable[[dict], None], batches: list[dict], warmup: int) -> dict:
    """Runs `step` (which must block until its work is done) on each batch; the first `warmup`
    calls are untimed (the very first includes any compilation), the rest give the median."""
    times = []
    for batch in batches:
        t0 = time.perf_counter()
        step(batch)
        times.append(time.perf_counter() - t0)
    timed = times[warmup:]
    return {"first_step_s": times[0], "step_s": statistics.median(timed), "step_times_s": timed}


def time_calls(fn: Callable[[], object], reps: int) -> dict:
    """First call (incl. compilation) and the median of `reps` further calls, in seconds."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"first_s": first, "seconds": statistics.median(times)}


def time_sampler(mode: str, streams: int, chars: int, generate: Callable[[], object], reps: int) -> dict:
    """Times `generate` (which makes `chars` chars in each of `streams` streams and blocks until
    done) with time_calls; chars/s is the aggregate over all streams."""
    timing = time_calls(generate, reps)
    return {"mode": mode, "streams": streams, "chars": chars, **timing,
            "chars_per_s": streams * chars / timing["seconds"]}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


StepMaker = Callable[[Setup, int], Callable[[dict], None]]  # (setup, vocab size) -> step(batch), blocking
Task = Callable[[argparse.Namespace, np.ndarray, int], dict]  # (args, tokens, vocab size) -> record fields


def peer_main(impl: str, make_step: StepMaker, tasks: dict[str, Task], versions: Callable[[], dict]) -> None:
    """The command line every peer shares: one task per process, one JSON line on stdout.

    Every peer has `train` (`make_step` timed on the shared batches); `tasks` adds the rest.
    """
    tasks = {"train": functools.partial(train_task, make_step=make_step), **tasks}
    p = argparse.ArgumentParser(description=f"{impl} measurements for bench.run (one task per process)")
    p.add_argument("task", choices=sorted(tasks))
    p.add_argument("--text", default=DEFAULT_TEXT)
    p.add_argument("--setup", choices=sorted(SETUPS), default="seed-small", help="train: the configuration")
    p.add_argument("--warmup", type=int, default=3, help="train: untimed steps after the first")
    p.add_argument("--steps", type=int, default=20, help="train: timed steps")
    p.add_argument("--chars", type=int, default=1000, help="sample: chars per stateful stream")
    p.add_argument("--window-chars", type=int, default=100, help="sample: chars in window / predict-loop mode")
    p.add_argument("--streams", type=int, default=64, help="sample: streams of the batched run")
    p.add_argument("--reps", type=int, default=3, help="sample/matmul: timed repetitions (matmul: at least 5)")
    p.add_argument("--matmul-n", type=int, default=2048, help="matmul: square size")
    args = p.parse_args()
    t0 = time.perf_counter()
    tokens, vocab_size = load_tokens(args.text)
    record = {"impl": impl, "task": args.task, **tasks[args.task](args, tokens, vocab_size)}
    record.update(versions=versions(), wall_s=time.perf_counter() - t0, peak_rss_mb=peak_rss_mb())
    sys.stdout.write(json.dumps(record) + "\n")


def train_task(args: argparse.Namespace, tokens: np.ndarray, vocab_size: int, make_step: StepMaker) -> dict:
    """Every peer's `train` task: same batches, same timing, same record."""
    setup = SETUPS[args.setup]
    batches = fixed_batches(tokens, setup, 1 + args.warmup + args.steps)
    timing = time_steps(make_step(setup, vocab_size), batches, 1 + args.warmup)
    return {"setup": args.setup, **asdict(setup), "vocab_size": vocab_size,
            "windows_per_epoch": windows_per_epoch(len(tokens), setup), **timing}


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (all cores, from /proc/stat)."""
    with open("/proc/stat") as f:
        jiffies = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...: all but idle and iowait are busy
    return (sum(jiffies[:3]) + sum(jiffies[5:8])) / os.sysconf("SC_CLK_TCK")


def run_child(cmd: list[str], cwd: str, timeout: float, env: dict | None = None) -> dict:
    """Runs `cmd` to completion and returns its exit code, stdout, the tail of its stderr, wall
    seconds and its own peak RSS: os.wait4 reports the rusage of that one child, where
    RUSAGE_CHILDREN would give the maximum over every child waited for so far.

    `other_cores` is the CPU that everything else on the machine used meanwhile, in cores
    (machine busy time minus the child's own, over wall time): above ~0.1 the figures are
    disturbed, and OpenMP peers such as PyTorch slow down many times when a core is taken.
    """
    busy0 = busy_cpu_seconds()
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=err)
        killer = threading.Timer(timeout, p.kill)
        killer.start()
        out = p.stdout.read()
        _, status, usage = os.wait4(p.pid, 0)
        killer.cancel()
        wall = time.perf_counter() - t0
        other = (busy_cpu_seconds() - busy0 - usage.ru_utime - usage.ru_stime) / wall
        p.returncode = os.waitstatus_to_exitcode(status)  # reaped here, so Popen must not wait again
        p.stdout.close()
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    return {"rc": p.returncode, "stdout": out.decode(errors="replace"), "stderr_tail": stderr[-2000:],
            "wall_s": wall, "child_peak_rss_mb": usage.ru_maxrss / 1024,
            "other_cores": max(0.0, other)}
