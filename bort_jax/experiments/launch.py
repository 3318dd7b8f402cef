"""The launch flags of a multi-process run, and their checks (no JAX).

``bort-jax train`` takes them (:func:`add_arguments`) without importing JAX,
so that ``--help`` answers at once; :mod:`bort_jax.experiments.distributed`
starts ``jax.distributed`` with them.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from typing import Any, Callable

from bort_jax.experiments import errors

#: The environment variables read when the flags are not given.
ENVIRONMENT = {"coordinator": "JAX_COORDINATOR_ADDRESS",
               "num_processes": "JAX_NUM_PROCESSES",
               "process_id": "JAX_PROCESS_ID"}


class DistributedError(errors.ExperimentError):
  """A multi-process run cannot go on (bad layout, or process 0 failed)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """Adds the launch flags of a multi-process run to ``parser``.

  Args:
    parser: the ``bort-jax train`` parser.

  Examples:
    >>> import argparse
    >>> from bort_jax.experiments import launch
    >>> parser = argparse.ArgumentParser()
    >>> launch.add_arguments(parser)
    >>> args = parser.parse_args(["--coordinator", "127.0.0.1:1234",
    ...                           "--num-processes", "2", "--process-id", "1"])
    >>> args.coordinator, args.num_processes, args.process_id
    ('127.0.0.1:1234', 2, 1)
  """
  group = parser.add_argument_group(
      "multi-process training (jax.distributed)")
  group.add_argument(
      "--coordinator", metavar="HOST:PORT", default=None,
      help="address of process 0's coordinator (default: "
      f"${ENVIRONMENT['coordinator']})")
  group.add_argument(
      "--num-processes", type=int, metavar="N", default=None,
      help=f"number of processes (default: ${ENVIRONMENT['num_processes']})")
  group.add_argument(
      "--coordinator-timeout", type=_seconds, metavar="S", default=None,
      help="give up, with an error, when the processes have not all met at "
      "the coordinator within S seconds (default: 300)")
  group.add_argument(
      "--process-id", type=int, metavar="I", default=None,
      help=f"this process's id, 0..N-1 (default: "
      f"${ENVIRONMENT['process_id']})")
  group.add_argument(
      "--distributed", action="store_true",
      help="start jax.distributed with the cluster's own settings "
      "(SLURM, Open MPI, Cloud TPU)")
  group.add_argument(
      "--data-parallel", action="store_true",
      help="split each batch over this process's devices (one process)")
  group.add_argument(
      "--shard-params", action="store_true",
      help="split each parameter and its optimizer state over the devices "
      "along one axis, instead of a copy per device (FSDP-style; implies "
      "--data-parallel)")


def _seconds(text: str) -> int:
  """An argparse type: a positive whole number of seconds."""
  try:
    value = int(text)
  except ValueError:
    value = 0
  if value < 1:
    raise argparse.ArgumentTypeError(
        f"expected a positive whole number of seconds, got {text!r}")
  return value


def from_env(value: Any, name: str, parse: Callable[[str], Any]) -> Any:
  """A flag's value, else its environment variable's (:data:`ENVIRONMENT`),
  parsed; ``None`` when neither is set."""
  if value is not None:
    return value
  variable = ENVIRONMENT[name]
  text = os.environ.get(variable)
  if text in (None, ""):
    return None
  try:
    return parse(text)
  except ValueError:
    raise DistributedError(
        f"${variable} must be an integer, got {text!r}.") from None


def parse_address(address: Any) -> tuple[str, int]:
  """The ``(host, port)`` of a coordinator's ``HOST:PORT``.

  Args:
    address: ``"host:port"``; an IPv6 host in brackets (``"[::1]:1234"``).

  Returns:
    The host (without brackets) and the port, in 1 … 65535.

  Raises:
    DistributedError: ``address`` is not ``HOST:PORT`` with such a port.

  Examples:
    >>> from bort_jax.experiments.launch import parse_address
    >>> parse_address("127.0.0.1:12355"), parse_address("[::1]:80")
    (('127.0.0.1', 12355), ('::1', 80))
    >>> parse_address("127.0.0.1:0")
    Traceback (most recent call last):
    ...
    bort_jax.experiments.launch.DistributedError: --coordinator must be HOST:PORT ...
  """
  host, _, port = str(address).rpartition(":")
  host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
  if host and port.isdigit() and 1 <= int(port) <= 65535:
    return host, int(port)
  raise DistributedError(
      "--coordinator must be HOST:PORT with a port in 1..65535 (process 0's "
      f"address, e.g. 127.0.0.1:12355), got {address!r}.")


def check_launch(coordinator: Any, num_processes: Any,
                 process_id: Any) -> None:
  """Refuses an explicit launch (no cluster detection) that lacks a part."""
  check_counts(num_processes, process_id)
  if coordinator is None:
    raise DistributedError(
        f"--num-processes {num_processes} needs --coordinator HOST:PORT "
        f"(process 0's address; or ${ENVIRONMENT['coordinator']}), or "
        "--distributed to let JAX detect the cluster.")
  if process_id is None:
    raise DistributedError(
        f"--num-processes {num_processes} needs --process-id, this "
        f"process's id in 0..{num_processes - 1} (or "
        f"${ENVIRONMENT['process_id']}).")
  parse_address(coordinator)


def check_counts(num_processes: Any, process_id: Any) -> None:
  """Refuses a process count below 1 or an id outside 0 … count − 1."""
  for flag, value, low in (("--num-processes", num_processes, 1),
                           ("--process-id", process_id, 0)):
    if value is not None and (isinstance(value, bool) or not isinstance(
        value, int) or value < low):
      raise DistributedError(
          f"{flag} must be an integer of at least {low}, got {value!r}.")
  if num_processes is not None and process_id is not None and not (
      process_id < num_processes):
    raise DistributedError(
        f"--process-id {process_id} is outside 0..{num_processes - 1} "
        f"(--num-processes {num_processes}).")


def wait_for_coordinator(host: str, port: int, deadline: float,
                         where: str, who: str) -> None:
  """Returns once ``host:port`` accepts a TCP connection, by ``deadline``.

  jax.distributed would wait as long, then abort the process without a
  Python exception; this check makes an unreachable coordinator an error.
  """
  while True:
    left = deadline - time.monotonic()
    try:
      with socket.create_connection((host, port),
                                    timeout=max(0.1, min(1.0, left))):
        return
    except OSError as e:
      error = e
    left = deadline - time.monotonic()
    if left <= 0:
      reason = getattr(error, "strerror", None) or error
      raise DistributedError(
          f"no coordinator answered at {where} ({who}: {reason}); start "
          "process 0 first, check --coordinator, or raise "
          "--coordinator-timeout.")
    time.sleep(min(0.25, left))


def exit_on_timeout(message: str) -> None:
  """The watchdog's end: one line, exit status 2, no XLA abort dump."""
  sys.stdout.flush()
  sys.stderr.write(f"bort-jax train: error: {message}\n")
  sys.stderr.flush()
  os._exit(2)  # the main thread is inside jax.distributed and cannot raise


def check_timeout(timeout_s: Any) -> int:
  """``--coordinator-timeout``: a positive whole number of seconds."""
  if isinstance(timeout_s, bool) or not isinstance(timeout_s, int) or (
      timeout_s < 1):
    raise DistributedError(
        "--coordinator-timeout must be a positive whole number of seconds, "
        f"got {timeout_s!r}.")
  return timeout_s
