"""Bort parameters chosen from a Flax NNX model's module types.

A parameter tree alone cannot tell a stack of ``L`` Linear kernels
``(L, in, out)`` (from ``nnx.vmap`` or ``nnx.scan``) from a 1-D convolution's
``(k, in, out)``. The model can: each ``nnx.Linear``, ``nnx.Conv`` or
``nnx.LinearGeneral`` declares how many axes its kernel has, and any axes in
front of those are stacked layers, i.e. batch axes of independent matrices.
"""

from __future__ import annotations

import sys
from typing import Any

import jax

from bort_jax._src.dimension_numbers import BortDimensionNumbers
from bort_jax._src.dimension_numbers import path_names


def is_nnx_module(x: Any) -> bool:
  """Whether x is an ``nnx.Module`` (without importing Flax when unused)."""
  nnx = sys.modules.get("flax.nnx")
  return nnx is not None and isinstance(x, nnx.Module)


def _as_tuple(x) -> tuple:
  return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _module_dims(module, kernel_ndim: int) -> BortDimensionNumbers | None:
  """The dimension numbers of one module's kernel, or None if not a Bort
  layer. Axes are counted from the front; stacked layers lead."""
  from flax import nnx  # pylint: disable=g-import-not-at-top

  if isinstance(module, nnx.Einsum):
    return None  # an einsum's kernel axes have no fixed meaning
  if isinstance(module, nnx.LinearGeneral):
    batch_sizes = dict(module.batch_axis)
    n_in = len(_as_tuple(module.in_features))
    n_out = len(_as_tuple(module.out_features))
    declared = len(batch_sizes) + n_in + n_out
    lead = kernel_ndim - declared
    batch = tuple(range(lead + len(batch_sizes)))
    reduction = tuple(range(len(batch), len(batch) + n_in))
    output = tuple(range(len(batch) + n_in, kernel_ndim))
    return BortDimensionNumbers(reduction, output, batch)
  if isinstance(module, (nnx.Conv, nnx.ConvTranspose)):
    declared = len(_as_tuple(module.kernel_size)) + 2
  elif isinstance(module, nnx.Linear):
    declared = 2
  else:
    declared = 2  # another module's `kernel`: Flax's layout, units last
  lead = kernel_ndim - declared
  if lead < 0 or kernel_ndim < 2:
    return None
  return BortDimensionNumbers(
      reduction_axis=tuple(range(lead, kernel_ndim - 1)),
      output_axis=kernel_ndim - 1,
      batch_axis=tuple(range(lead)),
  )


class FlaxDimensionNumbers:
  """Dimension numbers read from a model, applied to whatever tree arrives.

  A callable over a parameter tree, the form ``dimension_numbers`` accepts
  everywhere: it works for ``nnx.Optimizer``, whose ``init`` sees a tree of
  ``nnx.Variable`` and whose ``update`` sees arrays, and for any sub-tree of
  the model's state (paths are matched by name, leaves it does not know map
  to ``None``).

  Attributes:
    table: each Bort kernel's path (a tuple of names) to its number of axes
      and its :class:`BortDimensionNumbers`.
  """

  def __init__(self, table: dict[tuple, tuple[int, BortDimensionNumbers]]):
    self.table = dict(table)

  def __call__(self, tree: Any) -> Any:
    def choose(path, leaf):
      entry = self.table.get(path_names(path))
      if entry is None:
        return None
      ndim, dims = entry
      shape = getattr(leaf, "shape", None)
      if shape is not None and len(shape) != ndim:
        raise ValueError(
            f"{'/'.join(map(str, path_names(path)))!r} has {len(shape)} axes "
            f"here but {ndim} in the model these dimension numbers were read "
            "from; build them from the same model.")
      return dims

    return jax.tree_util.tree_map_with_path(choose, tree)

  def __repr__(self) -> str:
    lines = [f"  {'/'.join(map(str, p))}: {d}" for p, (_, d) in
             sorted(self.table.items(), key=lambda kv: str(kv[0]))]
    return "FlaxDimensionNumbers(\n" + "\n".join(lines) + "\n)"


def module_dimension_numbers(model: Any) -> FlaxDimensionNumbers:
  """The Bort kernels of an ``nnx.Module``, selected by module type."""
  from flax import nnx  # pylint: disable=g-import-not-at-top

  table = {}
  for path, node in nnx.iter_graph(model):
    if not isinstance(node, nnx.Module):
      continue
    kernel = getattr(node, "kernel", None)
    if not isinstance(kernel, nnx.Param):
      continue
    ndim = len(kernel.shape)
    dims = _module_dims(node, ndim)
    if dims is not None:
      table[tuple(path) + ("kernel",)] = (ndim, dims)
  return FlaxDimensionNumbers(table)
