"""Scale-out on JAX's own runtime: the device mesh, shardings for batches, parameters and optimizer state, global
batches from each process's rows, and multi-host start-up.

The mesh has two axes, ``("data", "fsdp")``. A batch's leading axis is split over both, so every device computes
its own rows. With ``fsdp > 1`` every parameter, and with it its optimizer moments, is also split over ``"fsdp"``
on its largest axis that divides evenly (FSDP / ZeRO-3): each device stores ``1/fsdp`` of the weights and the
Adam state. The step itself is written for one device; ``jit``'s SPMD partitioner inserts the collectives (the
gradient all-reduce or reduce-scatter, the parameter all-gathers), and because the step's loss normalisers are
sums over the global batch, the sharded step computes the single-device step.

With several processes (``initialize_distributed``), each feeds only its own rows (``data.Plan`` gives process
``k`` its slice of every global batch) and :func:`global_batch` stitches them into one array over the mesh.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXES = ("data", "fsdp")


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, *, auto: bool = False) -> bool:
    """Join a multi-process run when asked: ``coordinator`` (``host:port`` of process 0) given, ``auto``, or
    ``JAX_COORDINATOR_ADDRESS`` set. ``auto`` alone lets JAX detect the rest (TPU pods, SLURM, Open MPI).
    Returns whether this process is part of a multi-process run. Must run before anything touches a device.
    """
    if jax.distributed.is_initialized():
        return True
    if not (coordinator or auto or os.environ.get("JAX_COORDINATOR_ADDRESS")):
        return False
    # CPU processes need a cross-process collectives backend, chosen before the CPU client starts (a no-op
    # where gloo is already the default; GPUs and TPUs have their own).
    if jax.config.jax_cpu_collectives_implementation in (None, "none"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes, process_id)
    return True


def make_mesh(fsdp: int = 1) -> Mesh:
    """A ``(data, fsdp)`` mesh over every device of every process: groups of ``fsdp`` devices share each
    parameter, the groups are data-parallel. Auto axes: ``jit`` propagates shardings (GSPMD)."""
    n = jax.device_count()
    if fsdp < 1 or n % fsdp:
        raise ValueError(f"fsdp={fsdp} does not divide the {n} devices")
    return jax.make_mesh((n // fsdp, fsdp), AXES, axis_types=(AxisType.Auto,) * 2)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Rows over every device (both axes); the other dimensions whole."""
    return NamedSharding(mesh, P(AXES))


def param_spec(shape: tuple[int, ...], fsdp: int) -> P:
    """A parameter's (or optimizer moment's) layout: split on its largest axis that ``fsdp`` divides, else whole."""
    if fsdp > 1:
        for d in sorted(range(len(shape)), key=lambda d: -shape[d]):  # largest first; ties: the earlier axis
            if shape[d] % fsdp == 0:
                return P(*[None] * d, "fsdp")  # no trailing Nones: the form jit hands back
    return P()


def state_shardings(mesh: Mesh, state):
    """The sharding of every array in an nnx state (or any pytree of arrays): :func:`param_spec` by shape, so an
    optimizer moment lands exactly where its parameter is; scalars (step counts, RNG keys) are replicated."""
    return jax.tree.map(lambda x: NamedSharding(mesh, param_spec(x.shape, mesh.shape["fsdp"])), state)


def _put(x, sharding):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):  # device_put wants the raw key words across processes
        return jax.random.wrap_key_data(jax.device_put(jax.random.key_data(x), sharding), impl=jax.random.key_impl(x))
    return jax.device_put(x, sharding)


def shard(mesh: Mesh, *objs) -> None:
    """Move the whole state of nnx objects (modules, ``nnx.Optimizer``) onto ``mesh`` in place.

    Every process must hold the same values (the same seed): with several processes ``device_put`` checks it.
    Build the optimizer after sharding the model, so its moments are created sharded (``zeros_like``).
    """
    for obj in objs:
        state = nnx.state(obj)
        nnx.update(obj, jax.tree.map(_put, state, state_shardings(mesh, state)))


def constrain(*objs) -> None:
    """Inside a jitted function under ``jax.set_mesh(mesh)``: pin the state of nnx objects to the layout
    :func:`shard` gave it, so the updated parameters and moments come out sharded as they went in rather than as
    the partitioner happens to choose. Without a mesh in context, nothing to do."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return
    for obj in objs:
        state = nnx.state(obj)
        specs = jax.tree.map(lambda x: param_spec(x.shape, mesh.shape["fsdp"]), state)
        nnx.update(obj, jax.lax.with_sharding_constraint(state, specs))


def global_array(mesh: Mesh, local) -> jax.Array:
    """A batch-sharded array over the whole mesh from this process's rows: the global array holds every process's
    rows, each device a slice of its own process's."""
    return jax.make_array_from_process_local_data(batch_sharding(mesh), np.asarray(local))


def global_batch(mesh: Mesh, local: dict) -> dict:
    """:func:`global_array` of every value of a dict of this process's rows."""
    return {k: global_array(mesh, v) for k, v in local.items()}


def local_rows(x: jax.Array) -> np.ndarray:
    """This process's rows of a batch-sharded array, in the order :func:`global_batch` took them from it."""
    parts = {s.index[0].start or 0: s.data for s in x.addressable_shards}  # replicas, if any, collapse
    return np.concatenate([np.asarray(parts[k]) for k in sorted(parts)])


def process_sum(counts) -> np.ndarray:
    """Element-wise sum of a small vector of counts over all processes (every process gets the total)."""
    counts = np.asarray(counts, np.int32)  # what the allgather carries without jax_enable_x64
    if jax.process_count() == 1:
        return counts
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(counts)).sum(axis=0)


__all__ = ["AXES", "batch_sharding", "constrain", "global_array", "global_batch", "initialize_distributed",
           "local_rows", "make_mesh", "param_spec", "process_sum", "shard", "state_shardings"]
