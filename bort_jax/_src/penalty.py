"""The Bort penalties and their closed-form corrections (pure JAX, no optax).

The public functions act on matrices ``w`` of shape ``(..., m, n)`` whose rows
are output units (leading axes are batch axes). Notation: ``G = w wᵀ`` (m×m),
``H = wᵀ w`` (n×n), ``c`` the amplitude, ``sign(0) = 0``, ``τ = tau · c``
the Huber width and ``ψ_τ(r) = clip(r/τ, −1, 1)`` the slope of the Huber
function ``h_τ(r) = r²/(2τ)`` for ``|r| ≤ τ``, ``|r| − τ/2`` beyond.

=================  =============================  =============================
mode               correction Δ(w)                gradient of
=================  =============================  =============================
``l2-full``        ``(G − cI) w = w (H − cI)``    ``¼‖G − cI‖²_F``
``l2-row``         ``(diag G − c) ∘ w``           ``¼ Σ_i (‖w_i‖² − c)²``
``l2-col``         ``w ∘ (diag H − c)``           ``¼ Σ_j (‖w^j‖² − c)²``
``l1-fullrow``     ``sign(G − cI) w``             ``½ ‖G − cI‖₁``
``l1-fullcol``     ``w sign(H − cI)``             ``½ ‖H − cI‖₁``
``l1-row``         ``sign(diag G − c) ∘ w``       ``½ Σ_i |‖w_i‖² − c|``
``l1-col``         ``w ∘ sign(diag H − c)``       ``½ Σ_j |‖w^j‖² − c|``
``huber-fullrow``  ``ψ_τ(G − cI) w``              ``½ Σ_ij h_τ((G − cI)_ij)``
``huber-fullcol``  ``w ψ_τ(H − cI)``              ``½ Σ_ij h_τ((H − cI)_ij)``
=================  =============================  =============================

The Huber modes are the smooth l1 modes: ``l1-full*`` as ``tau → 0``, and
``l2-full / τ`` where every ``|(G − cI)_ij| ≤ τ``. The sign of the l1 modes
never shrinks, so near the constraint they jitter; the Huber correction
vanishes there, like l2, while far from it its entries are bounded, like l1.

The l1 modes read a residual within rounding of 0 as 0 (``sign(0) = 0``
taken to the float's precision: ``|R| ≤ 4 √n eps c`` for sums of ``n``
products, :func:`~bort_jax._src.products.rounding_zone`): on the constraint
the residual is rounding, and its sign would set the step's direction by
the machine's summation order. The aliases, which know the step, narrow
the zone to what one sign step changes a Gram entry by: a step too small
to move the weights beyond rounding is taken, so the sign still takes the
residual to float precision as the learning rate decays.

"row" modes act on the output units' weight vectors, "col" modes on the fan-in
vectors. The products themselves live in :mod:`products`; this module maps a
mode to them and checks shapes.

**More units than fan-in** (``m > n``: a first convolution with many
channels, a transformer's up-projection, a widening 1×1 shortcut).
``G = cI`` has no solution there (``G`` has rank ``n < m``), so the
full modes on the units (``l2-full``, ``l1-fullrow``, ``huber-fullrow``)
constrain the feasible side instead, ``H = cI`` (orthonormal columns, a
tight frame: what :func:`bort_jax.orthogonality_error` measures and
:func:`bort_jax.project_to_constraint` projects to there): their Gram is
``H`` and ``"ada"`` is the columns' squared mean norm. ``l2-full`` has the
same correction either way for a fixed ``c``. The published code keeps
``G``, whose sign (l1) or residual (ada, ``c`` below the columns' norms)
then pulls the weights toward zero step after step.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bort_jax._src import defaults
from bort_jax._src import sharding
from bort_jax._src import validation
from bort_jax._src.products import COLS
from bort_jax._src.products import compute_dtype
from bort_jax._src.products import Context
from bort_jax._src.products import gram_minus_c
from bort_jax._src.products import huber_full
from bort_jax._src.products import huber_slope
from bort_jax._src.products import input_eps
from bort_jax._src.products import KernelOptions
from bort_jax._src.products import l1_full
from bort_jax._src.products import l1_norms
from bort_jax._src.products import l1_sign
from bort_jax._src.products import l2_full
from bort_jax._src.products import l2_norms
from bort_jax._src.products import norms_sq
from bort_jax._src.products import other
from bort_jax._src.products import ROWS
from bort_jax._src.products import rounding_zone
from bort_jax._src.products import sign_slope

Array = jax.Array
Amplitude = Any  # float, array broadcastable to the batch shape, or "ada"
Tau = Any  # a positive float (or a traced scalar)
ADA = defaults.ADA

__all__ = ("ADA", "COLS", "KernelOptions", "ROWS", "ada_amplitude",
           "bort_correction", "bort_penalty", "check_mode", "check_tau",
           "check_weights", "compute_dtype", "correction")

_EXACT = Context(KernelOptions(precision=jax.lax.Precision.HIGHEST), None,
                  None)


def _l2_full_penalty(x, c, vectors, ctx):
  residual = gram_minus_c(x, c, vectors, ctx)
  return 0.25 * jnp.sum(jnp.square(residual), axis=(-2, -1))


def _l1_full_penalty(x, c, vectors, ctx):
  residual = gram_minus_c(x, c, vectors, ctx)
  return 0.5 * jnp.sum(jnp.abs(residual), axis=(-2, -1))


def _huber_full_penalty(x, c, vectors, ctx):
  # ½ Σ h_τ(R_ij): R is symmetric, so its gradient ½ (ψ + ψᵀ) x is ψ x, the
  # correction (as ½‖R‖₁ gives sign(R) x).
  residual = gram_minus_c(x, c, vectors, ctx)
  width = ctx.tau * c[..., None, None]
  size = jnp.abs(residual)
  # τ = 0 (a zero matrix under "ada") is the l1 limit; no 0/0 in either branch.
  safe = jnp.where(width > 0, width, 1)
  inside = size <= width
  huber = jnp.where(inside, jnp.square(residual) / (2 * safe),
                    size - width / 2)
  return 0.5 * jnp.sum(huber, axis=(-2, -1))


def _l2_norms_penalty(x, c, vectors, ctx):
  residual = norms_sq(x, vectors, ctx) - c[..., None]
  return 0.25 * jnp.sum(jnp.square(residual), -1)


def _l1_norms_penalty(x, c, vectors, ctx):
  residual = norms_sq(x, vectors, ctx) - c[..., None]
  return 0.5 * jnp.sum(jnp.abs(residual), -1)


class _Mode(NamedTuple):
  correction: Callable[..., Array]  # (x, c, vectors, context) -> Δ
  penalty: Callable[..., Array]  # (x, c, vectors, context) -> per matrix
  on_units: bool  # True: vectors are output units; False: fan-in vectors
  uses_gram: bool  # matrix products (worth batching same-shape matrices)


#: Each mode's correction and penalty (the names are :data:`bort_jax.MODES`).
_MODE_RULES: dict[str, _Mode] = {
    "l2-full": _Mode(l2_full, _l2_full_penalty, True, True),
    "l2-row": _Mode(l2_norms, _l2_norms_penalty, True, False),
    "l2-col": _Mode(l2_norms, _l2_norms_penalty, False, False),
    "l1-fullrow": _Mode(l1_full, _l1_full_penalty, True, True),
    "l1-fullcol": _Mode(l1_full, _l1_full_penalty, False, True),
    "l1-row": _Mode(l1_norms, _l1_norms_penalty, True, False),
    "l1-col": _Mode(l1_norms, _l1_norms_penalty, False, False),
    "huber-fullrow": _Mode(huber_full, _huber_full_penalty, True, True),
    "huber-fullcol": _Mode(huber_full, _huber_full_penalty, False, True),
}
assert tuple(_MODE_RULES) == defaults.MODES, "every mode of Mode, in order"


def check_mode(mode: str) -> _Mode:
  """Returns the mode's kernels, or raises a ValueError listing valid modes."""
  validation.check_mode(mode)
  return _MODE_RULES[mode]


