"""The Bort penalties and their closed-form corrections (pure JAX, no optax).

Everything here acts on matrices ``w`` of shape ``(..., m, n)`` whose rows are
output units (leading axes are batch axes). Notation: ``G = w wᵀ`` (m×m),
``H = wᵀ w`` (n×n), ``c`` the amplitude, ``sign(0) = 0``.

=============  =============================  ===============================
mode           correction Δ(w)                gradient of
=============  =============================  ===============================
``l2-full``    ``(G − cI) w = w (H − cI)``    ``¼‖G − cI‖²_F``
``l2-row``     ``(diag G − c) ∘ w``           ``¼ Σ_i (‖w_i‖² − c)²``
``l2-col``     ``w ∘ (diag H − c)``           ``¼ Σ_j (‖w^j‖² − c)²``
``l1-fullrow`` ``sign(G − cI) w``             ``½ ‖G − cI‖₁``
``l1-fullcol`` ``w sign(H − cI)``             ``½ ‖H − cI‖₁``
``l1-row``     ``sign(diag G − c) ∘ w``       ``½ Σ_i |‖w_i‖² − c|``
``l1-col``     ``w ∘ sign(diag H − c)``       ``½ Σ_j |‖w^j‖² − c|``
=============  =============================  ===============================

Every column mode is its row mode applied to ``wᵀ`` (with ``c`` still taken
from ``w``), so only four kernels exist: the full l2 product, the full l1
product and the two norm scalings.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array
Amplitude = Any  # float, array broadcastable to the batch shape, or "ada"

ADA = "ada"


class _Mode(NamedTuple):
  correction: Callable[..., Array]  # (w, c, options) -> Δ on the row side
  penalty: Callable[[Array, Array], Array]  # (w, c) -> per-matrix penalty
  transposed: bool  # True: apply to wᵀ (a column mode)


def _swap(w: Array) -> Array:
  return jnp.swapaxes(w, -1, -2)


def compute_dtype(dtype) -> jnp.dtype:
  """Float32 for low-precision params, else the params' own float type."""
  return jnp.promote_types(dtype, jnp.float32)


def _matmul(a: Array, b: Array, options: "KernelOptions") -> Array:
  """A matrix product in the options' precision, accumulated in a's dtype."""
  out_dtype = a.dtype
  if options.gram_dtype is not None:
    a, b = a.astype(options.gram_dtype), b.astype(options.gram_dtype)
  return jnp.matmul(
      a, b, precision=options.precision, preferred_element_type=out_dtype
  )


class KernelOptions(NamedTuple):
  """How the matrix products of the full modes are computed.

  Attributes:
    precision: passed to ``jnp.matmul`` (``None`` is JAX's default).
    gram_dtype: if set (e.g. ``jnp.bfloat16``), the products' inputs are cast
      to it and accumulated in float32: a reduced-precision Gram.
    block_size: the l1 full modes build their m×m sign matrix in blocks of this
      many rows when m exceeds it, so memory is O(block_size · m).
  """

  precision: Any = None
  gram_dtype: Any = None
  block_size: int | None = 2048


def _row_norms_sq(w: Array) -> Array:
  return jnp.sum(jnp.square(w), axis=-1)


def _l2_full(w: Array, c: Array, options: KernelOptions) -> Array:
  # Both sides give the same Δ; the smaller Gram costs 2·min(m,n)·m·n.
  m, n = w.shape[-2:]
  if m <= n:
    gram_w = _matmul(_matmul(w, _swap(w), options), w, options)
  else:
    gram_w = _matmul(w, _matmul(_swap(w), w, options), options)
  return gram_w - c[..., None, None] * w


