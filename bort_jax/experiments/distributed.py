"""Data-parallel training on several processes with ``jax.distributed``.

:func:`bort_jax.experiments.loop.train` runs on JAX's multi-controller
runtime: every process runs the same program, on a global mesh of all the
processes' devices. A :class:`DataParallel` layout places the training state
(the model, the optimizer state and the running metrics) replicated on every
device — or, with ``shard_params``, each parameter and its optimizer state
split along one axis over the devices (FSDP-style: XLA gathers a weight where
a step needs it whole) — and splits each global batch along the mesh's
``"data"`` axis: the batch of step ``t`` is still rows ``t·B … (t+1)·B``
of the ``(seed, epoch)`` permutation, so N processes see the same global
batches as one process, and each process feeds only the rows of its own
devices
(``jax.make_array_from_process_local_data``). The gradient, the loss sums and
the correct counts are reduced across processes by XLA inside the jitted
step. Process 0 alone opens, locks and writes the run folder; every process
takes part in orbax's checkpoint saves and restores, so resuming works with
any number of processes that gives the same mesh size.

The same code runs on one machine (CPU, with gloo collectives) and on a
GPU/TPU cluster. Launch one process per host (or per GPU) with the
coordinator's address, the process count and each process's id, as flags or
in the environment (``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``,
``JAX_PROCESS_ID``); on SLURM, Open MPI and Cloud TPU, ``--distributed``
alone lets JAX detect them. Two processes on localhost, four CPU devices
each::

  for i in 0 1; do
    JAX_NUM_CPU_DEVICES=4 bort-jax train --out runs/dp \\
      --coordinator 127.0.0.1:12355 --num-processes 2 --process-id $i &
  done; wait

Each process says at once what it waits for, and gives up with one line
and exit status 2 when the processes have not all met at the coordinator
within ``--coordinator-timeout`` seconds (300 by default); a bad address,
count or id is refused before any wait.

``--data-parallel`` runs the same layout on the devices of one process (e.g.
the GPUs of one machine) without ``jax.distributed``; ``--shard-params`` adds
the sharded parameters to either (alone, it implies ``--data-parallel``);
without any of these flags, training stays on one device as before.
"""

from __future__ import annotations

import argparse
import json
import math
import threading
import time
from typing import Any, Callable, TypeVar

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from bort_jax.experiments import launch
from bort_jax.experiments.launch import DistributedError

T = TypeVar("T")

# jax.distributed aborts the process (SIGABRT, no Python exception) at its
# own deadline; ours comes first by this much, so a timeout is one line.
_ABORT_MARGIN_S = 10


def initialize(args: argparse.Namespace) -> "DataParallel | None":
  """Starts ``jax.distributed`` as the flags of :func:`add_arguments` ask.

  Call it before anything touches a device. Without ``--distributed``, a
  process count needs the coordinator's address and this process's id
  (flags or environment); every launch flag is checked before any wait.

  Args:
    args: the parsed flags.

  Returns:
    The :class:`DataParallel` layout to pass to ``train(parallel=...)``, or
    ``None`` for a one-device run.

  Raises:
    DistributedError: a launch flag is refused, the processes did not
      meet at the coordinator in time (see :func:`start`), or a process was
      given another ``--num-processes`` than process 0.
  """
  coordinator = launch.from_env(args.coordinator, "coordinator", str)
  num_processes = launch.from_env(args.num_processes, "num_processes", int)
  process_id = launch.from_env(args.process_id, "process_id", int)
  shard = getattr(args, "shard_params", False)
  if args.distributed or num_processes is not None:
    if not args.distributed:
      launch.check_launch(coordinator, num_processes, process_id)
    # The timeout only when given, so that start's default stays the one.
    timeout = getattr(args, "coordinator_timeout", None)
    options = {} if timeout is None else {"timeout_s": timeout}
    start(coordinator, num_processes, process_id, **options)
    layout = DataParallel(shard_params=shard)
    # JAX takes process 0's count: another one given to a process passed.
    layout.check_alike("launch flags", {"--num-processes": num_processes})
    return layout
  if args.data_parallel or shard:
    return DataParallel(shard_params=shard)
  return None