def check_tau(tau: Tau) -> Tau:
  """The Huber width ``tau`` (relative to c): :func:`validation.check_tau`."""
  return validation.check_tau(tau)


def check_weights(w: Any, name: str) -> Array:
  """``w`` as an array of real floating matrices ``(..., m, n)``, or raises.

  Integer weights would be truncated, bool ones come back bool and complex
  ones would need ``wᴴ``, not ``wᵀ``: each is refused, not guessed at.
  """
  w = jnp.asarray(w)
  if not jnp.issubdtype(w.dtype, jnp.floating):
    raise validation.ArgumentTypeError(
        f"{name} takes real floating weights w, got dtype {w.dtype}; cast "
        "them first, e.g. w.astype(jnp.float32).")
  if w.ndim < 2:
    raise ValueError(
        f"{name} expects matrices of shape (..., m, n); got shape {w.shape}."
    )
  return w


def check_axis_bound(axis_name: Any) -> None:
  """Refuses a ``kernel_options.axis_name`` that no ``shard_map`` (or
  ``pmap``) around the call binds: the collectives over it would fail
  deep inside JAX ("unbound axis name")."""
  if axis_name is None:
    return
  try:
    jax.lax.axis_size(axis_name)
  except NameError:
    raise ValueError(
        f"kernel_options.axis_name is {axis_name!r}, which is not bound "
        "here: call the update inside jax.shard_map over a mesh with that "
        "axis (the fan-in split over it), or leave axis_name None."
    ) from None


