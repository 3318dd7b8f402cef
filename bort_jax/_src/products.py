"""The matrix products behind the Bort corrections (pure JAX, no optax).

Four kernels do all the work: the full l2 correction, the full l1 and Huber
corrections (one kernel, blocked for many vectors, that differ only in the
slope applied to the Gram's residual), and the l2 and l1 norm scalings. Each
is told
which axis of ``x`` (``ROWS`` or ``COLS``) indexes its vectors, so that a Flax
kernel is corrected in its own layout ``(fan_in, out)`` without a transpose,
and each states its collectives: under Explicit sharding through
``out_sharding``, inside ``shard_map`` through ``psum``/``all_gather``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from bort_jax._src import sharding

Array = jax.Array

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
      Gram, whose vectors are split, all-gathers its matrix. A matrix
      replicated over the axis (or axes, for a tuple) is corrected locally
      where ``shard_map`` tracks what varies (``check_vma``, its default);
      one split on its units axis, or any replicated one under
      ``check_vma=False``, ``pmap`` or ``vmap(axis_name=…)``, cannot be told
      apart there and is corrected wrongly: leave it out with ``bort_mask``.
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


class Context(NamedTuple):
  """What the kernels need besides the matrix: options, how it is split, and
  the Huber modes' relative width."""

  options: KernelOptions
  spec: tuple | None  # Explicit sharding: one PartitionSpec entry per axis
  manual_axis: int | None  # shard_map: the matrix axis split over axis_name
  tau: Any = None  # Huber width relative to c (τ = tau·c); None: no Huber
  # The l1 modes' rounding zone relative to c: a residual within it is 0
  # (a number, or traced where it follows the aliases' step).
  zone: Any = 0.0

  def out_sharding(self, x: Array, *last_two
                   ) -> jax.sharding.NamedSharding | None:
    """A product's output sharding (batch axes as x's, on x's mesh), under
    Explicit sharding."""
    if self.spec is None:
      return None
    return sharding.on_mesh_of(x, *self.spec[:-2], *last_two)

  def reduce(self, value: Array, contracted_axis: int) -> Array:
    """Sums a shard_map partial result over the axis it contracted."""
    if self.manual_axis == contracted_axis:
      return jax.lax.psum(value, self.options.axis_name)
    return value


def compute_dtype(dtype) -> jnp.dtype:
  """Float32 for low-precision params, else the params' own float type
  (float8 types have no promotion path to float32: cast explicitly)."""
  dtype = jnp.dtype(dtype)
  if jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize < 4:
    return jnp.dtype(jnp.float32)
  return jnp.promote_types(dtype, jnp.float32)


def other(axis: int) -> int:
  return COLS if axis == ROWS else ROWS


