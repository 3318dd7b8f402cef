"""An orthogonal start: every Bort parameter put exactly on ``W Wᵀ = cI``,
before training (:func:`project_to_constraint`) or by the optimizer's first
step (:func:`start_on_constraint`)."""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bort_jax._src import eager
from bort_jax._src import penalty
from bort_jax._src import sharding
from bort_jax._src import validation
from bort_jax._src.defaults import ADA
from bort_jax._src.dimension_numbers import DimensionNumbersLike
from bort_jax._src.dimension_numbers import MatrixView
from bort_jax._src.dimension_numbers import resolve_views
from bort_jax._src.dimension_numbers import under_bort_mask
from bort_jax._src.transform import check_bort_leaves
from bort_jax._src.transform import NO_PARAMS_MSG
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


def _matmul(a: jax.Array, b: jax.Array) -> jax.Array:
  return jnp.matmul(a, b, precision=_HIGHEST)


@jax.custom_jvp
def polar_factor(w: jax.Array) -> jax.Array:
  """The polar factor ``U Vᵀ`` of each matrix (last two axes) of ``w``.

  From the thin SVD ``W = U S Vᵀ`` (``k = min(m, n)`` singular values),
  ``Q = U Vᵀ``: the orthogonal matrix nearest ``W`` (``Q Qᵀ = I`` when
  ``m ≤ n``, ``Qᵀ Q = I`` when ``m > n``). Its derivative is given in closed
  form, well defined wherever ``W`` has full rank,

  .. math::
    dQ = U X V^\\top + (I - U U^\\top)\\, dW\\, V S^{-1} V^\\top
         + U S^{-1} U^\\top dW\\, (I - V V^\\top),
    \\qquad X_{ij} = \\frac{C_{ij} - C_{ji}}{σ_i + σ_j},\\;
    C = U^\\top dW\\, V,

  instead of through the SVD's own derivative, whose ``1/(σ_i² − σ_j²)``
  is undefined at repeated singular values: an orthogonal ``W``, all of
  whose singular values are equal, is the usual case here.

  Args:
    w: a real floating array of at least two axes.

  Returns:
    ``U Vᵀ`` of each matrix, the shape of ``w``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from bort_jax._src.projection import polar_factor
    >>> w = jnp.eye(2)  # singular values 1 and 1
    >>> jax.jvp(polar_factor, (w,), (jnp.array([[0., 1.], [0., 0.]]),))[1]
    Array([[ 0. ,  0.5],
           [-0.5,  0. ]], dtype=float32)
  """
  u, _, vh = jnp.linalg.svd(w, full_matrices=False)
  return _matmul(u, vh)


@polar_factor.defjvp
def _polar_factor_jvp(primals, tangents):
  (w,), (dw,) = primals, tangents
  u, s, vh = jnp.linalg.svd(w, full_matrices=False)
  v, ut = vh.mT, u.mT
  c = _matmul(_matmul(ut, dw), v)
  x = (c - c.mT) / (s[..., :, None] + s[..., None, :])
  dw_v, ut_dw = _matmul(dw, v), _matmul(ut, dw)
  # The two terms off the singular subspaces; one of them is 0 (square
  # U when m ≤ n, square V when m > n).
  off_rows = (dw_v - _matmul(u, _matmul(ut, dw_v))) / s[..., None, :]
  off_cols = (ut_dw - _matmul(_matmul(ut_dw, v), vh)) / s[..., :, None]
  dq = _matmul(_matmul(u, x), vh) + _matmul(off_rows, vh) + _matmul(
      u, off_cols)
  return _matmul(u, vh), dq


