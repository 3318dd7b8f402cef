"""The application's expected errors: the CLI shows them as one line."""


class ExperimentError(Exception):
  """An expected failure the user can fix (bad data, a refused folder, …).

  ``bort-jax`` prints its message as one line, with no traceback, and exits
  with status 2 (``--debug`` shows the traceback).
  """


class DivergedError(ExperimentError):
  """The run diverged (a non-finite training loss, or overflowed weights:
  a non-finite test loss or constraint error); it was stopped."""
