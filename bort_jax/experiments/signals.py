"""Stopping a run cleanly on SIGINT (Ctrl-C) or SIGTERM (SLURM, Kubernetes).

The first signal asks the loop to stop after the current step, save a
checkpoint and return; a second one raises ``KeyboardInterrupt`` at once.
The processes of a multi-process run stop together: they agree on a request
(one process's is enough) every :data:`AGREE_EVERY` steps. A request held
while another is entered (a sweep around its runs) is shared: the inner one
starts with the outer's signal, and hands its own back when it ends.

A command stopped by a signal exits with :func:`exit_status` (130 for
SIGINT, 143 for SIGTERM, as a shell reports a process the signal killed);
:class:`Interrupted` carries the signal out of a sweep.
"""

from __future__ import annotations

import signal
import threading
from typing import Callable

#: How often (in steps) the processes of a multi-process run agree on a stop
#: request: agreeing is a blocking collective, so not on every step.
AGREE_EVERY = 10

#: What a process of a multi-process run reports when another process got
#: the signal (see :attr:`StopRequest.stopped_by`).
PEER = "peer"


def exit_status(stopped_by: str | None) -> int:
  """The exit status of a command stopped by ``stopped_by``: 128 + signal.

  Args:
    stopped_by: ``"SIGINT"``, ``"SIGTERM"``, or :data:`PEER` (another
      process of the run got the signal).

  Returns:
    130 for SIGINT, 143 for SIGTERM and for a peer's signal (job schedulers
    stop every process with SIGTERM).

  Examples:
    >>> from bort_jax.experiments.signals import exit_status
    >>> exit_status("SIGINT"), exit_status("SIGTERM")
    (130, 143)
  """
  if stopped_by not in ("SIGINT", "SIGTERM", PEER):
    raise ValueError(f"stopped_by must be 'SIGINT', 'SIGTERM' or {PEER!r}, "
                     f"got {stopped_by!r}.")
  name = "SIGTERM" if stopped_by == PEER else stopped_by
  return 128 + signal.Signals[name].value


class Interrupted(Exception):
  """A signal stopped a sweep; what ran is saved, nothing is half-recorded.

  Args:
    message: one line for the user: what stopped and how to continue.
    stopped_by: the signal's name (see :func:`exit_status`).

  Attributes:
    stopped_by: the signal's name.
    exit_status: the command's exit status (:func:`exit_status`).
  """

  def __init__(self, message: str, stopped_by: str):
    super().__init__(message)
    self.stopped_by = stopped_by
    self.exit_status = exit_status(stopped_by)


class StopRequest:
  """Turns the first SIGINT or SIGTERM into "stop after this step".

  Args:
    agree: for a multi-process run, returns whether any process has a
      request (every process calls it at the same steps); ``None`` for one
      process.

  Attributes:
    requested: the signal's name (``"SIGINT"``, ``"SIGTERM"``) once one
      came, else ``None``.
    stopping: whether the run stops (this process's request, or with
      ``agree``, the processes' agreed one).
    stopped_by: :attr:`requested`, or :data:`PEER` when the processes
      agreed on another process's request, or ``None``.

  Examples:
    >>> import signal
    >>> from bort_jax.experiments.signals import StopRequest
    >>> with StopRequest() as stop:
    ...   signal.raise_signal(signal.SIGTERM)
    >>> stop.requested
    'SIGTERM'
  """

  SIGNALS = (signal.SIGINT, signal.SIGTERM)

  def __init__(self, agree: Callable[[bool], bool] | None = None):
    self.requested = None
    self._agree = agree
    self._agreed = False
    self._previous = {}

  @property
  def stopped_by(self) -> str | None:
    """This process's signal, :data:`PEER` for an agreed request, or None."""
    if self.requested is not None:
      return self.requested
    return PEER if self.stopping else None

  @property
  def stopping(self) -> bool:
    """Whether the run stops (see the class docstring)."""
    if self._agree is None:
      return self.requested is not None
    return self._agreed

  def should_stop(self, step: int) -> bool:
    """Whether to stop after ``step`` (agreed every :data:`AGREE_EVERY`)."""
    if self._agree is not None and not self._agreed and (
        step % AGREE_EVERY == 0):
      self._agreed = self._agree(self.requested is not None)
    return self.stopping

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in self.SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
      outer = self._outer()
      if outer is not None and self.requested is None:
        self.requested = outer.requested
    return self

  def _outer(self) -> "StopRequest | None":
    """The request this one is nested in (its handler was ours), if any."""
    for handler in self._previous.values():
      owner = getattr(handler, "__self__", None)
      if isinstance(owner, StopRequest):
        return owner
    return None

  def _handle(self, signum, frame):
    if self.requested is not None:  # a second signal: stop now
      raise KeyboardInterrupt
    self.requested = signal.Signals(signum).name

  def __exit__(self, *exc):
    outer = self._outer()
    if outer is not None and outer.requested is None:
      outer.requested = self.requested
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}
