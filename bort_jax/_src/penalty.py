"""The Bort penalties and their closed-form corrections (pure JAX, no optax).

The public functions act on matrices ``w`` of shape ``(..., m, n)`` whose rows
are output units (leading axes are batch axes). Notation: ``G = w wᵀ`` (m×m),
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

"row" modes act on the output units' weight vectors, "col" modes on the fan-in
vectors. Four kernels do all the work (full l2, full l1, l2 and l1 norm
scalings), each told which axis indexes its vectors. That lets the optimizer
work on a Flax kernel in its own layout ``(fan_in, out)``, where units are
columns, without materialising a transpose.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from bort_jax._src import sharding

Array = jax.Array
Amplitude = Any  # float, array broadcastable to the batch shape, or "ada"

ADA = "ada"
ROWS, COLS = -2, -1  # the axis that indexes a kernel's vectors


class KernelOptions(NamedTuple):
  """How the matrix products of the full modes are computed.

  Attributes:
    precision: passed to ``lax.dot_general`` (``None``: JAX's default, TF32
      on recent GPUs; ``"highest"`` for full float32).
    gram_dtype: if set (e.g. ``jnp.bfloat16``), the products' inputs are cast
      to it and accumulated in float32: a reduced-precision Gram.
    block_size: the l1 full modes build their k×k sign matrix (k vectors) in
      equal blocks of at most this many rows when k exceeds it: memory
      O(block_size · k).
    batch_products: whether a batch of matrices (and same-shape parameters)
      goes through one batched product. ``None``: yes on accelerators, where
      each product call costs a launch; no on CPU, where XLA's batched product
      runs slower than a loop of plain ones.
    axis_name: inside ``shard_map``, the mesh axis over which every Bort
      matrix's fan-in axis is split. Products that contract over fan-in are
      summed with one ``psum`` (of an m×m Gram, or of m norms); the l1-fullcol
      Gram, whose vectors are split, all-gathers its matrix.
  """

  precision: Any = None
  gram_dtype: Any = None
  block_size: int | None = 2048
  batch_products: bool | None = None
  axis_name: Any = None

  def batched(self) -> bool:
    if self.batch_products is None:
      return jax.default_backend() != "cpu"
    return self.batch_products


class _Context(NamedTuple):
  """What the kernels need besides the matrix: options and how it is split."""

  options: KernelOptions
  spec: tuple | None  # Explicit sharding: one PartitionSpec entry per axis
  manual_axis: int | None  # shard_map: the matrix axis split over axis_name

  def out_sharding(self, *last_two) -> jax.sharding.PartitionSpec | None:
    """A product's output spec (batch axes as x's), under Explicit sharding."""
    if self.spec is None:
      return None
    return jax.sharding.PartitionSpec(*self.spec[:-2], *last_two)

  def reduce(self, value: Array, contracted_axis: int) -> Array:
    """Sums a shard_map partial result over the axis it contracted."""
    if self.manual_axis == contracted_axis:
      return jax.lax.psum(value, self.options.axis_name)
    return value


def compute_dtype(dtype) -> jnp.dtype:
  """Float32 for low-precision params, else the params' own float type."""
  return jnp.promote_types(dtype, jnp.float32)


def _other(axis: int) -> int:
  return COLS if axis == ROWS else ROWS


def _dot(a: Array, b: Array, a_axis: int, b_axis: int, ctx: _Context,
         out_sharding=None) -> Array:
  """Contracts ``a``'s axis with ``b``'s over shared leading batch axes.

  The result holds the batch axes, a's free axis, then b's free axis; the
  transposes of a Gram are contracting dimensions here, never copies.
  """
  out_dtype = a.dtype
  options = ctx.options
  if options.gram_dtype is not None:
    a, b = a.astype(options.gram_dtype), b.astype(options.gram_dtype)
  batch = tuple(range(a.ndim - 2))
  return jax.lax.dot_general(
      a,
      b,
      (((a_axis % a.ndim,), (b_axis % b.ndim,)), (batch, batch)),
      precision=options.precision,
      preferred_element_type=out_dtype,
      out_sharding=out_sharding,
  )


def _norms_sq(x: Array, vectors: int, ctx: _Context) -> Array:
  """Squared norms of the rows (``vectors=ROWS``) or columns of x."""
  return ctx.reduce(jnp.sum(jnp.square(x), axis=_other(vectors)),
                    _other(vectors))


def _per_vector(values: Array, vectors: int) -> Array:
  """Broadcasts one value per row (or column) against the matrix."""
  return values[..., :, None] if vectors == ROWS else values[..., None, :]


def _gram_minus_c(x: Array, c: Array, vectors: int, ctx: _Context) -> Array:
  """``x xᵀ − cI`` (rows) or ``xᵀ x − cI`` (columns), c of the batch shape.

  Contracting over a split axis leaves a small replicated Gram: one
  all-reduce (Explicit sharding states it, shard_map sums it with psum).
  """
  out = ctx.out_sharding(ctx.spec[vectors], None) if ctx.spec else None
  contracted = _other(vectors)
  gram = ctx.reduce(_dot(x, x, contracted, contracted, ctx, out), contracted)
  return gram - c[..., None, None] * jnp.eye(gram.shape[-1], dtype=gram.dtype)


