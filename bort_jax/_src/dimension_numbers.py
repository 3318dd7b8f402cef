"""The parameter-to-matrix view: which axes of a weight are its output units.

Bort acts on a matrix ``W ∈ R^{m×n}`` whose row ``i`` is the whole weight vector
of output unit ``i``. Flax puts output units on the last axis (Linear
``(in, out)``, Conv ``(kh, kw, in/groups, out)``), PyTorch on the first; getting
this wrong silently orthogonalises the wrong side. This module (no math) maps a
parameter to a batch of such matrices ``(B, m, n)`` and back, and chooses the
default Bort parameters of a Flax model, or the leaves one
:class:`BortDimensionNumbers` applies to in any other library's tree.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Sequence

import warnings

import jax
import jax.numpy as jnp
import numpy as np

from bort_jax._src import flax_selection
from bort_jax._src import sharding
from bort_jax._src import validation
from bort_jax._src.bort_dimension_numbers import BortDimensionNumbers
from bort_jax._src.bort_dimension_numbers import field_axes
from bort_jax._src.bort_dimension_numbers import path_names
from bort_jax._src.bort_dimension_numbers import path_string


class MatrixView(NamedTuple):
  """A parameter seen as a batch of matrices ``(batch, m, n)``.

  Under Explicit sharding the view puts each group's split axes first, so
  that merging a group by a reshape keeps its sharding (a reshape can only
  carry the split of a merged group's leading axis); the order of fan-in or
  unit axes inside a matrix is free, and the inverse undoes it exactly.
  """

  batch_axes: tuple[int, ...]
  output_axes: tuple[int, ...]
  reduction_axes: tuple[int, ...]
  shape: tuple[int, ...]  # the parameter's shape
  spec: tuple | None = None  # its Explicit PartitionSpec, one entry per axis
  groups: int = 1  # the units split into this many matrices (conv groups)

  @property
  def matrix_shape(self) -> tuple[int, int, int]:
    size = lambda axes: math.prod(self.shape[a] for a in axes)
    return (
        size(self.batch_axes) * self.groups,
        size(self.output_axes) // self.groups,
        size(self.reduction_axes),
    )

  def _groups(self) -> tuple[tuple[int, ...], ...]:
    # Flax's own order (fan-in, then units): a pure reshape for its kernels.
    groups = (self.batch_axes, self.reduction_axes, self.output_axes)
    if self.spec is None:
      return groups
    return tuple(
        tuple(sorted(g, key=lambda a: self.spec[a] is None)) for g in groups)

  def _sharding(self, x: jax.Array, entries
                ) -> jax.sharding.NamedSharding | None:
    return None if self.spec is None else sharding.on_mesh_of(x, *entries)

  def to_kernel_layout(self, x: jax.Array) -> jax.Array:
    """The parameter as ``(batch, n, m)``: columns are output units (with
    conv groups, each group's units are one batch entry, after the stack's
    batch index)."""
    groups = self._groups()
    merged = self._sharding(
        x, [sharding.merged_spec([self.spec[a] for a in g]) for g in groups]
        if self.spec else ())
    batch, m, n = self.matrix_shape
    k = jax.lax.reshape(x.transpose(sum(groups, ())),
                        (batch // self.groups, n, m * self.groups),
                        out_sharding=merged)
    if self.groups == 1:
      return k
    k = k.reshape(batch // self.groups, n, self.groups, m)
    return k.transpose(0, 2, 1, 3).reshape(batch, n, m)

  def from_kernel_layout(self, k: jax.Array) -> jax.Array:
    """The exact inverse of :meth:`to_kernel_layout`."""
    if self.groups > 1:
      batch, n, m = k.shape
      k = k.reshape(batch // self.groups, self.groups, n, m)
      k = k.transpose(0, 2, 1, 3).reshape(batch // self.groups, n,
                                          m * self.groups)
    order = sum(self._groups(), ())
    inverse = tuple(sorted(range(len(order)), key=order.__getitem__))
    split = self._sharding(k, [self.spec[a] for a in order]
                           if self.spec else ())
    shape = tuple(self.shape[a] for a in order)
    return jax.lax.reshape(k, shape, out_sharding=split).transpose(inverse)

  def to_matrices(self, x: jax.Array) -> jax.Array:
    """The parameter as ``(batch, m, n)``: rows are output units."""
    return jnp.swapaxes(self.to_kernel_layout(x), -1, -2)

  def from_matrices(self, w: jax.Array) -> jax.Array:
    """The exact inverse of :meth:`to_matrices`."""
    return self.from_kernel_layout(jnp.swapaxes(w, -1, -2))


def matrix_view(
    shape: Sequence[int],
    dims: BortDimensionNumbers,
    name: str = "parameter",
    spec: tuple | None = None,
) -> MatrixView:
  """Checks dimension numbers against a shape and returns the matrix view.

  Args:
    shape: the parameter's shape.
    dims: its :class:`BortDimensionNumbers`.
    name: how to name the parameter in error messages (e.g. its path).
    spec: the parameter's Explicit sharding spec, if any.

  Returns:
    A :class:`MatrixView`.

  Raises:
    ValueError: if an axis is out of range, named twice, or the view would
      have no output or no reduction axis.

  Examples:
    >>> view = matrix_view((3, 3, 16, 32), BortDimensionNumbers())  # a conv
    >>> view.matrix_shape
    (1, 32, 144)
  """
  shape = tuple(shape)
  ndim = len(shape)
  where = f"Bort dimension numbers do not fit {name} of shape {shape}"

  def normalize(field: str) -> tuple[int, ...]:
    axes = field_axes(dims, field)
    out = []
    for axis in axes:
      if not -ndim <= axis < ndim:
        raise ValueError(
            f"{where}: {field} {axis} is out of range for {ndim} dimensions; "
            f"use an axis in [{-ndim}, {ndim}).")
      out.append(axis % ndim)
    return tuple(out)

  output = normalize("output_axis")
  batch = normalize("batch_axis")
  reduction = (None if dims.reduction_axis is None
               else normalize("reduction_axis"))
  named = output + batch + (reduction or ())
  if len(set(named)) != len(named):
    twice = sorted({a for a in named if named.count(a) > 1})
    raise ValueError(
        f"{where}: axis {twice[0]} is named twice in {dims}; name each axis "
        "in one field at most.")
  if reduction is None:
    reduction = tuple(a for a in range(ndim) if a not in output + batch)
  else:
    batch = tuple(sorted(set(range(ndim)) - set(output) - set(reduction)))
  if not output or not reduction:
    raise ValueError(
        f"{where}: a Bort parameter needs at least one output and one "
        f"reduction axis, got output={output}, reduction={reduction} from "
        f"{dims}."
    )
  groups = dims.feature_group_count
  units = math.prod(shape[a] for a in output)
  if (not isinstance(groups, (int, np.integer)) or isinstance(groups, bool)
      or groups < 1 or units % groups):
    raise ValueError(
        f"{where}: feature_group_count must be a positive int that divides "
        f"the {units} output units, got {groups!r}.")
  if groups > 1 and len(output) > 1:
    raise ValueError(
        f"{where}: feature_group_count={groups} splits one output axis, got "
        f"output_axis={dims.output_axis}; group the units of one axis.")
  if units == 0:
    groups = 1  # no units, no groups (and no correction)
  if groups > 1 and spec is not None:
    raise ValueError(
        f"{where}: a grouped kernel (feature_group_count={groups}) under "
        "Explicit sharding is not supported; replicate it, or exclude it "
        "with bort_mask.")
  return MatrixView(batch, output, reduction, shape, spec, int(groups))


_ATTENTION_INPUTS = ("query", "key", "value")


def flax_dimension_numbers(model_or_params: Any) -> Any:
  """The default Bort parameters of a Flax model and their matrix views.

  Given an ``nnx.Module``, the selection reads the module types in its graph
  and returns a callable over parameter trees (a
  ``FlaxDimensionNumbers``), the form ``nnx.Optimizer`` needs since its
  ``init`` and ``update`` see different trees. ``nnx.Linear`` and
  ``nnx.Conv`` kernels with more axes than the layer declares (stacked by
  ``nnx.vmap`` or ``nnx.scan``) get the added axes as batch axes, wherever
  ``out_axes`` put them (found from the shapes the layer declares for its
  kernel and bias), so each layer is its own matrix; when the shapes leave
  more than one choice (``nnx.Linear(4, 4)`` stacked 4 times) it raises
  rather than guess. ``nnx.LinearGeneral`` (and so
  ``nnx.MultiHeadAttention``'s query, key, value and out) follows its own
  ``in_features``, ``out_features`` and ``batch_axis``; ``nnx.Einsum``
  follows the equation given at its construction (a kernel subscript summed
  with the input is fan-in, one carried to the output alone a unit axis,
  one in both a batch axis: each head's matrix in ``"bhd,hdk->bhk"``), and
  one whose kernel makes no matrices is left out with a warning; another
  module's ``kernel`` param is treated as Flax's layout
  (units last, fan-in before). Pass the model whenever it stacks layers:
  from a parameter tree alone a stacked ``(L, in, out)`` kernel looks like a
  1-D convolution's ``(k, in, out)``.

  Given a parameter tree, it selects leaves named ``kernel`` with at least two
  axes (``nnx.Linear``,
  ``nnx.Conv``, linen ``Dense``/``Conv``): output units on the last axis, fan-in
  on all others. Attention kernels of ``nnx.MultiHeadAttention`` are recognised
  by their module names: ``query``/``key``/``value`` kernels
  ``(in, heads, head_dim)`` have output axes ``(heads, head_dim)``, and the
  ``out`` kernel ``(heads, head_dim, out)`` of the same block has fan-in
  ``(heads, head_dim)``. Biases, norm scales, embeddings and everything else
  map to ``None`` (not a Bort parameter).

  Args:
    model_or_params: an ``nnx.Module``, or a pytree of parameters (arrays,
      ``ShapeDtypeStruct`` or NNX state).

  Returns:
    For a module, a callable mapping a parameter tree to dimension numbers;
    for a tree, a pytree of the same structure with a
    :class:`BortDimensionNumbers` or ``None`` at each leaf.

  Raises:
    ValueError: for a module whose stacked axes the shapes cannot tell, or
      whose kernel does not fit the shape its layer declares.
    TypeError: for anything that is neither a module nor a tree of arrays.

  Examples:
    >>> import jax.numpy as jnp
    >>> params = {"dense": {"kernel": jnp.zeros((4, 3)), "bias": jnp.zeros(3)}}
    >>> flax_dimension_numbers(params)["dense"]
    {'bias': None, 'kernel': BortDimensionNumbers(reduction_axis=None, output_axis=-1, batch_axis=())}
    >>> from flax import nnx
    >>> @nnx.vmap(in_axes=0, out_axes=0)
    ... def stack(key):  # 3 Linear layers, kernel (3, 4, 4)
    ...   return nnx.Linear(4, 4, rngs=nnx.Rngs(key))
    >>> layers = stack(jax.random.split(jax.random.key(0), 3))
    >>> dims = flax_dimension_numbers(layers)
    >>> dims(nnx.state(layers, nnx.Param).to_pure_dict())["kernel"]
    BortDimensionNumbers(reduction_axis=(1,), output_axis=2, batch_axis=(0,))
  """
  if flax_selection.is_nnx_module(model_or_params):
    return flax_selection.module_dimension_numbers(model_or_params)
  _check_params_tree(model_or_params)
  tree = _selection_by_name(model_or_params)
  warn_possibly_stacked(model_or_params, tree)
  return tree


def _check_params_tree(params: Any) -> None:
  """Refuses what is neither a module nor a tree of arrays (e.g. ``5``)."""
  bad = next((x for x in jax.tree.leaves(params) if not hasattr(x, "shape")),
             None)
  if bad is not None or params is None:
    got = params if bad is None else bad
    raise validation.ArgumentTypeError(
        "flax_dimension_numbers takes an nnx.Module or a pytree of "
        "parameters (arrays, ShapeDtypeStruct or nnx.State), got "
        f"{type(got).__name__} {got!r}.")


def _selection_by_name(params: Any) -> Any:
  """The default selection of a parameter tree, by leaf names and shapes."""
  paths = [path_names(p) for p, _ in jax.tree_util.tree_flatten_with_path(
      params)[0]]
  attention_blocks = {p[:-2] for p in paths
                      if len(p) >= 2 and p[-2] in _ATTENTION_INPUTS}

  def choose(path, leaf):
    names = path_names(path)
    ndim = len(getattr(leaf, "shape", ()))
    if not names or names[-1] != "kernel" or ndim < 2:
      return None
    parent = names[-2] if len(names) >= 2 else None
    if ndim == 3 and parent in _ATTENTION_INPUTS:
      return BortDimensionNumbers(reduction_axis=0, output_axis=(1, 2))
    if ndim == 3 and parent == "out" and names[:-2] in attention_blocks:
      return BortDimensionNumbers(reduction_axis=(0, 1), output_axis=2)
    return BortDimensionNumbers()

  return jax.tree_util.tree_map_with_path(choose, params)


#: Names of leaves that are not linear maps: biases and norm scales, always
#: left out by one BortDimensionNumbers given for the whole tree, and
#: embeddings (lookup tables and position codes, by the leaf's name or its
#: module's type, e.g. ``eqx.nn.Embedding``'s ``weight``), left out unless a
#: bort_mask selects them.
NOT_MATRIX_NAMES = ("bias", "scale", "norm")
EMBEDDING_NAME = "embed"


def is_weight_matrix(path, leaf, masked: bool, embedding: bool) -> bool:
  """Whether one explicitly given BortDimensionNumbers is meant for a leaf.

  A floating leaf with at least two axes that is a ``kernel``, or else
  neither a bias nor a norm scale by name nor a vector with unit axes (a
  ViT's ``(1, 1, d)`` class token, a conv bias ``(c, 1, 1)``), and, unless
  ``masked`` (the transform applies a ``bort_mask``, which may choose one),
  not an embedding (``embedding``: by its name or its module's type).
  """
  dtype = getattr(leaf, "dtype", None)
  shape = tuple(getattr(leaf, "shape", ()))
  if (dtype is None or len(shape) < 2
      or not jnp.issubdtype(jnp.dtype(dtype), jnp.floating)):
    return False
  names = path_names(path)
  last = str(names[-1]).lower() if names else ""
  if last == "kernel":
    return True
  if (sum(d > 1 for d in shape) < 2
      or any(word in last for word in NOT_MATRIX_NAMES)):
    return False
  return masked or not (embedding or EMBEDDING_NAME in last)


def in_embedding_of(params: Any) -> Callable[[tuple], bool]:
  """Whether a leaf's path lies in a subtree whose type is an embedding
  module (``eqx.nn.Embedding``, …): its leaves are embeddings, whatever
  their names."""
  is_embedding = lambda x: EMBEDDING_NAME in type(x).__name__.lower()
  found = [path for path, x in jax.tree_util.tree_flatten_with_path(
      params, is_leaf=is_embedding)[0] if is_embedding(x)]
  return lambda path: any(path[:len(e)] == e for e in found)


def _selection_for(dims: BortDimensionNumbers, params: Any,
                   masked: bool = False) -> Any:
  """One explicitly given BortDimensionNumbers at every weight matrix.

  Whatever the library names its weights (``kernel``, Equinox's and
  PyTorch's ``weight``, Haiku's ``w``), a leaf of :func:`is_weight_matrix`
  that the numbers fit is selected. Leaves they do not fit are skipped (and
  reported by the transform's unreached-weight warning); when they fit none,
  the first misfit raises, since that is a typo rather than a choice.
  """
  in_embedding = in_embedding_of(params)
  first_misfit = None

  def choose(path, leaf):
    nonlocal first_misfit
    if not is_weight_matrix(path, leaf, masked, in_embedding(path)):
      return None
    try:
      matrix_view(leaf.shape, dims, repr(path_string(path)))
    except ValueError as e:
      first_misfit = first_misfit or e
      return None
    return dims

  tree = jax.tree_util.tree_map_with_path(choose, params)
  if first_misfit is not None and all(
      d is None for d in jax.tree.leaves(tree, is_leaf=_is_dims_leaf)):
    raise first_misfit
  return tree


def under_bort_mask(dimension_numbers: DimensionNumbersLike,
                    masked: bool) -> DimensionNumbersLike:
  """The dimension numbers of a transform that knows whether it applies a
  ``bort_mask``.

  One :class:`BortDimensionNumbers` then selects embeddings only under the
  transform's own mask (an ``optax.masked`` around the whole optimizer,
  freezing a head say, leaves the same masked nodes in the tree but is not
  one). Other forms are returned as they are.
  """
  if not isinstance(dimension_numbers, BortDimensionNumbers):
    return dimension_numbers
  return lambda params: _selection_for(dimension_numbers, params, masked)


# Ambiguous kernels already reported, by path and shape: the warning is said
# once, at init, not again when each update is traced.
_AMBIGUOUS_WARNED: set[tuple[str, tuple[int, ...]]] = set()


def _possibly_stacked(params: Any, tree: Any) -> list[tuple[str, tuple]]:
  """Kernels the by-name rule takes as one matrix that may be a stack.

  A parameter tree cannot tell ``L`` stacked Linear kernels ``(L, in, out)``
  from a 1-D convolution's ``(k, in, out)``. The kernel's own ``bias`` can:
  a layer's bias has one axis (its units), a stack's has the stacked axes
  too. So a kernel with three or more axes is reported when its sibling
  ``bias`` has more than one axis, and a 3-axis kernel when it has no bias
  (a bias-free 1-D convolution and a bias-free stack look the same).
  4-axis and larger kernels without a bias are taken as 2-D and 3-D
  convolutions, Flax's ``(kh, kw, in, out)`` and ``(kd, kh, kw, in, out)``.
  """
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  shapes = {path_names(p): tuple(getattr(x, "shape", ())) for p, x in leaves}
  dims = jax.tree.leaves(tree, is_leaf=_is_dims_leaf)
  found = []
  for (path, leaf), d in zip(leaves, dims):
    shape = tuple(getattr(leaf, "shape", ()))
    if d != BortDimensionNumbers() or len(shape) < 3 or 0 in shape:
      continue  # attention kernels have their own rule; empty ones no Δ
    bias = shapes.get(path_names(path)[:-1] + ("bias",))
    if (bias is None and len(shape) == 3) or (bias and len(bias) > 1):
      found.append((path_string(path), shape))
  return found


def warn_possibly_stacked(params: Any, tree: Any, stacklevel: int = 3
                          ) -> None:
  """Warns once per kernel of :func:`_possibly_stacked`, naming the fix."""
  for path, shape in _possibly_stacked(params, tree):
    if (path, shape) in _AMBIGUOUS_WARNED:
      continue
    _AMBIGUOUS_WARNED.add((path, shape))
    warnings.warn(
        f"Bort treats {path!r} of shape {shape} as one matrix (units on the "
        f"last axis, fan-in on the others), but it may be {shape[0]} stacked "
        "layers (nnx.vmap, nnx.scan, linen nn.scan), or one layer with "
        "several output axes (linen DenseGeneral), which a parameter tree "
        "cannot tell; pass the model itself (dimension_numbers=model, "
        "NNX), or dimension_numbers= a tree with, at that leaf, "
        "BortDimensionNumbers(batch_axis=0) for a stack, "
        "BortDimensionNumbers(reduction_axis=0, output_axis=(1, 2)) for "
        "output axes (1, 2), or BortDimensionNumbers() for a 1-D "
        "convolution.", stacklevel=stacklevel)


DimensionNumbersLike = (
    BortDimensionNumbers | Any | Callable[[Any], Any] | None
)


def _is_dims_leaf(x) -> bool:
  return x is None or isinstance(x, BortDimensionNumbers)


#: What :func:`value_at_path` returns for a path no entry covers.
MISSING = object()


def entries_by_path(tree: Any, is_leaf=None) -> dict[tuple, Any]:
  """A (prefix) tree's leaves by their path names (:func:`path_names`)."""
  return {path_names(path): value for path, value in
          jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)[0]}


def value_at_path(entries: dict[tuple, Any], path) -> Any:
  """The entry at ``path`` or its longest prefix, compared by names, so a
  tree built on one container fits another with the same names (a dict
  against ``nnx.State``, whose leaves end in ``.value``); :data:`MISSING`
  if none covers it."""
  names = path_names(path)
  for stop in range(len(names), -1, -1):
    if names[:stop] in entries:
      return entries[names[:stop]]
  return MISSING


def _under_prefix(dims: Any, path, leaf, embedding: bool) -> Any:
  """What an entry of a dimension-numbers tree given at a prefix of a leaf's
  path (``{"dense": BortDimensionNumbers()}`` over its kernel and bias)
  means for that leaf: the numbers at a weight matrix, ``None`` where one
  top-level :class:`BortDimensionNumbers` skips a leaf (a bias, a norm
  scale, an embedding, a vector with unit axes, a non-floating leaf). A
  weight matrix the numbers do not fit keeps them (the entry was meant for
  that subtree: the misfit raises); an entry at a leaf itself is taken as
  it is, so naming an embedding's leaf selects it."""
  if (isinstance(dims, BortDimensionNumbers)
      and not is_weight_matrix(path, leaf, False, embedding)):
    return None
  return dims


def _match_by_path(tree: Any, leaves_with_path) -> list | None:
  """Each leaf's entry in ``tree``, at its path or a prefix of it, and
  whether it was a prefix: ``(dims, under_prefix)`` pairs; None if some
  leaf has none or an entry names no parameter."""
  entries = entries_by_path(tree, is_leaf=_is_dims_leaf)
  leaf_names = [path_names(path) for path, _ in leaves_with_path]
  if not all(any(names[:len(entry)] == entry for names in leaf_names)
             for entry in entries):
    return None  # an entry names no parameter
  dims = [(value_at_path(entries, path), names not in entries)
          for (path, _), names in zip(leaves_with_path, leaf_names)]
  return None if any(d is MISSING for d, _ in dims) else dims


def resolve_views(
    dimension_numbers: DimensionNumbersLike, params: Any
) -> list[MatrixView | None]:
  """The matrix view of every leaf of ``params`` (flattened order), or None.

  Args:
    dimension_numbers: ``None`` for :func:`flax_dimension_numbers` (Flax
      kernels by name; a kernel that may be stacked layers warns once); one
      :class:`BortDimensionNumbers` for every weight matrix, whatever its
      name (see below); a pytree (a prefix of ``params``) of them with
      ``None`` to skip a leaf (an entry over a subtree applies to its
      weight matrices, not to its biases, norm scales or embeddings); a
      callable returning such a pytree given ``params``; or an
      ``nnx.Module`` (its :func:`flax_dimension_numbers`).
    params: the parameters (or anything with their structure and shapes).

  One :class:`BortDimensionNumbers` applies to every floating leaf with at
  least two axes that it fits, except biases and norm scales (a name
  containing ``bias``, ``scale`` or ``norm``), vectors with unit axes, and,
  unless a ``bort_mask`` selects them, embeddings (a name containing
  ``embed``, or a module type's, as ``eqx.nn.Embedding``); leaves the
  numbers do not fit are left out too (if they fit none, that misfit
  raises).

  Returns:
    A list aligned with ``jax.tree.leaves(params)``.

  Raises:
    ValueError: if dimension numbers do not fit a leaf, naming its path.

  Examples:
    >>> import jax.numpy as jnp
    >>> params = {"linear": {"weight": jnp.zeros((3, 4)),  # PyTorch (out, in)
    ...                      "bias": jnp.zeros(3)}}
    >>> views = resolve_views(BortDimensionNumbers.out_in(), params)
    >>> [None if v is None else v.matrix_shape for v in views]
    [None, (1, 3, 4)]
  """
  if flax_selection.is_nnx_module(dimension_numbers):
    dimension_numbers = flax_selection.module_dimension_numbers(
        dimension_numbers)
  if dimension_numbers is None:
    tree = _selection_by_name(params)
    warn_possibly_stacked(params, tree)
  elif isinstance(dimension_numbers, BortDimensionNumbers):
    tree = _selection_for(dimension_numbers, params)
  elif callable(dimension_numbers):
    tree = dimension_numbers(params)
  else:
    tree = dimension_numbers

  leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(params)
  try:
    # Each leaf's entry, and whether it came from a prefix of its path.
    dims = treedef.flatten_up_to(
        jax.tree.map(
            lambda d, p: jax.tree_util.tree_map_with_path(
                lambda path, _: (d, bool(path_names(path))), p),
            tree, params, is_leaf=_is_dims_leaf,
        )
    )
  except (ValueError, TypeError) as e:
    # Containers of other types with the same names (a dict against
    # nnx.State, as nnx.Optimizer hands init and update): match by path.
    dims = _match_by_path(tree, leaves_with_path)
    if dims is None:
      raise ValueError(
          "Bort dimension_numbers must be a BortDimensionNumbers, a pytree "
          "of them (a prefix of the params, None to skip a leaf) or a "
          "callable returning one; its structure does not match the params: "
          f"{e}") from e

  if any(under_prefix for _, under_prefix in dims):
    in_embedding = in_embedding_of(params)
  views = []
  for (path, leaf), (dims_i, under_prefix) in zip(leaves_with_path, dims):
    if under_prefix:
      dims_i = _under_prefix(dims_i, path, leaf, in_embedding(path))
    if dims_i is None:
      views.append(None)
    elif not isinstance(dims_i, BortDimensionNumbers):
      raise ValueError(
          f"Bort dimension numbers for {path_string(path)!r} must be a "
          f"BortDimensionNumbers or None, got {dims_i!r}."
      )
    else:
      views.append(matrix_view(leaf.shape, dims_i, repr(path_string(path)),
                               sharding.explicit_spec(leaf)))
  return views
