"""Bort parameters chosen from a Flax NNX model's module types.

A parameter tree alone cannot tell a stack of ``L`` Linear kernels
``(L, in, out)`` (from ``nnx.vmap`` or ``nnx.scan``) from a 1-D convolution's
``(k, in, out)``. The model can: each ``nnx.Linear``, ``nnx.Conv`` or
``nnx.LinearGeneral`` declares its kernel's shape, and the axes beyond it are
stacked layers, i.e. batch axes of independent matrices, wherever the
transform's ``out_axes`` put them. Where the shapes cannot say which axes
those are, the selection refuses rather than guess.

This is the one module of the optimizer core that uses Flax, and it imports
Flax only inside the functions that are handed a Flax module: the core is
imported by ``import bort_jax``, which an optax-only user (Equinox, Haiku,
plain pytrees) runs without Flax installed. A caller that holds an
``nnx.Module`` has imported Flax already, so those imports cost nothing.
"""

from __future__ import annotations

import itertools
import sys
import warnings
from typing import Any

import jax

from bort_jax._src.bort_dimension_numbers import BortDimensionNumbers
from bort_jax._src.bort_dimension_numbers import path_names


def is_nnx_module(x: Any) -> bool:
  """Whether x is an ``nnx.Module`` (without importing Flax when unused)."""
  nnx = sys.modules.get("flax.nnx")
  return nnx is not None and isinstance(x, nnx.Module)


def _as_tuple(x) -> tuple:
  return tuple(x) if isinstance(x, (tuple, list)) else (x,)


class _UnreadEinsum(Exception):
  """An ``nnx.Einsum`` whose equation does not make its kernel matrices."""


def einsum_kernel_axes(einsum_str: str | None
                       ) -> tuple[tuple[int, ...], tuple[int, ...],
                                  tuple[int, ...]]:
  """The batch, fan-in and unit axes of an einsum's kernel, its second operand.

  For ``y = einsum("lhs,rhs->out", x, W)``, each subscript of ``W`` is
  summed with the input (in ``lhs``, not in ``out``: fan-in), carried to
  the output alone (in ``out``, not in ``lhs``: a unit axis), or shared by
  the input and the output (in both: one matrix for each of its indices,
  as each head's matrix in ``"bhd,hdk->bhk"``).

  Args:
    einsum_str: an ``nnx.Einsum``'s equation, e.g. ``"bi,io->bo"``.

  Returns:
    ``(batch, fan_in, units)``: the kernel's axes of each kind.

  Raises:
    ValueError: saying why the kernel is not a batch of matrices: no
      equation (given only when called), an implicit output, an ellipsis
      or a repeated subscript in the kernel, a kernel axis summed alone, no
      fan-in or no unit axis.

  Examples:
    >>> einsum_kernel_axes("bi,io->bo")
    ((), (0,), (1,))
    >>> einsum_kernel_axes("bhd,hdk->bhk")  # one (d, k) matrix a head
    ((0,), (1,), (2,))
  """
  if einsum_str is None:
    raise ValueError("its equation is given only when it is called")
  spec = einsum_str.replace(" ", "")
  inputs, arrow, out = spec.partition("->")
  lhs, _, rhs = inputs.partition(",")
  if not arrow or not rhs:
    raise ValueError(
        f"{einsum_str!r} does not name the output and two operands")
  if "." in rhs or len(set(rhs)) != len(rhs):
    raise ValueError(f"the kernel's subscripts {rhs!r} hold an ellipsis or a "
                     "repeated letter")
  kinds = {(True, True): [], (True, False): [], (False, True): []}
  for axis, letter in enumerate(rhs):
    kind = (letter in lhs, letter in out)
    if kind not in kinds:
      raise ValueError(f"the kernel's axis {letter!r} in {einsum_str!r} is "
                       "summed alone")
    kinds[kind].append(axis)
  batch, fan_in, units = (tuple(kinds[k]) for k in
                          ((True, True), (True, False), (False, True)))
  if not fan_in or not units:
    raise ValueError(f"the kernel of {einsum_str!r} has no fan-in or no unit "
                     "axis")
  return batch, fan_in, units


