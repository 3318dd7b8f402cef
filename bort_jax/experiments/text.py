"""Numbers as table text: the one formatter of the reports and summaries."""

from __future__ import annotations

from typing import Any, Sequence


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


def interval(mean: float | None, ci: Sequence[float] | None,
             spec: str = "+.2f", alone: str = "") -> str:
  """``mean [low, high]``, the figures of a t-interval, as table text.

  A figure that rounds to zero keeps its sign (``-0.00`` for −0.003, so
  that an interval ending just below 0 does not read as ending at 0);
  within 1e-9 of zero, float rounding of an exact 0, it is ``+0.00``; a
  mean without an interval (one seed) is followed by ``alone``; no mean is
  ``n/a``.

  Args:
    mean: the mean, or ``None``.
    ci: ``[low, high]``, or ``None``.
    spec: the format spec of every figure.
    alone: the text after a mean that has no interval.

  Returns:
    The cell's text.

  Examples:
    >>> from bort_jax.experiments.text import interval
    >>> interval(0.3, [-1.2, 1.8]), interval(-0.001, None, alone=" (1 seed)")
    ('+0.30 [-1.20, +1.80]', '-0.00 (1 seed)')
    >>> interval(0.2, [-0.0033, 0.403]), interval(0.0, [0.0028, 0.397])
    ('+0.20 [-0.00, +0.40]', '+0.00 [+0.00, +0.40]')
  """
  if mean is None:
    return "n/a"
  def figure(value: float) -> str:
    return format(0.0 if abs(value) < 1e-9 else value, spec)
  if ci is None:
    return figure(mean) + alone
  return f"{figure(mean)} [{figure(ci[0])}, {figure(ci[1])}]"