def _l1_full_block(w_rows: Array, w: Array, c: Array, start, options) -> Array:
  """Rows ``start:start+len(w_rows)`` of ``sign(w wᵀ − cI) w``."""
  gram = _matmul(w_rows, _swap(w), options)
  rows = start + jnp.arange(w_rows.shape[-2])
  on_diagonal = rows[:, None] == jnp.arange(w.shape[-2])[None, :]
  return _matmul(jnp.sign(gram - c[..., None, None] * on_diagonal), w, options)


def _l1_full(w: Array, c: Array, options: KernelOptions) -> Array:
  m = w.shape[-2]
  block = options.block_size
  if block is None or m <= block:
    return _l1_full_block(w, w, c, 0, options)
  # Zero rows padded at the end add zero Gram entries whose rows of w are zero,
  # so they change nothing; their own output rows are cut off.
  blocks = -(-m // block)
  pad = [(0, 0)] * (w.ndim - 2) + [(0, blocks * block - m), (0, 0)]
  padded = jnp.pad(w, pad)
  row_blocks = jnp.moveaxis(
      padded.reshape(*w.shape[:-2], blocks, block, w.shape[-1]), -3, 0
  )
  starts = jnp.arange(blocks) * block
  out = jax.lax.map(
      lambda args: _l1_full_block(args[0], padded, c, args[1], options),
      (row_blocks, starts),
  )
  out = jnp.moveaxis(out, 0, -3).reshape(padded.shape)
  return out[..., :m, :]


def _l2_norms(w: Array, c: Array, options: KernelOptions) -> Array:
  del options
  return (_row_norms_sq(w) - c[..., None])[..., None] * w


def _l1_norms(w: Array, c: Array, options: KernelOptions) -> Array:
  del options
  return jnp.sign(_row_norms_sq(w) - c[..., None])[..., None] * w


def _gram_minus_c(w: Array, c: Array) -> Array:
  m = w.shape[-2]
  gram = jnp.matmul(w, _swap(w), precision=jax.lax.Precision.HIGHEST)
  return gram - c[..., None, None] * jnp.eye(m, dtype=w.dtype)


def _l2_full_penalty(w, c):
  return 0.25 * jnp.sum(jnp.square(_gram_minus_c(w, c)), axis=(-2, -1))


def _l1_full_penalty(w, c):
  return 0.5 * jnp.sum(jnp.abs(_gram_minus_c(w, c)), axis=(-2, -1))


def _l2_norms_penalty(w, c):
  return 0.25 * jnp.sum(jnp.square(_row_norms_sq(w) - c[..., None]), axis=-1)


def _l1_norms_penalty(w, c):
  return 0.5 * jnp.sum(jnp.abs(_row_norms_sq(w) - c[..., None]), axis=-1)


MODES: dict[str, _Mode] = {
    "l2-full": _Mode(_l2_full, _l2_full_penalty, transposed=False),
    "l2-row": _Mode(_l2_norms, _l2_norms_penalty, transposed=False),
    "l2-col": _Mode(_l2_norms, _l2_norms_penalty, transposed=True),
    "l1-fullrow": _Mode(_l1_full, _l1_full_penalty, transposed=False),
    "l1-fullcol": _Mode(_l1_full, _l1_full_penalty, transposed=True),
    "l1-row": _Mode(_l1_norms, _l1_norms_penalty, transposed=False),
    "l1-col": _Mode(_l1_norms, _l1_norms_penalty, transposed=True),
}


def check_mode(mode: str) -> _Mode:
  """Returns the mode's kernels, or raises a ValueError listing valid modes."""
  if not isinstance(mode, str) or mode not in MODES:
    raise ValueError(
        f"Unknown Bort mode {mode!r}; valid modes are: {', '.join(MODES)}."
    )
  return MODES[mode]


def ada_amplitude(w: Array) -> Array:
  """The adaptive amplitude: the squared mean row norm, without gradient.

  ``c = (mean_i ‖w_i‖₂)²`` per matrix, computed on the device.

  Args:
    w: matrices of shape ``(..., m, n)``, rows are output units.

  Returns:
    An array of shape ``w.shape[:-2]``.

  Examples:
    >>> import jax.numpy as jnp
    >>> float(ada_amplitude(jnp.array([[3.0, 4.0], [0.0, 1.0]])))
    9.0
  """
  w = jax.lax.stop_gradient(w)
  return jnp.square(jnp.mean(jnp.sqrt(_row_norms_sq(w)), axis=-1))


def _amplitude_array(w: Array, amplitude: Amplitude) -> Array:
  """The amplitude as an array of the batch shape, in w's dtype."""
  if isinstance(amplitude, str) and amplitude == ADA:
    return ada_amplitude(w)
  c = jnp.asarray(amplitude, dtype=w.dtype)
  return jnp.broadcast_to(c, w.shape[:-2])


def _check_matrix(w: Array, name: str) -> None:
  if w.ndim < 2:
    raise ValueError(
        f"{name} expects matrices of shape (..., m, n); got shape {w.shape}."
    )


def bort_correction(
    w: Array,
    mode: str = "l2-full",
    amplitude: Amplitude = 1.0,
    *,
    options: KernelOptions = KernelOptions(),
) -> Array:
  """The Bort correction Δ(w), the (sub)gradient of :func:`bort_penalty`.

  For ``l2-full``, ``Δ = (w wᵀ − cI) w``; the smaller Gram side is used. See
  the module docstring for all seven modes.

  Args:
    w: matrices of shape ``(..., m, n)``; row ``i`` holds every weight of
      output unit ``i`` and leading axes are batch axes.
    mode: one of ``l2-full, l2-row, l2-col, l1-fullrow, l1-fullcol, l1-row,
      l1-col``.
    amplitude: the target squared norm ``c``: a number, an array broadcastable
      to ``w.shape[:-2]``, or ``"ada"`` for ``c = (mean_i ‖w_i‖)²``.
    options: how the full modes' products are computed (:class:`KernelOptions`).

  Returns:
    Δ(w), same shape and dtype as ``w`` (computed in at least float32).

  Examples:
    >>> import jax.numpy as jnp
    >>> w = jnp.array([[2.0, 0.0], [0.0, 1.0]])
    >>> bort_correction(w, "l2-full")  # rows with norm² 4 and 1, target 1
    Array([[6., 0.],
           [0., 0.]], dtype=float32)
  """
  _check_matrix(w, "bort_correction")
  kernels = check_mode(mode)
  x = w.astype(compute_dtype(w.dtype))
  c = _amplitude_array(x, amplitude)
  if kernels.transposed:
    delta = _swap(kernels.correction(_swap(x), c, options))
  else:
    delta = kernels.correction(x, c, options)
  return delta.astype(w.dtype)


def bort_penalty(
    w: Array, mode: str = "l2-full", amplitude: Amplitude = 1.0
) -> Array:
  """The scalar Bort penalty whose gradient :func:`bort_correction` returns.

  Summed over batch axes. With ``amplitude="ada"`` the amplitude is a constant
  (no gradient flows through it), as in the correction.

  Args:
    w: matrices of shape ``(..., m, n)``, rows are output units.
    mode: one of the seven modes (see :func:`bort_correction`).
    amplitude: a number, an array of the batch shape, or ``"ada"``.

  Returns:
    A scalar.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> w = jnp.array([[2.0, 0.0], [0.0, 1.0]])
    >>> float(bort_penalty(w, "l2-full"))  # ¼ (4 − 1)²
    2.25
    >>> jax.grad(bort_penalty)(w)
    Array([[6., 0.],
           [0., 0.]], dtype=float32)
  """
  _check_matrix(w, "bort_penalty")
  kernels = check_mode(mode)
  x = w.astype(compute_dtype(w.dtype))
  c = _amplitude_array(x, amplitude)
  return jnp.sum(kernels.penalty(_swap(x) if kernels.transposed else x, c))
