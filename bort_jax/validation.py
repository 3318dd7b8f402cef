"""The checks bort_jax applies to user input, for code built on the library.

``bort_jax.models``, the examples and the application check their own
arguments with the same functions the optimizers use, so that a bad value is
refused the same way everywhere: a ``ValueError`` (``ArgumentTypeError``,
also a ``TypeError``, for a value of the wrong type) whose one line names the
argument and the fix. This is a documented home for code that builds on
bort_jax, not part of the optimizer API (the optimizers check their own
arguments); it imports neither Flax nor anything that does. ``ADA`` (the
adaptive amplitude's name) and ``PLACEMENTS`` are the values
``check_amplitude`` and ``check_placement`` accept besides numbers;
``STEP_TAU`` is the aliases' ``tau="step"``.

Examples:
  >>> from bort_jax import validation
  >>> validation.check_positive_int("epochs", 3)
  3
  >>> validation.check_choice("mode", "l2-full", ("l2-full", "l1-fullrow"))
  'l2-full'
  >>> try:
  ...   validation.check_real("lr", "0.1")
  ... except ValueError as e:
  ...   print(e)
  lr must be a real number, got '0.1'.
"""

from typing import TYPE_CHECKING

from bort_jax._src.defaults import ADA
from bort_jax._src.defaults import PLACEMENTS
from bort_jax._src.defaults import STEP_TAU
from bort_jax._src.lazy import lazy_exports

if TYPE_CHECKING:  # what type checkers read; at run time, on first use
  from bort_jax._src.validation import ArgumentTypeError
  from bort_jax._src.validation import check_amplitude
  from bort_jax._src.validation import check_bool
  from bort_jax._src.validation import check_choice
  from bort_jax._src.validation import check_mode
  from bort_jax._src.validation import check_nonnegative_int
  from bort_jax._src.validation import check_placement
  from bort_jax._src.validation import check_positive_int
  from bort_jax._src.validation import check_real
  from bort_jax._src.validation import check_strength
  from bort_jax._src.validation import steps_per_application
  from bort_jax._src.validation import weights_of_their_own

# The checks import JAX; ADA, PLACEMENTS and STEP_TAU do not, so the application's
# parser reads them without it.
__getattr__, __dir__ = lazy_exports(globals(), {
    name: "bort_jax._src.validation" for name in (
        "ArgumentTypeError", "check_amplitude", "check_bool", "check_choice",
        "check_mode", "check_nonnegative_int", "check_placement",
        "check_positive_int", "check_real", "check_strength",
        "steps_per_application", "weights_of_their_own")})

__all__ = (
    "ADA",
    "PLACEMENTS",
    "STEP_TAU",
    "ArgumentTypeError",
    "check_amplitude",
    "check_bool",
    "check_choice",
    "check_mode",
    "check_nonnegative_int",
    "check_placement",
    "check_positive_int",
    "check_real",
    "check_strength",
    "steps_per_application",
    "weights_of_their_own",
)
