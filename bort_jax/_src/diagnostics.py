"""How far each Bort parameter is from ``W Wᵀ = cI``: cheap, jit-able numbers."""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bort_jax._src import flax_selection
from bort_jax._src import penalty
from bort_jax._src import sharding
from bort_jax._src import validation
from bort_jax._src.dimension_numbers import DimensionNumbersLike
from bort_jax._src.dimension_numbers import path_string
from bort_jax._src.dimension_numbers import resolve_views


class _Errors(NamedTuple):
  constraint_error: jax.Array
  max_cosine: jax.Array
  norm_spread: jax.Array


class OrthogonalityError(_Errors):
  """Constraint errors of one Bort parameter (averaged over its batch axes).

  A tuple of three numbers (iterate it, ``_asdict()`` it or pass it through
  ``jit`` as before), plus ``overcomplete``, a Python bool known from the
  shape alone and carried as static pytree data.

  Attributes:
    constraint_error: ``‖S − cI‖_F / ‖cI‖_F`` with ``S`` the Gram of the
      feasible side (``W Wᵀ`` when m ≤ n, else ``Wᵀ W``).
    max_cosine: the largest ``|cos|`` between two distinct vectors of that
      side (0 when orthogonal); the maximum over batch axes.
    norm_spread: standard deviation / mean of that side's vector norms (0 when
      bounded).
    overcomplete: whether the matrix has more output units than fan-in
      (m > n, e.g. a first 3×3 conv from 1 channel to 16: 9 < 16), so that
      ``W Wᵀ = cI`` is infeasible (its rank is at most n). The three errors
      are then those of ``Wᵀ W = cI`` (orthogonal fan-in columns of equal
      norm), the constraint ``l2-full`` reaches there: its correction
      ``(W Wᵀ − cI) W = W (Wᵀ W − cI)`` vanishes exactly when ``Wᵀ W = cI``.
      For :func:`mean_orthogonality_error`, whether any parameter is.

  A zero matrix (or a zero amplitude from ``"ada"`` or ``None``) has
  ``constraint_error = 1``, the value ``‖0 − cI‖ / ‖cI‖`` for every ``c > 0``,
  ``max_cosine = 0`` and ``norm_spread = 0``; zero vectors count as
  orthogonal to all others. An empty matrix has all three 0.

  Concrete values print as numbers, so a dict of them reads as a table.

  Examples:
    >>> import jax.numpy as jnp
    >>> OrthogonalityError(jnp.float32(0.0123), jnp.float32(0.41),
    ...                    jnp.float32(0.02))
    OrthogonalityError(constraint_error=0.0123, max_cosine=0.41, norm_spread=0.02)
    >>> matrix_orthogonality_error(jnp.ones((16, 9)))  # 16 units, fan-in 9
    OrthogonalityError(constraint_error=2.828, max_cosine=1, norm_spread=0, overcomplete=True)
  """

  def __new__(cls, constraint_error, max_cosine, norm_spread,
              overcomplete: bool = False):
    self = super().__new__(cls, constraint_error, max_cosine, norm_spread)
    # A tuple subclass keeps a __dict__: the flag lives there, not among
    # the three values that callers iterate.
    self.__dict__["overcomplete"] = bool(overcomplete)
    return self

  @property
  def overcomplete(self) -> bool:
    return self.__dict__.get("overcomplete", False)

  def _replace(self, **values) -> "OrthogonalityError":
    overcomplete = values.pop("overcomplete", self.overcomplete)
    return OrthogonalityError(*super()._replace(**values), overcomplete)

  def __getnewargs__(self):
    return (*self, self.overcomplete)

  def __repr__(self) -> str:
    parts = [f"{f}={_number(v)}" for f, v in zip(self._fields, self)]
    if self.overcomplete:
      parts.append("overcomplete=True")
    return f"OrthogonalityError({', '.join(parts)})"

  __str__ = __repr__


def _number(value: Any) -> str:
  """A concrete scalar as a short number; anything else as its own repr
  (a tracer under jit, a ShapeDtypeStruct under eval_shape, an array)."""
  if (isinstance(value, (jax.core.Tracer, jax.ShapeDtypeStruct))
      or np.ndim(value) != 0):
    return repr(value)
  try:
    return f"{float(value):.4g}"
  except (TypeError, ValueError):
    return repr(value)


jax.tree_util.register_pytree_node(
    OrthogonalityError,
    lambda e: (tuple(e), e.overcomplete),
    lambda overcomplete, values: OrthogonalityError(*values, overcomplete),
)


