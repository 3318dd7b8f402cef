"""An orthogonal start: every Bort parameter put exactly on ``W Wᵀ = cI``."""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec as P

from bort_jax._src import penalty
from bort_jax._src import sharding
from bort_jax._src import validation
from bort_jax._src.defaults import ADA
from bort_jax._src.dimension_numbers import DimensionNumbersLike
from bort_jax._src.dimension_numbers import MatrixView
from bort_jax._src.dimension_numbers import resolve_views
from bort_jax._src.dimension_numbers import under_bort_mask
from bort_jax._src.transform import check_bort_leaves
from bort_jax._src.transform import mask_by_path

_HIGHEST = jax.lax.Precision.HIGHEST


def _check_amplitude(amplitude: Any) -> Any:
  """A positive number finite in float32 or ``"ada"``; no schedule, since a
  projection made once has no step count to read it at. A value traced
  under jit passes unchecked."""
  fix = "amplitude must be a positive number or 'ada'"
  if isinstance(amplitude, str):
    if amplitude != ADA:
      raise ValueError(f"{fix}, got {amplitude!r}.")
    return amplitude
  if isinstance(amplitude, jax.core.Tracer):
    return amplitude
  if callable(amplitude):
    raise validation.ArgumentTypeError(
        f"{fix} here (a projection made once has no step count for a "
        f"schedule), got {amplitude!r}.")
  try:
    validation.check_real("amplitude", amplitude, low=0, low_inclusive=False,
                          dtype=validation.COMPUTE_DTYPE)
  except TypeError as e:
    raise validation.ArgumentTypeError(f"{fix}, got {amplitude!r}.") from e
  except ValueError as e:
    raise ValueError(f"{fix}, got {amplitude!r} ({e})") from e
  return amplitude


@functools.partial(jax.jit, static_argnames=("view",))
def _scaled_polar(leaf: jax.Array, view: MatrixView,
                  amplitude: jax.Array | None) -> jax.Array:
  """``√c · U Vᵀ`` of each matrix of a leaf (``amplitude=None``: "ada")."""
  w = view.to_matrices(leaf.astype(penalty.compute_dtype(leaf.dtype)))
  if amplitude is None:
    c = penalty.ada_amplitude(w)  # of the weights before projection
  else:
    c = jnp.broadcast_to(amplitude.astype(w.dtype), w.shape[:-2])
  # An SVD partitions over batch axes only: under Explicit sharding each
  # matrix is gathered on its devices (not the host), then split back.
  spec = sharding.explicit_spec(w)
  split = spec is not None and any(e is not None for e in spec[-2:])
  if split:
    w = jax.sharding.reshard(w, P(*spec[:-2], None, None))
  # The thin SVD works on the smaller side, so m > n (overcomplete) gets
  # WᵀW = cI, the nearest feasible point, with the same two lines.
  u, _, vh = jnp.linalg.svd(w, full_matrices=False)
  polar = jnp.matmul(u, vh, precision=_HIGHEST)
  projected = polar * jnp.sqrt(c)[..., None, None]
  if split:
    projected = jax.sharding.reshard(projected, P(*spec))
  return view.from_matrices(projected).astype(leaf.dtype)


def _project_leaf(leaf: jax.Array, view: MatrixView,
                  amplitude: Any) -> jax.Array:
  """One leaf projected, in its dtype and, called eagerly, its placement."""
  if leaf.size == 0:  # no weights, no constraint (and no 0/0 in "ada")
    return leaf
  c = None if isinstance(amplitude, str) else jnp.asarray(amplitude)
  out = _scaled_polar(leaf, view, c)
  if isinstance(leaf, jax.Array) and not isinstance(leaf, jax.core.Tracer):
    # Under jit, out_shardings (Auto) or the Explicit spec decide instead.
    out = jax.device_put(out, leaf.sharding)
  return out