def dot(a: Array, b: Array, a_axis: int, b_axis: int, ctx: Context,
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


def norms_sq(x: Array, vectors: int, ctx: Context) -> Array:
  """Squared norms of the rows (``vectors=ROWS``) or columns of x."""
  return ctx.reduce(jnp.sum(jnp.square(x), axis=other(vectors)),
                    other(vectors))


def per_vector(values: Array, vectors: int) -> Array:
  """Broadcasts one value per row (or column) against the matrix."""
  return values[..., :, None] if vectors == ROWS else values[..., None, :]


def gram_minus_c(x: Array, c: Array, vectors: int, ctx: Context) -> Array:
  """``x xᵀ − cI`` (rows) or ``xᵀ x − cI`` (columns), c of the batch shape.

  Contracting over a split axis leaves a small replicated Gram: one
  all-reduce (Explicit sharding states it, shard_map sums it with psum).
  """
  out = ctx.out_sharding(x, ctx.spec[vectors], None) if ctx.spec else None
  contracted = other(vectors)
  gram = ctx.reduce(dot(x, x, contracted, contracted, ctx, out), contracted)
  return gram - c[..., None, None] * jnp.eye(gram.shape[-1], dtype=gram.dtype)


def apply_on_vectors(s: Array, x: Array, vectors: int, ctx: Context) -> Array:
  """``s x`` (row vectors) or ``x s`` (column vectors), laid out like x."""
  out = ctx.out_sharding(x, *ctx.spec[-2:]) if ctx.spec else None
  if vectors == ROWS:
    return dot(s, x, COLS, ROWS, ctx, out)
  return dot(x, s, COLS, ROWS, ctx, out)


def l2_full(x: Array, c: Array, vectors: int, ctx: Context) -> Array:
  # (G − cI) x = x (H − cI): the smaller Gram, 2·min(m,n)·m·n per product.
  # Sharded, it is also the cheaper exchange: an all-reduce of the small Gram
  # when the long axis is split, else an all-gather of x (m·n < max(m,n)²).
  # Inside shard_map only the split axis can be contracted locally and summed.
  del vectors  # l2-full is the same penalty on either side
  if ctx.manual_axis is not None:
    side = other(ctx.manual_axis)
  else:
    side = ROWS if x.shape[-2] <= x.shape[-1] else COLS
  return apply_on_vectors(gram_minus_c(x, c, side, ctx), x, side, ctx)


#: The l1 modes' rounding zone, in units of the rounding of a Gram entry or
#: squared norm: ``√n · eps · c`` for a sum of ``n`` products (see
#: :func:`rounding_zone`).
ROUNDING_ZONE_FACTOR = 4.0

#: The inputs' rounding of a float32 product at the default precision, by
#: backend: TF32 (10 mantissa bits) on GPUs, one bfloat16 pass on TPUs.
_DEFAULT_PRECISION_INPUTS = {"gpu": 2.0 ** -10, "tpu": 2.0 ** -7}


def input_eps(options: KernelOptions, dtype: Any = jnp.float32) -> float:
  """The eps of the rounding a Gram's products give their inputs: the
  products' ``gram_dtype``'s, and, at the default precision on an
  accelerator, that of its float32 products (TF32 on GPUs, bfloat16 on
  TPUs; products in another dtype, float64 under x64, are exact there); 0
  where they keep them.

  Only this rounding is noise in the residual: weights stored in
  bfloat16 are upcast exactly, so their residual is their own, however
  coarse.

  Args:
    options: the kernel options.
    dtype: the dtype the Gram is computed in, where ``gram_dtype`` is not
      given.

  Returns:
    The inputs' eps, 0 where the products keep them.
  """
  eps = [0.0]
  if options.gram_dtype is not None:
    eps.append(float(jnp.finfo(options.gram_dtype).eps))
  products_dtype = jnp.dtype(options.gram_dtype or dtype)
  if options.precision is None and products_dtype == jnp.float32:
    eps.append(_DEFAULT_PRECISION_INPUTS.get(jax.default_backend(), 0.0))
  return max(eps)


def rounding_zone(n: int, dtype, inputs=None) -> float:
  """The residuals the l1 sign reads as 0, relative to ``c``.

  A Gram entry or squared norm of vectors of squared norm ``≈ c`` sums ``n``
  products, so it is known to about ``√n · eps · c``, and ``G − cI`` at the
  constraint is that rounding: its sign is noise, and a step of
  ``lr · γ · c`` on every entry in its direction would throw the weights
  off the constraint in a direction set by the machine's summation order
  (another CPU, ``jit`` or not, ``vmap``). The l1 modes take ``sign(R)``
  where ``|R| > zone · c`` and 0 within: the subgradient 0 at a residual
  that rounding cannot tell from 0. Products that round their inputs more
  coarsely than the sum (a reduced-precision Gram, TF32) add that
  rounding, ``eps_in · c / √n`` for the ``n`` products' independent
  errors.

  Args:
    n: the number of products in each sum (the contracted length).
    dtype: the dtype the sums are computed in.
    inputs: the dtype (or eps) the products round their inputs to, if
      coarser than the sum's.

  Returns:
    ``ROUNDING_ZONE_FACTOR · (√n · eps + eps_in / √n)``, the second term
    where the inputs are coarser than the sum.

  Examples:
    >>> round(rounding_zone(784, "float32") / 1e-5, 2)
    1.34
    >>> round(rounding_zone(784, "float32", "bfloat16") / 1e-3, 2)
    1.13
  """
  eps = float(jnp.finfo(dtype).eps)
  zone = math.sqrt(n) * eps
  if inputs is not None:
    eps_in = (inputs if isinstance(inputs, float)
              else float(jnp.finfo(inputs).eps))
    if eps_in > eps:
      zone += eps_in / math.sqrt(max(n, 1))
  return ROUNDING_ZONE_FACTOR * zone


def l1_sign(residual: Array, c: Array, ctx: Context) -> Array:
  """``sign(R)`` where ``|R| > ctx.zone · c``, 0 within (NaN stays NaN)."""
  zone = ctx.zone * c
  return jnp.where(jnp.abs(residual) <= zone, 0, jnp.sign(residual)).astype(
      residual.dtype)


def sign_slope(residual: Array, c: Array, ctx: Context) -> Array:
  """The l1 modes' slope of the residual ``R``: ``sign(R)``, 0 within the
  rounding zone (:func:`rounding_zone`)."""
  return l1_sign(residual, c[..., None, None], ctx)


def huber_slope(residual: Array, c: Array, ctx: Context) -> Array:
  """The Huber modes' slope ``clip(R / τ, −1, 1)``, with ``τ = tau · c``.

  Where ``τ = 0`` (an all-zero matrix under ``"ada"``, a zero learning rate
  under ``tau="step"``) it is the limit ``sign(R)``, not ``0/0``; a negative
  or NaN τ (a schedule's value, unchecked) has no slope and gives NaN. A
  ``tau`` below the rounding zone (:func:`rounding_zone`) makes the slope a
  sign within rounding, so it takes the l1 modes' zone: 0 there.
  """
  c = c[..., None, None]
  width = ctx.tau * c
  positive = width > 0
  scaled = residual / jnp.where(positive, width, 1)
  limit = jnp.where(width == 0, jnp.sign(residual), jnp.nan)
  slope = jnp.where(positive, jnp.clip(scaled, -1, 1), limit)
  below = (ctx.tau >= 0) & (ctx.tau < ctx.zone)  # a NaN or negative τ: NaN
  dead = jnp.where(below, ctx.zone, 0.0) * c
  return jnp.where(jnp.abs(residual) <= dead, 0, slope).astype(
      residual.dtype)


def slope_gram_block(part: Array, full: Array, c: Array, start, vectors: int,
                     ctx: Context, slope=sign_slope) -> Array:
  """Vectors ``start:start+b`` of ``slope(G − cI) x`` (rows) or
  ``x slope(H − cI)`` (columns), where ``part`` holds those b vectors of
  ``full`` and G, H are ``full``'s Gram of that side."""
  contracted = other(vectors)
  k, b = full.shape[vectors], part.shape[vectors]
  own = start + jnp.arange(b)
  if vectors == ROWS:
    gram = dot(part, full, COLS, COLS, ctx)  # (b, k)
    on_diagonal = own[:, None] == jnp.arange(k)[None, :]
  else:
    gram = dot(full, part, ROWS, ROWS, ctx)  # (k, b)
    on_diagonal = jnp.arange(k)[:, None] == own[None, :]
  gram = ctx.reduce(gram, contracted)
  slopes = slope(gram - c[..., None, None] * on_diagonal, c, ctx)
  if vectors == ROWS:
    return dot(slopes, full, COLS, ROWS, ctx)
  return dot(full, slopes, COLS, ROWS, ctx)


def l1_full(x: Array, c: Array, vectors: int, ctx: Context) -> Array:
  """``sign(G − cI) x`` (row vectors) or ``x sign(H − cI)`` (column vectors).

  With more than ``block_size`` vectors the sign matrix is built block by
  block in a device loop (memory O(block · k)). Inside shard_map with the
  vectors split, each device all-gathers x and computes its own vectors.
  """
  return _slope_full(x, c, vectors, ctx, sign_slope)


def huber_full(x: Array, c: Array, vectors: int, ctx: Context) -> Array:
  """``clip((G − cI)/τ, −1, 1) x`` (rows) or ``x clip((H − cI)/τ, −1, 1)``.

  ``τ = ctx.tau · c``. The l1 kernel with a bounded linear slope in place of
  the sign: the same blocks, collectives and memory.
  """
  return _slope_full(x, c, vectors, ctx, huber_slope)


def _slope_full(x: Array, c: Array, vectors: int, ctx: Context,
                slope) -> Array:
  """``slope(G − cI) x`` or ``x slope(H − cI)``, blocked when large."""
  axis = x.ndim + vectors  # the vectors' axis, counted from the front
  if ctx.manual_axis == vectors:
    name = ctx.options.axis_name
    full = jax.lax.all_gather(x, name, axis=axis, tiled=True)
    start = jax.lax.axis_index(name) * x.shape[vectors]
    return slope_gram_block(x, full, c, start, vectors,
                            ctx._replace(manual_axis=None), slope)
  k, block = x.shape[vectors], ctx.options.block_size
  if block is None or k <= block:
    slopes = slope(gram_minus_c(x, c, vectors, ctx), c, ctx)
    return apply_on_vectors(slopes, x, vectors, ctx)
  if ctx.spec is not None:
    # Under Explicit sharding the loop's dynamic slices of a split axis have
    # no sharding one could state: XLA places them (Auto axes inside), and
    # the result comes back in x's own sharding. A traced τ or zone (a
    # schedule's value) enters as an argument, as c does: closed over, it
    # would keep the Explicit mesh inside.
    return jax.sharding.auto_axes(
        lambda x, c, tau, zone: _slope_full_blocked(
            x, c, vectors, block,
            ctx._replace(spec=None, tau=tau, zone=zone), slope),
        out_sharding=sharding.on_mesh_of(x, *ctx.spec))(
            x, c, ctx.tau, ctx.zone)
  return _slope_full_blocked(x, c, vectors, block, ctx, slope)


def _slope_full_blocked(x: Array, c: Array, vectors: int, block: int,
                        ctx: Context, slope) -> Array:
  """:func:`_slope_full` block by block, for more than ``block`` vectors."""
  axis = x.ndim + vectors
  k = x.shape[vectors]
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
    delta = slope_gram_block(part, padded, c, start, vectors, ctx, slope)
    return jax.lax.dynamic_update_slice_in_dim(out, delta, start, axis)

  out = jax.lax.fori_loop(0, blocks, one_block, jnp.zeros_like(padded))
  return jax.lax.slice_in_dim(out, 0, k, axis=axis)


def l2_norms(x: Array, c: Array, vectors: int, ctx: Context) -> Array:
  return per_vector(norms_sq(x, vectors, ctx) - c[..., None], vectors) * x


def l1_norms(x: Array, c: Array, vectors: int, ctx: Context) -> Array:
  residual = norms_sq(x, vectors, ctx) - c[..., None]
  return per_vector(l1_sign(residual, c[..., None], ctx), vectors) * x


