"""The Bort modes and the aliases' default hyperparameters, in one place.

``Mode`` is the type of a mode name and :data:`MODES` its values, in the order
the documentation lists them. The defaults below are the only place the
aliases (:func:`bort_jax.bort_sgd`, :func:`bort_jax.bort_adamw`,
:func:`bort_jax.with_bort`, :func:`bort_jax.add_bort_correction`) read them
from, so that an application can show or reuse them.
"""

from __future__ import annotations

import types
import typing
from typing import Literal, Mapping, NamedTuple

Mode = Literal[
    "l2-full", "l2-row", "l2-col", "l1-fullrow", "l1-fullcol", "l1-row",
    "l1-col", "huber-fullrow", "huber-fullcol",
]

#: Every Bort mode, derived from :data:`Mode`.
MODES: tuple[str, ...] = typing.get_args(Mode)

#: The adaptive amplitude ``c = (mean_i ‖w_i‖)²``.
ADA = "ada"

#: The placements of :func:`bort_jax.with_bort`.
PLACEMENTS: tuple[str, ...] = ("coupled", "decoupled")

#: The mode and amplitude ``c`` of :func:`bort_jax.add_bort_correction`
#: when none is given: the building block's own defaults (the penalty
#: ``¼‖WWᵀ − I‖²``, whose gradient is the textbook correction). The aliases
#: default to :data:`RECOMMENDED` instead.
DEFAULT_MODE: Mode = "l2-full"
DEFAULT_AMPLITUDE: float = 1.0


class Recommended(NamedTuple):
  """A placement's recommended Bort setting (see :data:`RECOMMENDED`).

  Attributes:
    mode: the Bort mode.
    amplitude: the amplitude ``c`` (a number or ``"ada"``).
    gamma: the strength ``γ``.
    learning_rate: the learning rate it was chosen with.
  """

  mode: Mode
  amplitude: float | str
  gamma: float
  learning_rate: float


#: The recommended setting of each placement, chosen on a validation split
#: (the last 10% of MNIST's training set) from the accuracy–constraint
#: frontier of ``bort-jax frontier``; docs/RESULTS.md has the sweep. Coupled:
#: Bort-SGD with momentum 0.9 (the per-step correction is about
#: ``lr·γ/(1 − μ)``). Decoupled: Bort-AdamW (``lr·γ``).
#: Read-only (a ``MappingProxyType`` of NamedTuples): every alias, the
#: training config and :data:`DEFAULT_GAMMA` read it, so an edit would split
#: them; build your own setting with ``RECOMMENDED["coupled"]._replace(...)``.
RECOMMENDED: Mapping[str, Recommended] = types.MappingProxyType({
    "coupled": Recommended("l1-fullrow", ADA, 0.003, 0.05),
    "decoupled": Recommended("l1-fullrow", ADA, 1.0, 1e-3),
})


#: The Bort strength per placement when none is given (from
#: :data:`RECOMMENDED`; read-only too).
DEFAULT_GAMMA: Mapping[str, float] = types.MappingProxyType({
    placement: r.gamma for placement, r in RECOMMENDED.items()})


def recommended(placement: str, gamma=None, mode=None, amplitude=None):
  """``(gamma, mode, amplitude)`` with each ``None`` replaced by the
  placement's :data:`RECOMMENDED` value.

  Examples:
    >>> recommended("coupled", mode="l2-full")
    (0.003, 'l2-full', 'ada')
    >>> RECOMMENDED["coupled"] = None
    Traceback (most recent call last):
    ...
    TypeError: 'mappingproxy' object does not support item assignment
  """
  r = RECOMMENDED[placement]
  return (r.gamma if gamma is None else gamma,
          r.mode if mode is None else mode,
          r.amplitude if amplitude is None else amplitude)