def _varying(x: Any) -> frozenset:
  """The manual mesh axes ``x`` varies over inside ``shard_map`` (its type's
  ``vma``, spelt ``manual_axis_type.varying`` by later JAX); empty where
  JAX does not track them (``check_vma=False``)."""
  aval = jax.typeof(x)
  axes = getattr(aval, "vma", None)
  if axes is None:
    axes = getattr(getattr(aval, "manual_axis_type", None), "varying", ())
  return frozenset(axes)


def split_axis(x: Array, axis_name: Any) -> Any:
  """``kernel_options.axis_name`` for the matrices ``x``, or ``None`` where
  they are whole on every device.

  A matrix replicated over the axis (a head left unsplit in a tensor-
  parallel ``shard_map``) varies over no device: summed over the axis, its
  Gram would count it once per device. Where ``shard_map`` tracks what
  varies (``check_vma``, its default), such a matrix is computed locally;
  a matrix split on its units axis instead cannot be told apart from one
  split on its fan-in, and without ``check_vma`` (or under ``pmap`` and
  ``vmap``) nothing can be told, so the caller's contract stands
  (``axis_name``).
  """
  check_axis_bound(axis_name)
  if axis_name is None:
    return None
  axes = set(axis_name) if isinstance(axis_name, tuple) else {axis_name}
  tracked = axes <= _varying(jax.lax.axis_index(axis_name))
  return None if tracked and axes.isdisjoint(_varying(x)) else axis_name


def _overcomplete(x: Array, units: int, ctx: Context) -> bool:
  """Whether x's matrices have more units than fan-in, ``m > n`` (inside
  shard_map, counting the fan-in of every device)."""
  fan_in = x.shape[other(units)]
  if ctx.manual_axis == other(units):
    fan_in *= jax.lax.axis_size(ctx.options.axis_name)
  return x.shape[units] > fan_in


def _vectors(kernels: _Mode, units: int, overcomplete: bool = False) -> int:
  """The axis indexing the mode's vectors, given the axis indexing units:
  a full mode on the units of an overcomplete matrix takes the feasible
  side, the fan-in vectors (see the module docstring)."""
  if kernels.on_units and not (kernels.uses_gram and overcomplete):
    return units
  return other(units)


def _ada_axis(kernels: _Mode, units: int, overcomplete: bool) -> int:
  """The vectors whose squared mean norm is ``"ada"``'s c: the units', as in
  the published code, except where a full mode takes the feasible side."""
  return _vectors(kernels, units, overcomplete) if kernels.on_units else units