def start(coordinator_address: str | None = None,
          num_processes: int | None = None,
          process_id: int | None = None,
          *, timeout_s: int = 300) -> None:
  """``jax.distributed.initialize``, with gloo collectives for CPU devices.

  Arguments left ``None`` are detected by JAX (SLURM, Open MPI, Cloud TPU).
  It says at once what it waits for. A process other than 0 first waits
  for the coordinator to accept a connection, and raises if it does not by
  the deadline; past the deadline, a process still waiting for the others
  prints one line and exits with status 2 (``jax.distributed`` would abort
  it).

  Args:
    coordinator_address: process 0's ``host:port``.
    num_processes: the number of processes.
    process_id: this process's id.
    timeout_s: how long to wait, in seconds, for all the processes to meet
      at the coordinator.

  Raises:
    DistributedError: a bad address, count or id (the process id outside
      ``0 … num_processes - 1``), no coordinator within ``timeout_s``, or
      ``jax.distributed`` refused the settings.
  """
  deadline = time.monotonic() + launch.check_timeout(timeout_s)
  launch.check_counts(num_processes, process_id)
  address = None
  if coordinator_address is not None:
    address = launch.parse_address(coordinator_address)
  if num_processes is not None and process_id is not None:
    who = f"process {process_id} of {num_processes}"
  else:
    who = "settings from the cluster"
  where = (coordinator_address if address else "the cluster's coordinator"
           ) + f" within {timeout_s} s"
  if process_id == 0:
    print(f"starting the coordinator at {coordinator_address}; waiting up "
          f"to {timeout_s} s for the other processes ({who})...", flush=True)
  elif address is not None:
    print(f"waiting up to {timeout_s} s for the coordinator at "
          f"{coordinator_address} ({who})...", flush=True)
  else:
    print(f"waiting up to {timeout_s} s for jax.distributed ({who})...",
          flush=True)
  if address is not None and process_id not in (0, None):
    launch.wait_for_coordinator(*address, deadline, where, who)
  # Only the CPU client reads it; without it CPU collectives across
  # processes are not implemented.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  left = max(1.0, deadline - time.monotonic())
  watchdog = threading.Timer(left, launch.exit_on_timeout, args=(
      f"the processes did not all meet at {where} ({who}); start all of "
      "them with the same --coordinator and --num-processes and each with "
      "its own --process-id, or raise --coordinator-timeout.",))
  watchdog.daemon = True
  watchdog.start()
  try:
    jax.distributed.initialize(
        coordinator_address, num_processes, process_id,
        initialization_timeout=math.ceil(left) + _ABORT_MARGIN_S)
  except (ValueError, TypeError, RuntimeError) as e:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    raise DistributedError(f"jax.distributed refused to start: {first}") \
        from None
  finally:
    watchdog.cancel()


def _put(x: Any, sharding: NamedSharding) -> jax.Array:
  """``x`` (this process's copy) laid out as ``sharding``, from the host.

  ``jax.device_put`` of a device array onto a mesh of one device per
  process made arrays that orbax could not save (their shards raised), and
  it refuses PRNG keys across processes; a host copy (the keys' data)
  goes through both.
  """
  if jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):
    return jax.random.wrap_key_data(_put(jax.random.key_data(x), sharding),
                                    impl=jax.random.key_impl(x))
  return jax.device_put(np.asarray(x), sharding)


