"""Stopping a run cleanly on SIGINT (Ctrl-C) or SIGTERM (SLURM, Kubernetes).

The first signal asks the loop to stop after the current step, save a
checkpoint and return; a second one raises ``KeyboardInterrupt`` at once.
The processes of a multi-process run stop together: they agree on a request
(one process's is enough) every :data:`AGREE_EVERY` steps.
"""

from __future__ import annotations

import signal
import threading
from typing import Callable

#: How often (in steps) the processes of a multi-process run agree on a stop
#: request: agreeing is a blocking collective, so not on every step.
AGREE_EVERY = 10


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
    return self

  def _handle(self, signum, frame):
    if self.requested is not None:  # a second signal: stop now
      raise KeyboardInterrupt
    self.requested = signal.Signals(signum).name

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