def _apply_on_vectors(s: Array, x: Array, vectors: int, ctx: _Context) -> Array:
  """``s x`` (row vectors) or ``x s`` (column vectors), laid out like x."""
  out = ctx.out_sharding(*ctx.spec[-2:]) if ctx.spec else None
  if vectors == ROWS:
    return _dot(s, x, COLS, ROWS, ctx, out)
  return _dot(x, s, COLS, ROWS, ctx, out)


def _l2_full(x: Array, c: Array, vectors: int, ctx: _Context) -> Array:
  # (G − cI) x = x (H − cI): the smaller Gram, 2·min(m,n)·m·n per product.
  # Sharded, it is also the cheaper exchange: an all-reduce of the small Gram
  # when the long axis is split, else an all-gather of x (m·n < max(m,n)²).
  # Inside shard_map only the split axis can be contracted locally and summed.
  del vectors  # l2-full is the same penalty on either side
  if ctx.manual_axis is not None:
    side = _other(ctx.manual_axis)
  else:
    side = ROWS if x.shape[-2] <= x.shape[-1] else COLS
  return _apply_on_vectors(_gram_minus_c(x, c, side, ctx), x, side, ctx)


def _sign_gram_block(part: Array, full: Array, c: Array, start, vectors: int,
                     ctx: _Context) -> Array:
  """Vectors ``start:start+b`` of ``sign(G − cI) x`` (rows) or
  ``x sign(H − cI)`` (columns), where ``part`` holds those b vectors of
  ``full`` and G, H are ``full``'s Gram of that side."""
  contracted = _other(vectors)
  k, b = full.shape[vectors], part.shape[vectors]
  own = start + jnp.arange(b)
  if vectors == ROWS:
    gram = _dot(part, full, COLS, COLS, ctx)  # (b, k)
    on_diagonal = own[:, None] == jnp.arange(k)[None, :]
  else:
    gram = _dot(full, part, ROWS, ROWS, ctx)  # (k, b)
    on_diagonal = jnp.arange(k)[:, None] == own[None, :]
  gram = ctx.reduce(gram, contracted)
  signs = jnp.sign(gram - c[..., None, None] * on_diagonal)
  if vectors == ROWS:
    return _dot(signs, full, COLS, ROWS, ctx)
  return _dot(full, signs, COLS, ROWS, ctx)


