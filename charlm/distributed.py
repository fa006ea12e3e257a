"""Where the training state and batches live: one device, every local device, or the devices of
several processes (one per host) on JAX's own distributed runtime.

Every process runs the same program (SPMD). `initialize` joins the cluster; `placement` makes
the state a replicated array over all devices and each batch an array split along its batch
axis, of which each process holds only its own rows; XLA inserts the gradient all-reduce. A
decision that reads a clock or a signal is `agreed` by all processes, or one would stop while
the others wait for it in the all-reduce.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import jax
import numpy as np

from charlm.errors import CharlmError

# The flags' environment twins; JAX itself reads JAX_COORDINATOR_ADDRESS (and detects SLURM,
# Open MPI and Kubernetes clusters when the process count and id are not given).
ENV = {"coordinator": "JAX_COORDINATOR_ADDRESS", "num_processes": "JAX_NUM_PROCESSES", "process_id": "JAX_PROCESS_ID"}


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
    """Joins the cluster when a coordinator is given (flag or JAX_COORDINATOR_ADDRESS); returns
    whether this is a multi-process run. Must run before JAX touches a device."""
    coordinator = coordinator or os.environ.get(ENV["coordinator"])
    num_processes = num_processes if num_processes is not None else _env_int("num_processes")
    process_id = process_id if process_id is not None else _env_int("process_id")
    if coordinator is None:
        if num_processes not in (None, 1) or process_id not in (None, 0):
            raise CharlmError("--num-processes and --process-id need --coordinator HOST:PORT (process 0's address)")
        return False
    if num_processes is not None and process_id is not None and not 0 <= process_id < num_processes:
        raise CharlmError(f"--process-id must be in [0, {num_processes}), got {process_id}")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU all-reduce across processes
    try:
        jax.distributed.initialize(coordinator, num_processes, process_id)
    except (ValueError, RuntimeError) as e:
        raise CharlmError(f"cannot join the training cluster at {coordinator} as process {process_id} of "
                          f"{num_processes}: {(str(e).splitlines() or [''])[0][:200]}") from None
    return jax.process_count() > 1


def _env_int(name: str) -> int | None:
    value = os.environ.get(ENV[name])
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise CharlmError(f"{ENV[name]} must be an integer, got {value!r}") from None


def multi_process() -> bool:
    return jax.process_count() > 1


def is_primary() -> bool:
    """Process 0 logs, writes the metrics file and shows progress."""
    return jax.process_index() == 0


def agreed(*values: int) -> tuple[int, ...]:
    """The largest of each value over all processes (a flag set anywhere is set everywhere)."""
    if not multi_process():
        return values
    from jax.experimental import multihost_utils

    gathered = multihost_utils.process_allgather(np.asarray(values, dtype=np.int64))
    return tuple(int(v) for v in np.asarray(gathered).reshape(-1, len(values)).max(axis=0))


def from_primary(value: int) -> int:
    """Process 0's value of a number each process measured for itself (a pace, a fitted horizon)."""
    if not multi_process():
        return value
    from jax.experimental import multihost_utils

    return int(multihost_utils.broadcast_one_to_all(np.asarray(value, dtype=np.int64)))


def barrier(name: str) -> None:
    if multi_process():
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def local_copy(tree):
    """This process's copy of a replicated tree, as arrays it can compute with on its own."""
    if not multi_process():
        return tree
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else x, tree)


@dataclass(frozen=True)
class Placement:
    put_state: Callable   # a host or local tree -> replicated over the run's devices
    put_batch: Callable   # a whole batch (or carry) -> split along axis 0
    devices: int


def placement(batch_size: int, data_parallel: bool | None) -> Placement:
    """How the run's state and batches are placed. One process: over all local devices when
    data_parallel (None: when there are several and the batch splits), else left alone. Several
    processes: always over every device of every process."""
    multi = multi_process()
    devices = jax.devices() if multi else jax.local_devices()
    uneven = batch_size % len(devices) != 0
    if multi and data_parallel is False:
        raise CharlmError("--no-data-parallel cannot be used with several processes: they train one model "
                          "by splitting each batch")
    # Automatic mode falls back to one device (rather than failing) when the batch does not split.
    if not multi and (data_parallel is False or (data_parallel is None and (len(devices) == 1 or uneven))):
        return Placement(lambda tree: tree, lambda tree: tree, 1)
    if uneven:
        raise CharlmError(f"{'training on several processes' if multi else '--data-parallel'} splits each batch "
                          f"over {len(devices)} devices; --batch-size {batch_size} is not a multiple of {len(devices)}")
    mesh = jax.sharding.Mesh(np.array(devices), ("data",))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    if not multi:
        return Placement(lambda tree: jax.device_put(tree, replicated), lambda tree: jax.device_put(tree, split),
                         len(devices))
    # This process's rows of a batch: the ones its devices hold (contiguous, in the mesh's order).
    rows = [index[0] for index in split.addressable_devices_indices_map((batch_size,)).values()]
    lo, hi = min(r.start or 0 for r in rows), max(batch_size if r.stop is None else r.stop for r in rows)

    def put_state(tree):
        host = jax.tree.map(np.asarray, local_copy(tree))
        return jax.tree.map(lambda x: jax.make_array_from_callback(x.shape, replicated, lambda i: x[i]), host)

    def put_batch(tree):
        return jax.tree.map(lambda x: jax.make_array_from_process_local_data(
            split, np.asarray(x)[lo:hi], np.shape(x)), tree)

    return Placement(put_state, put_batch, len(devices))
