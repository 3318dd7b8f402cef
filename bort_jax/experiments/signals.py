"""Stopping a run cleanly on SIGINT (Ctrl-C) or SIGTERM (SLURM, Kubernetes).

The first signal asks the loop to stop after the current step, save a
checkpoint and return; a second one raises ``KeyboardInterrupt`` at once.
"""

from __future__ import annotations

import signal
import threading


class StopRequest:
  """Turns the first SIGINT or SIGTERM into "stop after this step".

  Attributes:
    requested: the signal's name (``"SIGINT"``, ``"SIGTERM"``) once one
      came, else ``None``.

  Examples:
    >>> import signal
    >>> from bort_jax.experiments.signals import StopRequest
    >>> with StopRequest() as stop:
    ...   signal.raise_signal(signal.SIGTERM)
    >>> stop.requested
    'SIGTERM'
  """

  SIGNALS = (signal.SIGINT, signal.SIGTERM)

  def __init__(self):
    self.requested = None
    self._previous = {}

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