def _l1_full(x: Array, c: Array, vectors: int, ctx: _Context) -> Array:
  """``sign(G − cI) x`` (row vectors) or ``x sign(H − cI)`` (column vectors).

  With more than ``block_size`` vectors the sign matrix is built block by
  block in a device loop (memory O(block · k)). Inside shard_map with the
  vectors split, each device all-gathers x and computes its own vectors.
  """
  axis = x.ndim + vectors  # the vectors' axis, counted from the front
  if ctx.manual_axis == vectors:
    name = ctx.options.axis_name
    full = jax.lax.all_gather(x, name, axis=axis, tiled=True)
    start = jax.lax.axis_index(name) * x.shape[vectors]
    return _sign_gram_block(x, full, c, start, vectors,
                            ctx._replace(manual_axis=None))
  k, block = x.shape[vectors], ctx.options.block_size
  if block is None or k <= block:
    signs = jnp.sign(_gram_minus_c(x, c, vectors, ctx))
    return _apply_on_vectors(signs, x, vectors, ctx)
  # Equal blocks of at most block_size (3072 vectors: 2 × 1536, not 2 × 2048).
  # Zero vectors padded at the end add zero Gram entries and are themselves
  # zero, so they change nothing; their own outputs are cut off.
  blocks = -(-k // block)
  block = -(-k // blocks)
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, blocks * block - k)
  padded = jnp.pad(x, pad)

  def one_block(i, out):
    start = i * block
    part = jax.lax.dynamic_slice_in_dim(padded, start, block, axis)
    delta = _sign_gram_block(part, padded, c, start, vectors, ctx)
    return jax.lax.dynamic_update_slice_in_dim(out, delta, start, axis)

  out = jax.lax.fori_loop(0, blocks, one_block, jnp.zeros_like(padded))
  return jax.lax.slice_in_dim(out, 0, k, axis=axis)


def _l2_norms(x: Array, c: Array, vectors: int, ctx: _Context) -> Array:
  return _per_vector(_norms_sq(x, vectors, ctx) - c[..., None], vectors) * x


def _l1_norms(x: Array, c: Array, vectors: int, ctx: _Context) -> Array:
  return _per_vector(jnp.sign(_norms_sq(x, vectors, ctx) - c[..., None]),
                     vectors) * x


_EXACT = _Context(KernelOptions(precision=jax.lax.Precision.HIGHEST), None,
                  None)


def _l2_full_penalty(x, c, vectors):
  residual = _gram_minus_c(x, c, vectors, _EXACT)
  return 0.25 * jnp.sum(jnp.square(residual), axis=(-2, -1))


def _l1_full_penalty(x, c, vectors):
  residual = _gram_minus_c(x, c, vectors, _EXACT)
  return 0.5 * jnp.sum(jnp.abs(residual), axis=(-2, -1))


def _l2_norms_penalty(x, c, vectors):
  residual = _norms_sq(x, vectors, _EXACT) - c[..., None]
  return 0.25 * jnp.sum(jnp.square(residual), -1)


def _l1_norms_penalty(x, c, vectors):
  residual = _norms_sq(x, vectors, _EXACT) - c[..., None]
  return 0.5 * jnp.sum(jnp.abs(residual), -1)


class _Mode(NamedTuple):
  correction: Callable[..., Array]  # (x, c, vectors, context) -> Δ
  penalty: Callable[..., Array]  # (x, c, vectors) -> penalty per matrix
  on_units: bool  # True: vectors are output units; False: fan-in vectors
  uses_gram: bool  # matrix products (worth batching same-shape matrices)


MODES: dict[str, _Mode] = {
    "l2-full": _Mode(_l2_full, _l2_full_penalty, True, True),
    "l2-row": _Mode(_l2_norms, _l2_norms_penalty, True, False),
    "l2-col": _Mode(_l2_norms, _l2_norms_penalty, False, False),
    "l1-fullrow": _Mode(_l1_full, _l1_full_penalty, True, True),
    "l1-fullcol": _Mode(_l1_full, _l1_full_penalty, False, True),
    "l1-row": _Mode(_l1_norms, _l1_norms_penalty, True, False),
    "l1-col": _Mode(_l1_norms, _l1_norms_penalty, False, False),
}


def check_mode(mode: str) -> _Mode:
  """Returns the mode's kernels, or raises a ValueError listing valid modes."""
  if not isinstance(mode, str) or mode not in MODES:
    raise ValueError(
        f"Unknown Bort mode {mode!r}; valid modes are: {', '.join(MODES)}."
    )
  return MODES[mode]


def _vectors(kernels: _Mode, units: int) -> int:
  """The axis indexing the mode's vectors, given the axis indexing units."""
  return units if kernels.on_units else _other(units)


def _ada(x: Array, units: int, ctx: _Context) -> Array:
  x = jax.lax.stop_gradient(x)
  return jnp.square(jnp.mean(jnp.sqrt(_norms_sq(x, units, ctx)), axis=-1))


def ada_amplitude(w: Array) -> Array:
  """The adaptive amplitude: the squared mean row norm, without gradient.

  ``c = (mean_i ‖w_i‖₂)²`` per matrix, computed on the device (no host sync).

  Args:
    w: matrices of shape ``(..., m, n)``, rows are output units.

  Returns:
    An array of shape ``w.shape[:-2]``.

  Examples:
    >>> import jax.numpy as jnp
    >>> float(ada_amplitude(jnp.array([[3.0, 4.0], [0.0, 1.0]])))
    9.0
  """
  return _ada(w, ROWS, _EXACT)


def _amplitude_array(x: Array, amplitude: Amplitude, units: int,
                     ctx: _Context) -> Array:
  """The amplitude as an array of the batch shape, in x's dtype."""
  if isinstance(amplitude, str) and amplitude == ADA:
    return _ada(x, units, ctx)
  c = jnp.asarray(amplitude, dtype=x.dtype)
  return jnp.broadcast_to(c, x.shape[:-2])


def _check_matrix(w: Array, name: str) -> None:
  if w.ndim < 2:
    raise ValueError(
        f"{name} expects matrices of shape (..., m, n); got shape {w.shape}."
    )


def correction(
    x: Array,
    mode: str,
    amplitude: Amplitude,
    options: KernelOptions,
    units: int = ROWS,
) -> Array:
  """Δ in the compute dtype, for matrices whose units lie along ``units``.

  The sharding of ``x`` (Explicit mode) or ``options.axis_name`` (shard_map,
  fan-in split) decides where the products' collectives go.
  """
  kernels = check_mode(mode)
  x = x.astype(compute_dtype(x.dtype))
  manual_axis = None if options.axis_name is None else _other(units)
  c = _amplitude_array(x, amplitude, units,
                       _Context(options, None, manual_axis))
  vectors = _vectors(kernels, units)

  def run(x, c):
    ctx = _Context(options, sharding.explicit_spec(x), manual_axis)
    return kernels.correction(x, c, vectors, ctx)

  if not kernels.uses_gram or x.ndim == 2 or options.batched():
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
  return correction(w, mode, amplitude, options).astype(w.dtype)


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
  c = _amplitude_array(x, amplitude, ROWS, _EXACT)
  return jnp.sum(kernels.penalty(x, c, _vectors(kernels, ROWS)))