@functools.partial(jax.jit, static_argnames=("view", "axis_name"))
def _scaled_polar(leaf: jax.Array, view: MatrixView,
                  amplitude: jax.Array | None,
                  axis_name: Any = None) -> jax.Array:
  """``√c · U Vᵀ`` of each matrix of a leaf (``amplitude=None``: "ada").

  ``axis_name``: inside ``shard_map``, the mesh axis the fan-in is split
  over; each device's part is gathered, the whole matrix projected and the
  device's part taken back."""
  w = view.to_matrices(leaf.astype(penalty.compute_dtype(leaf.dtype)))
  if axis_name is not None:
    local = w.shape[-1]
    w = jax.lax.all_gather(w, axis_name, axis=w.ndim - 1, tiled=True)
  if amplitude is None:
    c = penalty.ada_amplitude(w)  # of the weights before projection
  else:
    c = jnp.broadcast_to(amplitude.astype(w.dtype), w.shape[:-2])
  # An SVD partitions over batch axes only: under Explicit sharding each
  # matrix is gathered on its devices (not the host), then split back.
  spec = sharding.explicit_spec(w)
  split = spec is not None and any(e is not None for e in spec[-2:])
  if split:
    w = jax.sharding.reshard(
        w, sharding.on_mesh_of(w, *spec[:-2], None, None))
  # An infinity stalls LAPACK's SVD (a NaN does not): a matrix that is not
  # finite is projected as zeros and comes back NaN, never a number.
  finite = jnp.all(jnp.isfinite(w), axis=(-2, -1))[..., None, None]
  # The thin SVD works on the smaller side, so m > n (overcomplete) gets
  # WᵀW = cI, the nearest feasible point, with the same two lines.
  polar = polar_factor(jnp.where(finite, w, 0))
  projected = jnp.where(finite, polar * jnp.sqrt(c)[..., None, None], jnp.nan)
  if split:
    projected = jax.sharding.reshard(projected,
                                       sharding.on_mesh_of(projected, *spec))
  if axis_name is not None:
    projected = jax.lax.dynamic_slice_in_dim(
        projected, jax.lax.axis_index(axis_name) * local, local, axis=-1)
  return view.from_matrices(projected).astype(leaf.dtype)


def _met_under_ada(view: MatrixView, amplitude: Any) -> bool:
  """Whether each matrix has one vector on its constrained side under
  "ada" (one unit, a depthwise convolution's groups): its own norm is c, so
  it is on the constraint already, exactly."""
  return isinstance(amplitude, str) and min(view.matrix_shape[1:]) == 1


def _project_leaf(leaf: jax.Array, view: MatrixView,
                  amplitude: Any, axis_name: Any = None) -> jax.Array:
  """One leaf projected, in its dtype and, called eagerly, its placement."""
  if leaf.size == 0 or _met_under_ada(view, amplitude):
    return leaf  # no constraint, or met (and no 0/0 in "ada")
  axis_name = penalty.split_axis(leaf, axis_name)
  c = None if isinstance(amplitude, str) else jnp.asarray(amplitude)
  out = _scaled_polar(leaf, view, c, axis_name)
  if (isinstance(leaf, jax.Array) and not isinstance(leaf, jax.core.Tracer)
      and leaf.committed):
    # Under jit, out_shardings (Auto) or the Explicit spec decide instead.
    # An uncommitted leaf stays uncommitted: a jitted step fed a mix of
    # committed and uncommitted arrays compiles again for each mix.
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
    dtype), the other leaves as they were. A matrix holding a NaN or an
    infinity comes back NaN.

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
  select = _on_bort_leaves(
      lambda update, param, view: _project_leaf(param, view, amplitude),
      dimension_numbers, bort_mask)
  projected, _ = select.update(params, select.init(params), params)
  return projected