def _zone(n: int, dtype, options: KernelOptions | None, cap: Any) -> Any:
  """The sign's zone (the l1 modes', and the Huber modes' with τ below it):
  the rounding zone of sums of ``n`` products in ``dtype`` (for a Gram,
  with its inputs rounded as ``options`` says:
  :func:`~bort_jax._src.products.input_eps`), narrowed to ``cap`` where
  one is given.

  The aliases cap it at the change one sign step makes to a Gram entry
  (``2 · every · s_t`` of ``c``, ``s_t`` the per-step strength): a step
  that small moves the weights by no more than rounding whatever its
  direction, so the sign may dither the residual down to float precision
  as the learning rate decays, where the full zone would leave it at the
  zone's edge.
  """
  inputs = None if options is None else input_eps(options, dtype)
  zone = rounding_zone(n, dtype, inputs)
  if cap is None:
    return zone
  if isinstance(cap, numbers.Real):  # a constant step: a constant zone
    return min(zone, float(cap))
  return jnp.minimum(zone, cap)


def _met_by_ada(amplitude: Amplitude, vectors: int, ada_vectors: int) -> bool:
  """Whether "ada" makes the constraint hold exactly: one vector on the
  constrained side (``vectors`` of them), which is also the one "ada"
  averages (``ada_vectors``), so that its own squared norm is c (for the
  column modes, whose "ada" is over the units, only a 1×1 matrix). The
  correction and the penalty are 0 there, not the sign of a rounding
  difference (a random ±w step in the l1 modes: a depthwise convolution's
  one-unit groups, a ``Linear(1, k)`` kernel's one column)."""
  return (isinstance(amplitude, str) and amplitude == ADA
          and vectors == 1 == ada_vectors)


def _ada(x: Array, vectors: int, ctx: Context) -> Array:
  if x.shape[vectors] == 0:  # no vectors: no scale (not the mean of none)
    return jnp.zeros(x.shape[:-2], x.dtype)
  x = jax.lax.stop_gradient(x)
  mean = jnp.mean(jnp.sqrt(norms_sq(x, vectors, ctx)), axis=-1)
  if ctx.manual_axis == vectors:  # the vectors are split over devices
    mean = jax.lax.pmean(mean, ctx.options.axis_name)
  return jnp.square(mean)


def ada_amplitude(w: Array) -> Array:
  """The adaptive amplitude of the full modes: a squared mean norm, without
  gradient.

  ``c = (mean_i ‖w_i‖₂)²`` over the rows (output units) when ``m ≤ n``, and
  over the columns ``w^j`` when ``m > n``, where ``w wᵀ = cI`` has no
  solution and the full modes constrain ``wᵀ w = cI`` (see the module
  docstring). Per matrix, computed on the device (no host sync).

  Args:
    w: matrices of shape ``(..., m, n)``, rows are output units.

  Returns:
    An array of shape ``w.shape[:-2]``.

  Examples:
    >>> import jax.numpy as jnp
    >>> float(ada_amplitude(jnp.array([[3.0, 4.0], [0.0, 1.0]])))
    9.0
    >>> float(ada_amplitude(jnp.array([[3.0], [4.0]])))  # one column, m > n
    25.0
  """
  w = check_weights(w, "ada_amplitude")
  return _ada(w, COLS if _overcomplete(w, ROWS, _EXACT) else ROWS, _EXACT)


def _check_amplitude_value(amplitude: Any) -> None:
  """Refuses, for the public penalty and correction, an amplitude that is
  not ``"ada"``, a positive number or an array of them (a concrete array is
  checked by value; a traced one cannot be)."""
  fix = "amplitude must be 'ada', a positive number or an array of them"
  if isinstance(amplitude, str):
    if amplitude != ADA:
      raise ValueError(f"{fix}, got {amplitude!r}.")
    return
  if callable(amplitude):
    raise validation.ArgumentTypeError(
        f"{fix} here (a schedule needs a step count: use it in an "
        f"optimizer), got {amplitude!r}.")
  try:
    values = np.asarray(amplitude, dtype=np.float64)
  except jax.errors.TracerArrayConversionError:
    return
  except (TypeError, ValueError):
    raise validation.ArgumentTypeError(f"{fix}, got {amplitude!r}.") from None
  if not (np.all(values > 0) and np.all(np.isfinite(values))):
    raise ValueError(f"{fix} (finite: the target squared norm c), got "
                     f"{amplitude!r}.")