def _check_real_floating(x: Any, name: str, fix: str) -> None:
  """Refuses complex, integer and bool arrays, whose Gram is no real
  constraint error (a complex one would be returned, an integer one would
  overflow or truncate)."""
  dtype = getattr(x, "dtype", None)
  if dtype is None or not jnp.issubdtype(jnp.dtype(dtype), jnp.floating):
    what = f"dtype {jnp.dtype(dtype)}" if dtype is not None else (
        f"type {type(x).__name__}")
    raise validation.ArgumentTypeError(
        f"orthogonality error: {name} has {what}, and the error is defined "
        f"for real floating values only; {fix}.")


def matrix_orthogonality_error(
    w: jax.Array, amplitude: Any = None
) -> OrthogonalityError:
  """The :class:`OrthogonalityError` of matrices ``(..., m, n)``.

  Args:
    w: matrices whose rows are output units; leading axes are batch axes.
    amplitude: the target ``c > 0`` (checked as the Bort transform checks
      it); ``"ada"`` for the full modes' adaptive ``(mean_i ‖w_i‖)²`` over
      the output units, or over the fan-in columns when ``m > n``
      (:func:`ada_amplitude`); ``None`` for the mean squared norm of the
      feasible side's vectors (``‖W‖²_F / min(m, n)``), so only equal norms
      and orthogonality are measured.

  Returns:
    An :class:`OrthogonalityError` of scalars, ``overcomplete`` when m > n.

  Examples:
    >>> import jax.numpy as jnp
    >>> err = matrix_orthogonality_error(3.0 * jnp.eye(2, 4))
    >>> float(err.constraint_error), float(err.max_cosine)
    (0.0, 0.0)
    >>> float(matrix_orthogonality_error(jnp.eye(2), 4.0).constraint_error)
    0.75
    >>> float(matrix_orthogonality_error(jnp.zeros((2, 3))).constraint_error)
    1.0
  """
  _check_real_floating(w, "w", "pass real floating matrices, e.g. "
                       "w.astype(jnp.float32) for integer ones")
  if jnp.ndim(w) < 2:
    raise ValueError(
        f"orthogonality error: w must be matrices of shape (..., m, n), got "
        f"shape {jnp.shape(w)}; a vector has no orthogonality.")
  if amplitude is not None:
    if callable(amplitude):
      raise validation.ArgumentTypeError(
          f"amplitude must be a positive number, 'ada' or None here (a "
          f"diagnostic has no step count for a schedule), got {amplitude!r}.")
    validation.check_amplitude(amplitude)
  x = w.astype(penalty.compute_dtype(w.dtype))
  if sharding.explicit_spec(x) is not None:
    # A measurement, not a step: the matrix is gathered (Explicit sharding
    # would need every product's output spec stated, as the kernels do).
    x = jax.sharding.reshard(x, sharding.on_mesh_of(x))
  zero = jnp.zeros((), x.dtype)
  overcomplete = x.shape[-2] > x.shape[-1]
  if x.size == 0:
    return OrthogonalityError(zero, zero, zero, overcomplete)
  if isinstance(amplitude, str):
    c = penalty.ada_amplitude(x)
  elif amplitude is not None:
    c = jnp.broadcast_to(jnp.asarray(amplitude, x.dtype), x.shape[:-2])
  if overcomplete:  # W Wᵀ = cI is infeasible: measure Wᵀ W = cI
    x = jnp.swapaxes(x, -1, -2)
  k = x.shape[-2]
  gram = jnp.matmul(x, jnp.swapaxes(x, -1, -2))
  norms_sq = jnp.diagonal(gram, axis1=-2, axis2=-1)
  if amplitude is None:
    c = jnp.mean(norms_sq, axis=-1)
  eye = jnp.eye(k, dtype=x.dtype)
  residual = gram - c[..., None, None] * eye
  # Only an exact zero is the degenerate case (a zero matrix: error 1, no
  # spread); a NaN or an infinity in the weights stays NaN, never a number.
  nonzero = c != 0
  scale = jnp.where(nonzero, c, 1.0) * jnp.sqrt(k)
  constraint = jnp.where(
      nonzero, jnp.linalg.norm(residual, axis=(-2, -1)) / scale, 1.0)
  norms = jnp.sqrt(norms_sq)
  safe = jnp.where(norms > 0, norms, 1.0)
  cosine = gram / (safe[..., :, None] * safe[..., None, :])
  max_cosine = jnp.max(jnp.abs(cosine * (1 - eye)), axis=(-2, -1))
  mean_norm = jnp.mean(norms, axis=-1)
  spread = jnp.where(mean_norm != 0, jnp.std(norms, axis=-1)
                     / jnp.where(mean_norm != 0, mean_norm, 1.0), 0.0)
  return OrthogonalityError(
      jnp.mean(constraint), jnp.max(max_cosine), jnp.mean(spread),
      overcomplete)


