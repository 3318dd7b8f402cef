"""The Bort modes and the aliases' default hyperparameters, in one place.

``Mode`` is the type of a mode name and :data:`MODES` its values, in the order
the documentation lists them. The defaults below are the only place the
aliases (:func:`bort_jax.bort_sgd`, :func:`bort_jax.bort_adamw`,
:func:`bort_jax.with_bort`, :func:`bort_jax.add_bort_correction`) read them
from, so that an application can show or reuse them.
"""

from __future__ import annotations

import typing
from typing import Literal

Mode = Literal[
    "l2-full", "l2-row", "l2-col", "l1-fullrow", "l1-fullcol", "l1-row",
    "l1-col",
]

#: Every Bort mode, derived from :data:`Mode`.
MODES: tuple[str, ...] = typing.get_args(Mode)

#: The adaptive amplitude ``c = (mean_i ‖w_i‖)²``.
ADA = "ada"

#: The placements of :func:`bort_jax.with_bort`.
PLACEMENTS: tuple[str, ...] = ("coupled", "decoupled")

#: The mode of every alias when none is given.
DEFAULT_MODE: Mode = "l2-full"

#: The amplitude ``c`` of every alias when none is given.
DEFAULT_AMPLITUDE: float = 1.0

#: The Bort strength per placement when none is given. ``None``: no default,
#: ``gamma`` must be passed (a good γ depends on the learning rate, the mode
#: and the placement).
DEFAULT_GAMMA: dict[str, float | None] = {"coupled": None, "decoupled": None}