def _declared(module) -> tuple[dict[str, tuple[int, ...]], tuple[int, ...],
                                tuple[int, ...], tuple[int, ...]] | None:
  """What a Flax layer declares for its own, unstacked parameters.

  Returns ``(shapes, batch, reduction, output)``: each parameter's declared
  shape by name, and the kernel's batch, fan-in and unit axes in that shape;
  ``None`` for a module whose kernel layout is not declared.
  """
  # Lazy, so that the core imports without Flax (see the module docstring).
  from flax import nnx  # pylint: disable=g-import-not-at-top

  if isinstance(module, nnx.LinearGeneral):
    batch_shape = tuple(dict(module.batch_axis).values())
    fan_in = tuple(_as_tuple(module.in_features))
    units = tuple(_as_tuple(module.out_features))
    kernel = batch_shape + fan_in + units
    shapes = {"kernel": kernel, "bias": batch_shape + units}
    nb, ni = len(batch_shape), len(fan_in)
    return (shapes, tuple(range(nb)), tuple(range(nb, nb + ni)),
            tuple(range(nb + ni, len(kernel))))
  if isinstance(module, nnx.Einsum):
    try:
      batch, fan_in, units = einsum_kernel_axes(module.einsum_str)
    except ValueError as e:
      raise _UnreadEinsum(str(e)) from None
    shapes = {"kernel": tuple(module.kernel_shape)}
    if module.bias_shape is not None:
      shapes["bias"] = tuple(module.bias_shape)
    return shapes, batch, fan_in, units
  if isinstance(module, nnx.ConvTranspose) and module.transpose_kernel:
    # (k..., out, in): the units on the next-to-last axis.
    kernel = tuple(module.kernel_shape)
    n = len(kernel)
    return ({"kernel": kernel, "bias": (module.out_features,)}, (),
            tuple(range(n - 2)) + (n - 1,), (n - 2,))
  if isinstance(module, (nnx.Conv, nnx.ConvTranspose)):
    kernel = tuple(module.kernel_shape)
    units = (module.out_features,)
  elif isinstance(module, nnx.Linear):
    kernel = (module.in_features, module.out_features)
    units = (module.out_features,)
  else:
    return None
  n = len(kernel)
  return ({"kernel": kernel, "bias": units}, (), tuple(range(n - 1)),
          (n - 1,))


def _fits(shape: tuple[int, ...], declared: tuple[int, ...]) -> set:
  """The sets of axes of ``shape`` whose removal leaves ``declared``."""
  lead = len(shape) - len(declared)
  if lead < 0:
    return set()
  return {axes for axes in itertools.combinations(range(len(shape)), lead)
          if tuple(d for a, d in enumerate(shape) if a not in axes)
          == declared}


def _stacked_axes(module, name: str, declared) -> tuple[int, ...]:
  """The axes ``nnx.vmap``/``nnx.scan`` added to a layer's parameters.

  Flax records no stacking axis on a Variable (only in a sharding spec, when
  there is one), so it is read from the shapes: ``out_axes`` inserts the
  stacking axes at the same positions in every parameter of a layer,
  counted from the front (``out_axes >= 0``) or from the back (``< 0``),
  hence the kernel and the bias together must fit the shapes the layer
  declares. The front is read first: where both readings fit (a stack of
  as many layers as a layer has units, say), it is taken.
  """
  # Lazy, so that the core imports without Flax (see the module docstring).
  from flax import nnx  # pylint: disable=g-import-not-at-top

  kernel = tuple(module.kernel.shape)
  params = {other: tuple(getattr(module, other).shape)
            for other in declared if other == "kernel"
            or isinstance(getattr(module, other, None), nnx.Param)}
  # The same positions in every parameter, counted from the front
  # (out_axes=0, 1, …: Flax's default 0 among them) or, when no position
  # from the front fits them all, from the back (out_axes=-1, …).
  candidates = set.intersection(*(
      _fits(shape, declared[other]) for other, shape in params.items()))
  if not candidates:
    from_back = set.intersection(*(
        {tuple(a - len(shape) for a in axes)
         for axes in _fits(shape, declared[other])}
        for other, shape in params.items()))
    candidates = {tuple(a + len(kernel) for a in axes) for axes in from_back}
  if len(candidates) == 1:
    return candidates.pop()
  layer = (f"{type(module).__name__} at {name!r} (declared kernel "
           f"{declared['kernel']}, kernel here {kernel})")
  fix = ("pass dimension_numbers= a dict of BortDimensionNumbers by path, "
         "naming the stacked axes as batch_axis")
  if not candidates:
    raise ValueError(
        f"flax_dimension_numbers: the {layer} does not fit the shape its "
        f"layer declares, so its matrices are unknown; {fix}.")
  options = " or ".join(str(c) for c in sorted(candidates))
  raise ValueError(
      f"flax_dimension_numbers: the stacked layers of the {layer} could be "
      f"on axes {options} (the shapes cannot tell nnx.vmap/nnx.scan's "
      f"out_axes apart); {fix}.")