def orthogonality_error(
    params: Any,
    amplitude: Any = None,
    *,
    dimension_numbers: DimensionNumbersLike = None,
) -> dict[str, OrthogonalityError]:
  """The orthogonality error of every Bort parameter of a pytree.

  Each parameter is viewed as matrices by its dimension numbers (the same view
  the Bort transform uses) and measured by :func:`matrix_orthogonality_error`.
  It costs one Gram of the smaller side per parameter: cheap enough to log.

  Args:
    params: a pytree of parameters (e.g. ``nnx.state(model, nnx.Param)``),
      or an ``nnx.Module``: its parameters, selected by its module types
      (grouped convolutions one matrix a group, stacked layers one a layer,
      which a parameter tree cannot tell) unless ``dimension_numbers`` is
      given.
    amplitude: the target ``c``, or ``None`` (scale-free: mean squared norm).
    dimension_numbers: as in :func:`add_bort_correction`.

  Returns:
    A dict from each Bort parameter's path (``"layer/kernel"``) to its
    :class:`OrthogonalityError`; empty, with a warning, when nothing is
    selected. A parameter with more output units than fan-in (m > n) cannot
    have ``W Wᵀ = cI``: its ``overcomplete`` is ``True`` and its errors are
    those of ``Wᵀ W = cI``. :func:`mean_orthogonality_error` makes one
    number of the dict.

  Raises:
    TypeError: (also a ValueError) for a selected leaf that is not real
      floating (complex, integer, bool), naming its path.

  Examples:
    >>> import jax.numpy as jnp
    >>> params = {"dense": {"kernel": jnp.eye(3), "bias": jnp.zeros(3)}}
    >>> errors = orthogonality_error(params)
    >>> list(errors), float(errors["dense/kernel"].constraint_error)
    (['dense/kernel'], 0.0)
    >>> errors
    {'dense/kernel': OrthogonalityError(constraint_error=0, max_cosine=0, norm_spread=0)}
  """
  if amplitude is not None:
    validation.check_amplitude(amplitude)
  if flax_selection.is_nnx_module(params):
    if dimension_numbers is None:
      dimension_numbers = params
    params = flax_selection.param_state(params)
  views = resolve_views(dimension_numbers, params)
  if all(view is None for view in views):
    warnings.warn(
        "orthogonality_error: no Bort parameter in this tree (by default, "
        "Flax's leaves named 'kernel' with at least two axes); pass "
        "dimension_numbers= to choose others, e.g. "
        "bort_jax.BortDimensionNumbers.out_in() for every (out, in) weight "
        "(Equinox, PyTorch layout).", stacklevel=2)
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  for (path, leaf), view in zip(leaves, views):
    if view is not None:
      _check_real_floating(
          leaf, repr(path_string(path)),
          "skip it with dimension_numbers (None at that leaf), as for the "
          "Bort transform")
  return {
      path_string(path): matrix_orthogonality_error(
          view.to_matrices(leaf), amplitude
      )
      for (path, leaf), view in zip(leaves, views)
      if view is not None
  }


def mean_orthogonality_error(
    errors: dict[str, OrthogonalityError],
) -> OrthogonalityError:
  """Averages :func:`orthogonality_error`'s per-parameter errors, for a
  one-line log.

  Args:
    errors: the dict :func:`orthogonality_error` returns.

  Returns:
    An :class:`OrthogonalityError`: the mean constraint error and norm
    spread, the largest max cosine, and ``overcomplete`` if any parameter is.

  Raises:
    ValueError: for an empty dict; TypeError for anything else than that
      dict.

  Examples:
    >>> import jax.numpy as jnp
    >>> params = {"a": {"kernel": jnp.eye(3)}, "b": {"kernel": jnp.ones((3, 3))}}
    >>> mean_orthogonality_error(orthogonality_error(params))
    OrthogonalityError(constraint_error=0.7071, max_cosine=1, norm_spread=0)
  """
  if not isinstance(errors, dict):
    raise validation.ArgumentTypeError(
        "mean_orthogonality_error takes the dict orthogonality_error "
        f"returns, got {type(errors).__name__} {errors!r}.")
  values = list(errors.values())
  if not values:
    raise ValueError("No Bort parameters to average.")
  for path, value in errors.items():
    if not isinstance(value, OrthogonalityError):
      raise validation.ArgumentTypeError(
          f"mean_orthogonality_error: {path!r} maps to "
          f"{type(value).__name__}, not an OrthogonalityError; pass the dict "
          "orthogonality_error returns.")
    for field in OrthogonalityError._fields:
      _check_real_floating(getattr(value, field), f"{path!r}.{field}",
                           "pass the dict orthogonality_error returns")
  stack = lambda field: jnp.stack([getattr(v, field) for v in values])
  return OrthogonalityError(
      jnp.mean(stack("constraint_error")),
      jnp.max(stack("max_cosine")),
      jnp.mean(stack("norm_spread")),
      any(v.overcomplete for v in values),
  )