def _on_bort_leaves(leaf_fn: Callable[[Any, Any, MatrixView], Any],
                    dimension_numbers: DimensionNumbersLike,
                    bort_mask: Any, warn: bool = True
                    ) -> optax.GradientTransformation:
  """A transformation whose update is ``leaf_fn(update, param, view)`` on
  each leaf Bort would correct (the same selection: ``optax.masked`` by
  ``bort_mask``, then the dimension numbers of the masked tree) and the
  update itself elsewhere. Its ``init`` refuses bad dimension numbers and
  dtypes and, with ``warn``, warns on an empty selection."""
  bort_mask = validation.check_mask("bort_mask", bort_mask)
  selection = under_bort_mask(dimension_numbers, bort_mask is not None)

  def init_fn(selected):
    check_bort_leaves(selected, resolve_views(selection, selected),
                      dimension_numbers, warn=warn)
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    leaves, treedef = jax.tree.flatten(updates)
    param_leaves = jax.tree.leaves(params)
    if len(param_leaves) != len(leaves):
      raise ValueError(
          f"params must be the tree the updates are for, one array per "
          f"update; got {len(param_leaves)} arrays for {len(leaves)} "
          f"updates.")
    views = resolve_views(selection, params)
    out = [update if view is None else leaf_fn(update, param, view)
           for update, param, view in zip(leaves, param_leaves, views)]
    return treedef.unflatten(out), state

  select = optax.GradientTransformation(init_fn, update_fn)
  if bort_mask is not None:
    select = optax.masked(select, mask_by_path(bort_mask))
  return select


class StartOnConstraintState(NamedTuple):
  """:func:`start_on_constraint`'s state: the step count, and the state of
  its selection (``optax.masked``'s under a ``bort_mask``)."""

  count: jax.Array
  inner: Any


def start_on_constraint(
    amplitude: optax.ScalarOrSchedule | str = ADA,
    *,
    dimension_numbers: DimensionNumbersLike = None,
    bort_mask: Any | Callable[[Any], Any] | None = None,
    kernel_options: penalty.KernelOptions | None = None,
) -> optax.GradientTransformation:
  """Makes the first step land on ``W Wᵀ = cI``: an orthogonal start.

  The last transformation of a chain: on the first step (count 0) it turns
  the update ``u`` of each Bort parameter ``W`` into the step that lands on
  the projection (:func:`project_to_constraint`) of where ``u`` would have
  taken it,

  .. math::
    u ← \\sqrt{c} \\, \\mathrm{polar}(W + u) − W,

  and passes every later update, and every other leaf's, unchanged. The
  weights then start on the constraint whatever their initialisation, and
  the Bort correction only has to hold them there. It costs one SVD per
  Bort matrix on the first step; it sits in a ``lax.cond``, so the later
  steps compute none (except under ``vmap``, where both branches run) but
  still pass the updates through it: 2–4 % of the every-step default's
  training step on the MNIST MLPs, 2-core CPU.
  A leaf whose first update is not finite is left as the optimizer made
  it.

  Leaves are selected exactly as :func:`add_bort_correction` selects them.
  Under ``shard_map`` with a matrix's fan-in split across devices
  (``kernel_options.axis_name``), the first step gathers each matrix on
  every device of that axis, projects it and keeps the device's part (one
  all-gather, once); under Explicit sharding the SVD is partitioned over
  batch axes as in :func:`project_to_constraint`.

  A model fine-tuned from trained weights is projected too, on its first
  step: leave the start off to keep its weights and let the correction
  bring them to the constraint step by step. The landing is a projection,
  not a step of the learning rate: a learning rate of 0 still lands the
  weights. Its target is the full constraint, the full modes' (the
  aliases' default ``l1-fullrow``); the row and column modes hold norms
  only, so with them the start changes the initialisation and the
  correction does not hold what it adds.

  Differentiating through the first step (``jax.grad`` of a loss after it,
  as meta-learning does) uses the polar factor's own derivative, defined
  wherever ``W + u`` has full rank, repeated singular values included (an
  orthogonal ``W`` with a zero first update, a warm-up from learning rate
  0); under "ada" the amplitude ``c`` is held constant there, as in the
  correction.

  Args:
    amplitude: the target ``c > 0`` (a schedule is read at step 0), or
      ``"ada"``: ``c = (mean_i ‖w_i‖)²`` of ``W + u``.
    dimension_numbers: which leaves are Bort parameters and how each is a
      matrix, as in :func:`add_bort_correction`.
    bort_mask: a pytree or callable of booleans selecting the leaves Bort may
      act on, as in :func:`add_bort_correction`.
    kernel_options: the correction's kernel options; their ``axis_name``
      (``shard_map`` with the fan-in split over it) is gathered over.

  Returns:
    An :class:`optax.GradientTransformation`; its ``update`` needs
    ``params``.

  Raises:
    ValueError: for a bad amplitude, or (at ``init``) dimension numbers
      that do not fit a leaf or a selected leaf that is not real floating.

  Examples:
    >>> import jax.numpy as jnp, optax, bort_jax
    >>> params = {"kernel": jnp.arange(12.0).reshape(4, 3) / 10}
    >>> tx = optax.chain(optax.adam(1e-3), bort_jax.start_on_constraint())
    >>> updates, _ = tx.update(params, tx.init(params), params)
    >>> w = optax.apply_updates(params, updates)["kernel"]
    >>> gram = w.T @ w  # (in, out): the units are the columns
    >>> bool(jnp.allclose(gram, gram[0, 0] * jnp.eye(3), atol=1e-5))
    True
  """
  return landing(amplitude, dimension_numbers=dimension_numbers,
                 bort_mask=bort_mask, kernel_options=kernel_options)