def project_to_constraint(
    params: Any,
    amplitude: float | str = ADA,
    *,
    dimension_numbers: DimensionNumbersLike = None,
    bort_mask: Any | Callable[[Any], Any] | None = None,
) -> Any:
  """Puts every Bort parameter on ``W Wᵀ = cI``: an orthogonal start.

  Each Bort leaf, seen as a batch of matrices ``W ∈ R^{m×n}`` whose rows are
  output units (the view :func:`add_bort_correction` uses), is replaced by
  its polar factor scaled to the amplitude: from the SVD ``W = U S Vᵀ``,

  .. math::
    W ← \\sqrt{c} \\, U V^\\top,

  so ``W Wᵀ = cI`` when ``m ≤ n`` (orthogonal rows of squared norm ``c``) and
  ``Wᵀ W = cI`` when ``m > n`` (the nearest feasible point, the one the
  full modes drive to). Each matrix of a stacked leaf (batch axes) is its
  own problem. The name says what it is: ``√c U Vᵀ`` is the Frobenius-nearest
  point to ``W`` on the constraint set ``{W : W Wᵀ = cI}`` (Higham's nearest
  orthogonal matrix, scaled), the projection onto it, not an arbitrary
  orthogonalisation such as Gram–Schmidt, which depends on the row order and
  moves the weights further.

  Leaves are selected exactly as :func:`add_bort_correction` selects them
  (the same ``dimension_numbers`` and ``bort_mask``); the others come back
  unchanged. Bf16 and f16 leaves are projected in float32 and returned in
  their dtype. The function is traceable: jit it with the non-array
  arguments static (``jax.jit(project_to_constraint,
  static_argnames="amplitude")``) or closed over with
  :func:`functools.partial` (trees of dimension numbers are not hashable).
  Sharded parameters are never gathered to the host: the SVD is partitioned
  over batch axes and each matrix gathered on its devices. Called eagerly,
  and under jit with Explicit sharding, a leaf keeps its sharding; under
  jit with Auto sharding, ``out_shardings`` decides.

  Args:
    params: a pytree of parameters (``nnx.state(model, nnx.Param)``, a Linen
      or Equinox tree, nested dicts of arrays).
    amplitude: the target squared row norm ``c > 0`` (column norm when
      ``m > n``), or ``"ada"`` for ``c = (mean_i ‖w_i‖)²`` of each matrix
      before projection, over its rows, or its columns when ``m > n``
      (:func:`ada_amplitude`), which keeps the scale of the init (a zero
      matrix stays zero). Use the optimizer's amplitude, so that training
      starts on its target.
    dimension_numbers: which leaves are Bort parameters and how each is a
      matrix, as in :func:`add_bort_correction` (``None``: Flax kernels; a
      :class:`BortDimensionNumbers`, a pytree or a callable of them, or an
      ``nnx.Module``).
    bort_mask: a pytree or callable of booleans selecting the leaves Bort may
      act on, as in :func:`add_bort_correction` (:func:`optax.masked`).

  Returns:
    A pytree of ``params``' structure: projected Bort leaves (same shape and
    dtype), the other leaves as they were.

  Raises:
    ValueError: for an amplitude that is not a positive number finite in
      float32 or ``"ada"`` (a schedule raises a ``TypeError``, also a
      ``ValueError``), dimension numbers that do not fit a leaf, or a
      selected leaf that is not real floating. An amplitude traced under jit
      is not checked. A tree with nothing selected only warns.

  Examples:
    >>> import jax, bort_jax
    >>> from flax import nnx
    >>> model = nnx.Linear(8, 4, rngs=nnx.Rngs(0))
    >>> params = nnx.state(model, nnx.Param)
    >>> nnx.update(model, bort_jax.project_to_constraint(params))
    >>> errors = bort_jax.orthogonality_error(nnx.state(model, nnx.Param))
    >>> error = bort_jax.mean_orthogonality_error(errors).constraint_error
    >>> float(error) < 1e-6
    True

  References:
    Zhang, Zheng, Zhou, Lu, "Bort: Towards Explainable Neural Networks with
    Bounded Orthogonal Constraint", ICLR 2023.

    Higham, "Computing the polar decomposition, with applications", SIAM J.
    Sci. Stat. Comput. 7(4), 1986.
  """
  amplitude = _check_amplitude(amplitude)
  bort_mask = validation.check_mask("bort_mask", bort_mask)
  selection = under_bort_mask(dimension_numbers, bort_mask is not None)

  def init_fn(selected):
    # Bad dimension numbers and dtypes fail here; an empty selection warns.
    check_bort_leaves(selected, resolve_views(selection, selected),
                      dimension_numbers)
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    del updates
    leaves, treedef = jax.tree.flatten(params)
    views = resolve_views(selection, params)
    projected = [leaf if view is None else _project_leaf(leaf, view,
                                                         amplitude)
                 for leaf, view in zip(leaves, views)]
    return treedef.unflatten(projected), state

  # The transform's own selection: optax.masked, then the dimension numbers
  # of the masked tree, so a leaf is projected iff Bort would correct it.
  select = optax.GradientTransformation(init_fn, update_fn)
  if bort_mask is not None:
    select = optax.masked(select, mask_by_path(bort_mask))
  state = select.init(params)
  projected, _ = select.update(params, state, params)
  return projected