def _module_dims(module, kernel_ndim: int,
                 name: str = "kernel") -> BortDimensionNumbers | None:
  """The dimension numbers of one module's kernel, or None if not a Bort
  layer. Stacked axes (from ``nnx.vmap``/``nnx.scan``) are batch axes,
  wherever their ``out_axes`` put them."""
  # Lazy, so that the core imports without Flax (see the module docstring).
  from flax import nnx  # pylint: disable=g-import-not-at-top

  declared = _declared(module)
  if declared is None:
    # Another module's `kernel`: Flax's layout, units last, and its own
    # layout is unknown, so axes beyond a matrix's two lead as a stack.
    if kernel_ndim < 2:
      return None
    return BortDimensionNumbers(
        reduction_axis=(kernel_ndim - 2,),
        output_axis=kernel_ndim - 1,
        batch_axis=tuple(range(kernel_ndim - 2)),
    )
  shapes, batch, reduction, output = declared
  stacked = _stacked_axes(module, name, shapes)
  own = [a for a in range(kernel_ndim) if a not in stacked]
  dims = BortDimensionNumbers(
      reduction_axis=tuple(own[a] for a in reduction),
      output_axis=tuple(own[a] for a in output),
      batch_axis=tuple(sorted(stacked + tuple(own[a] for a in batch))),
  )
  if not isinstance(module, (nnx.LinearGeneral, nnx.Einsum)):
    dims = dims._replace(output_axis=dims.output_axis[0])  # one unit axis
  groups = getattr(module, "feature_group_count", 1)
  if isinstance(module, nnx.Conv) and groups > 1:
    dims = dims._replace(feature_group_count=groups)  # one matrix a group
  return dims


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


def param_state(model: Any) -> Any:
  """An ``nnx.Module``'s parameters, ``nnx.state(model, nnx.Param)``."""
  from flax import nnx  # pylint: disable=g-import-not-at-top

  return nnx.state(model, nnx.Param)


def module_dimension_numbers(model: Any) -> FlaxDimensionNumbers:
  """The Bort kernels of an ``nnx.Module``, selected by module type."""
  # Lazy, so that the core imports without Flax (see the module docstring).
  from flax import nnx  # pylint: disable=g-import-not-at-top

  table, unread = {}, []
  for path, node in nnx.iter_graph(model):
    if not isinstance(node, nnx.Module):
      continue
    kernel = getattr(node, "kernel", None)
    if not isinstance(kernel, nnx.Param):
      continue
    ndim = len(kernel.shape)
    name = "/".join(map(str, tuple(path) + ("kernel",)))
    try:
      dims = _module_dims(node, ndim, name)
    except _UnreadEinsum as e:
      unread.append(f"{name!r} ({e})")
      continue
    if dims is not None:
      table[tuple(path) + ("kernel",)] = (ndim, dims)
  if unread:
    warnings.warn(
        f"flax_dimension_numbers: leaves out the nnx.Einsum kernel "
        f"{', '.join(unread)}: its matrices cannot be read from its "
        f"equation; give it BortDimensionNumbers by path (a dict of them "
        f"as dimension_numbers=), or leave it out.", stacklevel=3)
  return FlaxDimensionNumbers(table)
