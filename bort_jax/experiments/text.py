"""Numbers as table text: the one formatter of the reports and summaries."""

from __future__ import annotations

from typing import Any


def number(value: Any, spec: str, missing: str = "n/a") -> str:
  """``format(value, spec)``, or ``missing`` for a value that is ``None``.

  Args:
    value: a number, or ``None`` (not measured, not applicable).
    spec: a format spec, e.g. ``".2f"``.
    missing: the text for ``None``.

  Returns:
    The text of a table cell or summary field.

  Examples:
    >>> from bort_jax.experiments.text import number
    >>> number(0.98765, ".2f"), number(None, ".2f"), number(None, ".4f", "nan")
    ('0.99', 'n/a', 'nan')
  """
  return missing if value is None else format(value, spec)