class DataParallel:
  """A data-parallel layout over a 1-D mesh of devices (all, by default).

  Args:
    devices: the mesh's devices; default ``jax.devices()`` (every process's).
    axis: the mesh axis the batch is split along.
    shard_params: split each array of the model and optimizer state along
      one axis over the mesh (its largest axis that the device count
      divides; arrays with none stay replicated), instead of replicating
      it. The results are those of the replicated layout up to float
      reassociation; each device holds about ``1/size`` of the state.

  Attributes:
    mesh: the ``jax.sharding.Mesh``.
    replicated: the sharding of the data sets and the metrics (and of the
      state unless ``shard_params``).
    batch: the sharding of a global batch (split along ``axis``).

  Examples:
    >>> import numpy as np
    >>> from bort_jax.experiments.distributed import DataParallel
    >>> layout = DataParallel()
    >>> index = layout.batch_index(np.arange(8 * layout.size))
    >>> index.shape == (8 * layout.size,), index.sharding == layout.batch
    (True, True)
    >>> {shard.data.shape for shard in index.addressable_shards}
    {(8,)}
    >>> sharded = DataParallel(shard_params=True)
    >>> placed = sharded.place(np.zeros((3, 8 * layout.size)))
    >>> {shard.data.shape for shard in placed.addressable_shards}  # 1/N each
    {(3, 8)}
  """

  def __init__(self, devices: Any = None, axis: str = "data", *,
               shard_params: bool = False):
    devices = jax.devices() if devices is None else list(devices)
    self.axis = axis
    self.shard_params = bool(shard_params)
    self.mesh = jax.sharding.Mesh(np.asarray(devices), (axis,))
    self.replicated = NamedSharding(self.mesh, PartitionSpec())
    self.batch = NamedSharding(self.mesh, PartitionSpec(axis))

  @property
  def size(self) -> int:
    """The number of devices a batch is split over."""
    return self.mesh.size

  @property
  def primary(self) -> bool:
    """Whether this process writes the run folder (process 0)."""
    return jax.process_index() == 0

  @property
  def multiprocess(self) -> bool:
    """Whether the mesh spans several processes."""
    return jax.process_count() > 1

  def check_batch_size(self, batch_size: int) -> None:
    """Refuses a batch that does not split evenly over the devices.

    Raises:
      DistributedError: ``batch_size`` is not a multiple of :attr:`size`.
    """
    if batch_size % self.size:
      raise DistributedError(
          f"--batch-size {batch_size} does not split over {self.size} "
          f"devices; use a multiple of {self.size}.")

  def local_rows(self, batch_size: int) -> slice:
    """The rows of a global batch that this process's devices hold."""
    spans = sorted(
        (index[0].start or 0, index[0].stop or batch_size)
        for index in self.batch.addressable_devices_indices_map(
            (batch_size,)).values())
    for (_, stop), (start, _) in zip(spans, spans[1:]):
      if start != stop:  # the mesh interleaves processes: not one slice
        raise DistributedError(
            "This process's devices do not hold one contiguous part of the "
            "batch; order the mesh's devices by process.")
    return slice(spans[0][0], spans[-1][1])

  def batch_index(self, index: np.ndarray) -> jax.Array:
    """The global batch ``index`` split over the mesh, from this process's rows.

    Every process passes the same global ``index`` (the epoch's permutation
    makes it from the seed alone) and contributes only its own rows.
    """
    index = np.asarray(index)
    local = index[self.local_rows(index.shape[0])]
    return jax.make_array_from_process_local_data(self.batch, local,
                                                  index.shape)

  def replicate(self, tree: T) -> T:
    """A pytree of arrays, equal on every process, replicated on the mesh."""
    return jax.tree.map(lambda x: _put(x, self.replicated), tree)

  def state_sharding(self, x: Any) -> NamedSharding:
    """Where one array of the training state lives.

    Replicated, unless ``shard_params``: then split along the largest axis
    whose length the device count divides (the last such axis on a tie),
    replicated when there is none.
    """
    shape = np.shape(x)
    if not self.shard_params or self.size == 1:
      return self.replicated
    axes = [i for i, n in enumerate(shape) if n and n % self.size == 0]
    if not axes:
      return self.replicated
    split = max(axes, key=lambda i: (shape[i], i))
    # No trailing Nones: XLA returns the spec in that form, and an equal
    # spec spelt otherwise would compile the step a second time.
    return NamedSharding(
        self.mesh, PartitionSpec(*[None] * split, self.axis))

  def place(self, tree: T) -> T:
    """The training state (equal on every process) on the mesh, as
    :meth:`state_sharding` lays out each array."""
    return jax.tree.map(lambda x: _put(x, self.state_sharding(x)), tree)

  def any(self, flag: bool) -> bool:
    """Whether ``flag`` is true on any process (all processes must call)."""
    if not self.multiprocess:
      return bool(flag)
    flags = multihost_utils.process_allgather(np.asarray(flag, np.int32))
    return bool(np.any(flags))

  def check_alike(self, what: str, value: dict[str, Any] | None = None, *,
                  error: BaseException | None = None) -> None:
    """Refuses a run whose processes were given other ``value`` than process 0.

    Every process applies its own update to its copy of the replicated
    state, so processes started with other settings (a learning rate) or
    data would train copies that drift apart, silently. Every process
    must call it at the same point: a process that failed to compute its
    ``value`` passes its ``error`` instead, so that the others stop with it
    rather than wait for it.

    Args:
      what: what ``value`` is, for the message (``"settings"``).
      value: a JSON dict (a config's fields, a data fingerprint).
      error: this process's failure to compute ``value``, raised here after
        the others are told.

    Raises:
      DistributedError: on every process, naming the first process that
        failed or differs, and the entries that differ.
    """
    if not self.multiprocess:
      if error is not None:
        raise error
      return
    gathered = self._gather(_outcome(value, error))
    if error is not None:
      raise error
    for i, other in enumerate(gathered):
      if "error" in other:
        raise DistributedError(f"Process {i} stopped the run: "
                               f"{other['error']}")
    first = gathered[0]["value"]
    for i, other in enumerate(g["value"] for g in gathered):
      keys = sorted(k for k in {*first, *other}
                    if first.get(k) != other.get(k))
      if keys:
        shown = ", ".join(f"{k} {other.get(k)!r} vs {first.get(k)!r}"
                          for k in keys[:3])
        raise DistributedError(
            f"Process {i} was given other {what} than process 0 ({shown}"
            f"{', …' if len(keys) > 3 else ''}); start every process with "
            "the same flags and data.")

  def on_primary(self, fn: Callable[[], T], encode: Callable[[T], int]
                 ) -> tuple[T | None, int]:
    """Runs ``fn`` on process 0 alone and tells every process how it went.

    Args:
      fn: what process 0 does (e.g. open and lock the run folder).
      encode: maps ``fn``'s result to the integer the other processes get.

    Returns:
      ``(result, code)``: ``fn``'s result on process 0 (``None`` elsewhere)
      and the code every process agrees on.

    Raises:
      The error ``fn`` raised, on process 0; :class:`DistributedError`
      with its message on the other processes.
    """
    result, error, code = None, None, 0
    if self.primary:
      try:
        result = fn()
        code = encode(result)
      except Exception as e:  # told to the others, then raised here
        error = e
    if not self.multiprocess:
      if error is not None:
        raise error
      return result, code
    told = self._gather(_outcome(code, error))[0]  # process 0's
    if error is not None:
      raise error
    if "error" in told:
      raise DistributedError(f"Process 0 stopped the run: {told['error']}")
    return result, int(told["value"])

  def _gather(self, obj: Any) -> list[Any]:
    """``obj`` (JSON) of every process, by process index (all must call)."""
    text = np.frombuffer(json.dumps(obj, sort_keys=True).encode(), np.uint8)
    size = int(np.max(multihost_utils.process_allgather(np.int32(text.size))))
    padded = np.zeros(size, np.uint8)
    padded[:text.size] = text
    rows = np.asarray(multihost_utils.process_allgather(padded))
    return [json.loads(bytes(row).rstrip(b"\0")) for row in rows]


def _outcome(value: Any, error: BaseException | None) -> dict[str, Any]:
  """What a process tells the others: its value, or its error in one line."""
  if error is not None:
    return {"error": f"{type(error).__name__}: {error}"}
  return {"value": value}