def _amplitude_array(x: Array, amplitude: Amplitude, vectors: int,
                     ctx: Context) -> Array:
  """The amplitude as an array of the batch shape, in x's dtype ("ada":
  the squared mean norm of the ``vectors``)."""
  if isinstance(amplitude, str) and amplitude == ADA:
    return _ada(x, vectors, ctx)
  c = jnp.asarray(amplitude, dtype=x.dtype)
  try:
    fits = jnp.broadcast_shapes(c.shape, x.shape[:-2]) == x.shape[:-2]
  except ValueError:
    fits = False
  if not fits:
    raise ValueError(
        f"amplitude has shape {c.shape}, which does not broadcast to the "
        f"batch of matrices {x.shape[:-2]} (one c per matrix); pass a number "
        "or an array of that shape.")
  return jnp.broadcast_to(c, x.shape[:-2])


def correction(
    x: Array,
    mode: str,
    amplitude: Amplitude,
    options: KernelOptions,
    units: int = ROWS,
    tau: Tau = 0.01,
    zone_cap: Any = None,
) -> Array:
  """Δ in the compute dtype, for matrices whose units lie along ``units``.

  The sharding of ``x`` (Explicit mode) or ``options.axis_name`` (shard_map,
  fan-in split) decides where the products' collectives go. ``tau`` is the
  Huber modes' width relative to c, checked by the public callers (a
  schedule's value, 0 at a zero learning rate, is the l1 limit).
  ``zone_cap`` (relative to c, possibly traced) narrows the l1 modes'
  rounding zone to it (:func:`_zone`).
  """
  kernels = check_mode(mode)
  x = x.astype(compute_dtype(x.dtype))
  if x.size == 0:  # no weights: nothing to correct (and no 0/0 in "ada")
    return jnp.zeros_like(x)
  options = options._replace(axis_name=split_axis(x, options.axis_name))
  manual_axis = None if options.axis_name is None else other(units)
  split = Context(options, None, manual_axis)
  overcomplete = _overcomplete(x, units, split)
  ada_axis = _ada_axis(kernels, units, overcomplete)
  vectors = _vectors(kernels, units, overcomplete)
  if (manual_axis not in (vectors, ada_axis)  # else counted on one device
      and _met_by_ada(amplitude, x.shape[vectors], x.shape[ada_axis])):
    return jnp.zeros_like(x)
  c = _amplitude_array(x, amplitude, ada_axis, split)

  summed = other(vectors)  # each Gram entry or norm sums over this axis
  n = x.shape[summed] * (jax.lax.axis_size(options.axis_name)
                         if manual_axis == summed else 1)
  zone = _zone(n, x.dtype, options if kernels.uses_gram else None, zone_cap)

  def run(x, c):
    ctx = Context(options, sharding.explicit_spec(x), manual_axis, tau, zone)
    return kernels.correction(x, c, vectors, ctx)

  # lax.map slices its batch axis, which must then be unsplit: a batch split
  # over devices goes through one batched product instead.
  spec = sharding.explicit_spec(x)
  batch_split = spec is not None and any(e is not None for e in spec[:-2])
  if (not kernels.uses_gram or x.ndim == 2 or options.batched()
      or batch_split):
    return run(x, c)
  delta = jax.lax.map(
      lambda args: run(*args), (x.reshape(-1, *x.shape[-2:]), c.reshape(-1))
  )
  return delta.reshape(x.shape)