def landing(amplitude: Any, *, dimension_numbers: DimensionNumbersLike,
            bort_mask: Any, kernel_options: penalty.KernelOptions | None,
            warn: bool = True, unless_zero: Any = None
            ) -> optax.GradientTransformation:
  """:func:`start_on_constraint`, for the aliases too: ``warn=False`` after
  a correction that already warned of an empty selection; ``unless_zero``,
  a strength known only when traced (``optax.inject_hyperparams``' γ):
  where it is 0 there is no Bort, and no start."""
  if callable(amplitude):
    value = amplitude(0)
    try:
      amplitude = _check_amplitude(value)
    except ValueError as e:
      raise ValueError(
          f"amplitude: the start on the constraint reads a schedule at step "
          f"0, where it must be a positive number, got {value}; pass a "
          f"schedule positive at step 0, or start_on_constraint=False.") from e
  else:
    amplitude = _check_amplitude(amplitude)
  axis_name = None if kernel_options is None else kernel_options.axis_name

  def land(update, param, view):
    if _met_under_ada(view, amplitude):
      return update  # on the constraint wherever the update takes it
    dtype = penalty.compute_dtype(param.dtype)
    target = (param.astype(dtype) + update.astype(dtype)).astype(param.dtype)
    # A non-finite update (Adam's eps underflowing in float16) would make
    # the landing NaN: it is left as the optimizer made it.
    finite = jnp.all(jnp.isfinite(target))
    landed = _project_leaf(target, view, amplitude, axis_name)
    step = (landed.astype(dtype) - param.astype(dtype)).astype(update.dtype)
    return jnp.where(finite, step, update)

  select = _on_bort_leaves(land, dimension_numbers, bort_mask, warn=warn)

  def init_fn(params):
    return StartOnConstraintState(count=jnp.zeros([], jnp.int32),
                                  inner=select.init(params))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError(NO_PARAMS_MSG)
    # The count compared on the host: under a trace that closes over a
    # concrete state, a JAX comparison of it would be a tracer.
    if eager.concrete(state.count) and np.asarray(state.count) > 0:
      # Called eagerly after the start: nothing to run or compile (the
      # cond below would compile its branches again for each new
      # transformation, as optax.inject_hyperparams builds on every update).
      return updates, state._replace(count=optax.safe_increment(state.count))
    return started(updates, state, params)

  @eager.jit_when_eager
  def started(updates, state, params):
    first = state.count == 0
    if unless_zero is not None:
      first = first & (jnp.asarray(unless_zero) != 0)
    updates = jax.lax.cond(
        first, lambda u: select.update(u, state.inner, params)[0],
        lambda u: u, updates)
    return updates, state._replace(count=optax.safe_increment(state.count))

  return optax.GradientTransformation(init_fn, update_fn)
