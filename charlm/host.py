"""Host (CPU) runtime settings that make a train step faster: glibc's allocator and XLA:CPU options.

**The allocator.** XLA:CPU allocates one scratch buffer per execution of a jitted step (157 MB
for seed-small: the scan's saved gates and states) and frees it at the end. The allocation
comes from an XLA worker thread, and glibc serves a request over 64 MB in a thread's arena
with a fresh `mmap`, so every step page-faults and zero-fills those pages again (about 38k
faults a step; on a 2-core CPU the settings below took a fifth off seed-small's recurrence
forward and backward, and 8 % off its whole train step; BENCHMARKS.md). `tune_allocator`,
called by train.py and `charlm.train`, asks glibc (`mallopt`) to serve every thread from the main heap
(M_ARENA_MAX 1), never to `mmap` (M_MMAP_MAX 0) and to keep up to 1 GiB of freed heap
(M_TRIM_THRESHOLD), so the buffer is reused from step to step. The price of one arena for all
threads: every XLA compile is slower (a seed-small first step 2.4 s against 1.7 s on a 2-core
Xeon) and so is 64-stream sampling (about 8 %), while train steps there were 13-17 % faster.
So only training tunes: the train CLI and `charlm.train` call `tune_allocator` first, and
sampling, scoring and serving leave glibc as it is. It acts only on threads started
afterwards, so it must run before JAX's first computation (a loop of your own over
`train_step`: call it first, or set `GLIBC_ENV`'s variables MALLOC_ARENA_MAX=1
MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1073741824 in the environment).
`CHARLM_ALLOCATOR=system` leaves glibc as it is (the tests set it: they are mostly compiles).
Other C libraries (macOS, musl) are left alone.

**XLA:CPU compile options** (`COMPILER_OPTIONS`, passed to the train steps' `jax.jit`): copy
insertion with region analysis drops the per-step copies of the scan's carried state. Other
backends ignore `xla_cpu_*` options.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

ENV = "CHARLM_ALLOCATOR"
TRIM_THRESHOLD_BYTES = 1 << 30
# (the variable glibc reads at process start, its mallopt parameter from malloc.h, the value)
_SETTINGS = (("MALLOC_ARENA_MAX", -8, 1), ("MALLOC_MMAP_MAX_", -4, 0),
             ("MALLOC_TRIM_THRESHOLD_", -1, TRIM_THRESHOLD_BYTES))
GLIBC_ENV = {name: str(value) for name, _, value in _SETTINGS}

COMPILER_OPTIONS = {"xla_cpu_copy_insertion_use_region_analysis": True}

_status = "not tuned yet"


def tune_allocator() -> str:
    """Applies the allocator settings above (once; later calls only report). Returns the status:
    'tuned', 'tuned late (...)', or why it was left alone."""
    global _status
    if _status != "not tuned yet":
        return _status
    if os.environ.get(ENV, "tuned") == "system":
        _status = f"system ({ENV}=system)"
        return _status
    libc = _glibc()
    if libc is None:
        _status = "system (not glibc)"
        return _status
    ok = all(libc.mallopt(param, value) == 1 for _, param, value in _SETTINGS)
    _status = "tuned" if ok else "system (mallopt refused)"
    if ok and _jax_started():
        _status = "tuned late (JAX was already running: its threads keep their own arenas)"
    return _status


def allocator_status() -> str:
    return _status


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
    except (OSError, AttributeError):  # musl and others have no gnu_get_libc_version
        return None
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return libc


def _jax_started() -> bool:
    if "jax" not in sys.modules:
        return False
    from jax._src import xla_bridge
    return xla_bridge.backends_are_initialized()