def bort_correction(
    w: Array,
    mode: str = "l2-full",
    amplitude: Amplitude = 1.0,
    *,
    tau: Tau = 0.01,
    kernel_options: KernelOptions = KernelOptions(),
) -> Array:
  """The Bort correction Δ(w), the (sub)gradient of :func:`bort_penalty`.

  For ``l2-full``, ``Δ = (w wᵀ − cI) w``; the smaller Gram side is used. For
  ``huber-fullrow``, ``Δ = clip((w wᵀ − cI)/τ, −1, 1) w`` with ``τ = tau·c``.
  See the module docstring for all nine modes.

  Args:
    w: real floating matrices of shape ``(..., m, n)``; row ``i`` holds every
      weight of output unit ``i`` and leading axes are batch axes.
    mode: one of ``l2-full, l2-row, l2-col, l1-fullrow, l1-fullcol, l1-row,
      l1-col, huber-fullrow, huber-fullcol``.
    amplitude: the target squared norm ``c``: a number, an array broadcastable
      to ``w.shape[:-2]``, or ``"ada"`` for ``c = (mean_i ‖w_i‖)²``.
    tau: the Huber modes' width relative to the amplitude, ``τ = tau · c``
      (finite, > 0; the other modes ignore it).
    kernel_options: how the full modes' products are computed
      (:class:`KernelOptions`).

  Returns:
    Δ(w), same shape and dtype as ``w`` (computed in at least float32).

  Raises:
    TypeError: ``w`` is not real floating (integer, bool or complex).

  Examples:
    >>> import jax.numpy as jnp
    >>> w = jnp.array([[2.0, 0.0], [0.0, 1.0]])
    >>> bort_correction(w, "l2-full")  # rows with norm² 4 and 1, target 1
    Array([[6., 0.],
           [0., 0.]], dtype=float32)
    >>> # G − I = diag(3, 0): slope clip(3/0.5) = 1 on row 0, 0 on row 1.
    >>> bort_correction(w, "huber-fullrow", tau=0.5)
    Array([[2., 0.],
           [0., 0.]], dtype=float32)
  """
  w = check_weights(w, "bort_correction")
  _check_amplitude_value(amplitude)
  return correction(w, mode, amplitude, kernel_options,
                    tau=check_tau(tau)).astype(w.dtype)


def bort_penalty(
    w: Array,
    mode: str = "l2-full",
    amplitude: Amplitude = 1.0,
    *,
    tau: Tau = 0.01,
) -> Array:
  """The scalar Bort penalty whose gradient :func:`bort_correction` returns.

  Summed over batch axes. With ``amplitude="ada"`` the amplitude is a constant
  (no gradient flows through it), as in the correction, and so is ``τ``.

  Args:
    w: real floating matrices of shape ``(..., m, n)``, rows are output units.
    mode: one of the nine modes (see :func:`bort_correction`).
    amplitude: a number, an array of the batch shape, or ``"ada"``.
    tau: the Huber modes' width relative to the amplitude, ``τ = tau · c``.

  Returns:
    A scalar.

  Raises:
    TypeError: ``w`` is not real floating (integer, bool or complex).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> w = jnp.array([[2.0, 0.0], [0.0, 1.0]])
    >>> float(bort_penalty(w, "l2-full"))  # ¼ (4 − 1)²
    2.25
    >>> jax.grad(bort_penalty)(w)
    Array([[6., 0.],
           [0., 0.]], dtype=float32)
  """
  w = check_weights(w, "bort_penalty")
  _check_amplitude_value(amplitude)
  kernels = check_mode(mode)
  ctx = _EXACT._replace(tau=check_tau(tau))
  x = w.astype(compute_dtype(w.dtype))
  overcomplete = _overcomplete(x, ROWS, _EXACT)
  ada_axis = _ada_axis(kernels, ROWS, overcomplete)
  vectors = _vectors(kernels, ROWS, overcomplete)
  if _met_by_ada(amplitude, x.shape[vectors], x.shape[ada_axis]):
    return jnp.sum(jnp.zeros_like(x))  # 0, with a zero gradient
  c = _amplitude_array(x, amplitude, ada_axis, _EXACT)
  return jnp.sum(kernels.penalty(x, c, vectors, ctx))


# ----------------------------------------------------------------------------
# Several fan-in axes contracted in place (no reshape to a matrix).

