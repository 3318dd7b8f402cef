"""bort_jax: Bort and DBort for JAX, Optax and Flax.

Optimizers that keep every layer's weights bounded and orthogonal
(``W Wᵀ ≈ cI``), so that networks read forwards (aligned activations) and
invert backwards (a layer is undone by its scaled transpose).

The top level is the optax-only core: importing it, and building and running
any optimizer in it, imports neither Flax nor anything that needs it, so
Equinox, Haiku and plain-pytree users need only JAX and Optax. The Flax-aware
parts are submodules loaded on first access: :mod:`bort_jax.dbort` (the DBort
loss and module), :mod:`bort_jax.explain` and :mod:`bort_jax.models`.
"""

import importlib
import warnings
from typing import TYPE_CHECKING

from bort_jax._src.lazy import lazy_exports

if TYPE_CHECKING:  # what type checkers and IDEs read; at run time, on first use
  from bort_jax._src.alias import bort_adamw
  from bort_jax._src.alias import bort_sgd
  from bort_jax._src.alias import with_bort
  from bort_jax._src.defaults import DEFAULT_AMPLITUDE
  from bort_jax._src.defaults import DEFAULT_GAMMA
  from bort_jax._src.defaults import RECOMMENDED
  from bort_jax._src.defaults import Recommended
  from bort_jax._src.defaults import DEFAULT_MODE
  from bort_jax._src.defaults import DEFAULT_STRENGTH
  from bort_jax._src.defaults import DEFAULT_TAU
  from bort_jax._src.defaults import MAX_STEP_STRENGTH
  from bort_jax._src.defaults import Mode
  from bort_jax._src.defaults import MODES
  from bort_jax._src.defaults import Placement
  from bort_jax._src.diagnostics import matrix_orthogonality_error
  from bort_jax._src.diagnostics import mean_orthogonality_error
  from bort_jax._src.diagnostics import orthogonality_error
  from bort_jax._src.diagnostics import OrthogonalityError
  from bort_jax._src.dimension_numbers import BortDimensionNumbers
  from bort_jax._src.dimension_numbers import flax_dimension_numbers
  from bort_jax._src.flax_selection import FlaxDimensionNumbers
  from bort_jax._src.guards import skip_nonfinite_steps
  from bort_jax._src.guards import SkipNonfiniteState
  from bort_jax._src.penalty import ada_amplitude
  from bort_jax._src.penalty import bort_correction
  from bort_jax._src.penalty import bort_penalty
  from bort_jax._src.penalty import KernelOptions
  from bort_jax._src.projection import project_to_constraint
  from bort_jax._src.projection import start_on_constraint
  from bort_jax._src.projection import StartOnConstraintState
  from bort_jax._src.transform import add_bort_correction
  from bort_jax._src.transform import BortState
  from bort_jax._src.transform import tree_correction


__version__ = "0.2.0"

#: Each public name and the module that defines it: loaded on first access
#: (PEP 562), so that ``import bort_jax`` imports no JAX until a name is used
#: and ``bort-jax --help`` answers at once.
_EXPORTS = {
    "bort_adamw": "bort_jax._src.alias",
    "bort_sgd": "bort_jax._src.alias",
    "with_bort": "bort_jax._src.alias",
    "DEFAULT_AMPLITUDE": "bort_jax._src.defaults",
    "DEFAULT_GAMMA": "bort_jax._src.defaults",
    "RECOMMENDED": "bort_jax._src.defaults",
    "Recommended": "bort_jax._src.defaults",
    "DEFAULT_MODE": "bort_jax._src.defaults",
    "DEFAULT_STRENGTH": "bort_jax._src.defaults",
    "DEFAULT_TAU": "bort_jax._src.defaults",
    "MAX_STEP_STRENGTH": "bort_jax._src.defaults",
    "Mode": "bort_jax._src.defaults",
    "MODES": "bort_jax._src.defaults",
    "Placement": "bort_jax._src.defaults",
    "matrix_orthogonality_error": "bort_jax._src.diagnostics",
    "mean_orthogonality_error": "bort_jax._src.diagnostics",
    "orthogonality_error": "bort_jax._src.diagnostics",
    "OrthogonalityError": "bort_jax._src.diagnostics",
    "BortDimensionNumbers": "bort_jax._src.dimension_numbers",
    "flax_dimension_numbers": "bort_jax._src.dimension_numbers",
    "FlaxDimensionNumbers": "bort_jax._src.flax_selection",
    "skip_nonfinite_steps": "bort_jax._src.guards",
    "SkipNonfiniteState": "bort_jax._src.guards",
    "ada_amplitude": "bort_jax._src.penalty",
    "bort_correction": "bort_jax._src.penalty",
    "bort_penalty": "bort_jax._src.penalty",
    "KernelOptions": "bort_jax._src.penalty",
    "project_to_constraint": "bort_jax._src.projection",
    "start_on_constraint": "bort_jax._src.projection",
    "StartOnConstraintState": "bort_jax._src.projection",
    "add_bort_correction": "bort_jax._src.transform",
    "BortState": "bort_jax._src.transform",
    "tree_correction": "bort_jax._src.transform",
}

#: Submodules loaded on first access, so that ``import bort_jax`` stays light
#: (and free of Flax, which ``dbort``, ``explain`` and ``models`` import).
_LAZY_SUBMODULES = ("dbort", "experiments", "explain", "models")

#: DBort's names, once also exported here; they live in ``bort_jax.dbort``.
#: Old code keeps working for one release, with a DeprecationWarning.
_MOVED_TO_DBORT = (
    "DBort",
    "DBortEnergy",
    "DBortLinearFit",
    "DBortTerm",
    "dbort_energies",
    "dbort_linear_optimizer",
    "dbort_loss",
    "dbort_outputs",
    "dbort_term",
    "fit_dbort_linear",
    "principal_cosines",
)


_export, _dir = lazy_exports(globals(), _EXPORTS)


def __getattr__(name: str):
  if name in _EXPORTS:
    return _export(name)
  if name in _LAZY_SUBMODULES:
    return importlib.import_module(f"bort_jax.{name}")
  if name in _MOVED_TO_DBORT:
    warnings.warn(
        f"bort_jax.{name} moved to bort_jax.dbort.{name} (DBort needs Flax; "
        f"the top level does not); use `from bort_jax import dbort` and "
        f"dbort.{name}.", DeprecationWarning, stacklevel=2)
    return getattr(importlib.import_module("bort_jax.dbort"), name)
  raise AttributeError(f"module 'bort_jax' has no attribute {name!r}")


def __dir__() -> list[str]:
  return sorted({*_dir(), *_LAZY_SUBMODULES})


__all__ = (
    "DEFAULT_AMPLITUDE",
    "DEFAULT_GAMMA",
    "RECOMMENDED",
    "Recommended",
    "DEFAULT_MODE",
    "DEFAULT_STRENGTH",
    "DEFAULT_TAU",
    "MAX_STEP_STRENGTH",
    "MODES",
    "BortDimensionNumbers",
    "BortState",
    "FlaxDimensionNumbers",
    "KernelOptions",
    "Mode",
    "OrthogonalityError",
    "Placement",
    "SkipNonfiniteState",
    "StartOnConstraintState",
    "ada_amplitude",
    "add_bort_correction",
    "bort_adamw",
    "bort_correction",
    "bort_penalty",
    "bort_sgd",
    "flax_dimension_numbers",
    "matrix_orthogonality_error",
    "mean_orthogonality_error",
    "orthogonality_error",
    "project_to_constraint",
    "skip_nonfinite_steps",
    "start_on_constraint",
    "tree_correction",
    "with_bort",
)