_ND_MODES = ("l2-full", "l2-row", "l2-col", "l1-fullrow", "l1-row", "l1-col",
             "huber-fullrow")


def corrects_in_place(mode: str, shape, reduction_axes, output_axes,
                      options: KernelOptions) -> bool:
  """Whether :func:`correction_over_axes` handles this parameter.

  One unit axis and no batch axis; the Gram, if any, is the units' (for
  ``l2-full``, ``l1-fullrow`` and ``huber-fullrow`` when units are the
  smaller side, the last two when they also fit one block). The Gram of
  ``l1-fullcol`` and ``huber-fullcol`` (and of the full row modes on more
  units than fan-in) is over fan-in vectors: they need them as one axis,
  so they keep the matrix view.
  """
  if mode not in _ND_MODES or options.axis_name is not None:
    return False
  if len(output_axes) != 1 or len(reduction_axes) + 1 != len(shape):
    return False
  m = shape[output_axes[0]]
  n = math.prod(shape[a] for a in reduction_axes)
  if mode == "l2-full":
    return m <= n
  if mode in ("l1-fullrow", "huber-fullrow"):  # m > n: the fan-in's Gram
    return m <= n and (options.block_size is None or m <= options.block_size)
  return True


def correction_over_axes(x: Array, mode: str, amplitude: Amplitude,
                         options: KernelOptions, reduction_axes,
                         unit_axis: int, tau: Tau = 0.01,
                         zone_cap: Any = None) -> Array:
  """Δ of one parameter whose fan-in spans several axes, in its own layout.

  The units' Gram contracts every fan-in axis at once (``dot_general`` with
  several contracting dimensions), so a fan-in axis split over devices under
  Auto sharding costs an all-reduce of the m×m Gram, never a gather of the
  kernel, whichever fan-in axis is split. Same values as :func:`correction`
  on the matrix view.
  """
  x = x.astype(compute_dtype(x.dtype))
  if x.size == 0:
    return jnp.zeros_like(x)
  reduction_axes = tuple(reduction_axes)
  units = x.shape[unit_axis]
  if _met_by_ada(amplitude, units if check_mode(mode).on_units
                 else x.size // units, units):
    return jnp.zeros_like(x)
  units_sq = jnp.sum(jnp.square(x), axis=reduction_axes, keepdims=True)
  if isinstance(amplitude, str) and amplitude == ADA:
    c = jnp.square(jnp.mean(jnp.sqrt(jax.lax.stop_gradient(units_sq))))
  else:
    c = jnp.asarray(amplitude, x.dtype).reshape(())
  columns = mode in ("l2-col", "l1-col")  # norms summed over the units
  summed = units if columns else x.size // units
  gram = options if check_mode(mode).uses_gram else None
  ctx = Context(options, None, None, tau,
                _zone(summed, x.dtype, gram, zone_cap))
  if mode in ("l2-row", "l1-row"):
    scale = units_sq - c
    return (scale if mode == "l2-row" else l1_sign(scale, c, ctx)) * x
  if columns:
    scale = jnp.sum(jnp.square(x), axis=unit_axis, keepdims=True) - c
    return (scale if mode == "l2-col" else l1_sign(scale, c, ctx)) * x
  a = x if options.gram_dtype is None else x.astype(options.gram_dtype)
  gram = jax.lax.dot_general(
      a, a, ((reduction_axes, reduction_axes), ((), ())),
      precision=options.precision, preferred_element_type=x.dtype)
  residual = gram - c * jnp.eye(gram.shape[0], dtype=gram.dtype)
  if mode == "l2-full":
    s = residual
  else:
    slope = huber_slope if mode == "huber-fullrow" else sign_slope
    s = slope(residual, c, ctx)
  if options.gram_dtype is not None:
    s = s.astype(options.gram_dtype)
  delta = jax.lax.dot_general(
      a, s, (((unit_axis,), (0,)), ((), ())),
      precision=options.precision, preferred_element_type=x.dtype)
  return jnp.moveaxis(delta, -1, unit_axis)
