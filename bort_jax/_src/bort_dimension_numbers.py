"""BortDimensionNumbers and leaf path names: what the views and Flax share.

The matrix view (:mod:`bort_jax._src.dimension_numbers`) and the selection
read from a Flax model (:mod:`bort_jax._src.flax_selection`) both speak of
dimension numbers and of leaves by their names; this module, below both,
holds those two words so that neither imports the other's internals.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import numpy as np

Axes = Sequence[int] | int


class BortDimensionNumbers(NamedTuple):
  """Which axes of a parameter are output units, fan-in, and batch.

  Every axis that is neither an output axis nor a batch axis is a reduction
  (fan-in) axis when ``reduction_axis`` is ``None``; when ``reduction_axis`` is
  given, every unnamed axis is a batch axis (each batch index is its own
  matrix, as for scanned or stacked layers).

  Attributes:
    reduction_axis: the fan-in axes, or ``None`` for "all the others".
    output_axis: the output-unit axes (default: the last, Flax's layout).
    batch_axis: axes holding independent matrices (stacked layers).
    feature_group_count: the units of a grouped convolution's one output
      axis, split into this many equal groups of consecutive units, each its
      own matrix: group ``g`` reads only its own input channels, which the
      kernel's fan-in axes already hold (Flax's ``(kh, kw, in/G, out)``,
      PyTorch's ``(out, in/G, kh, kw)``), so orthogonalising units of
      different groups against each other would be meaningless. As
      ``lax.conv_general_dilated``'s argument; a depthwise convolution has
      one group per channel. Shown only when it is not 1.

  Examples:
    >>> BortDimensionNumbers()  # nnx.Linear (in, out) and nnx.Conv kernels
    BortDimensionNumbers(reduction_axis=None, output_axis=-1, batch_axis=())
    >>> BortDimensionNumbers.out_in()  # eqx.nn.Linear, PyTorch (out, in, ...)
    BortDimensionNumbers(reduction_axis=None, output_axis=0, batch_axis=())
    >>> # A scanned stack of Linear layers, kernel (layers, in, out):
    >>> stacked = BortDimensionNumbers(batch_axis=0)
    >>> # An attention query kernel (in, heads, head_dim):
    >>> query = BortDimensionNumbers(reduction_axis=0, output_axis=(1, 2))
    >>> # nnx.Conv(32, 64, (3, 3), feature_group_count=4), kernel (3, 3, 8, 64):
    >>> BortDimensionNumbers(feature_group_count=4)
    BortDimensionNumbers(reduction_axis=None, output_axis=-1, batch_axis=(), feature_group_count=4)
  """

  reduction_axis: Axes | None = None
  output_axis: Axes = -1
  batch_axis: Axes = ()
  feature_group_count: int = 1

  def __repr__(self) -> str:
    fields = [f"{name}={getattr(self, name)!r}" for name in self._fields
              if name != "feature_group_count" or self.feature_group_count != 1]
    return f"BortDimensionNumbers({', '.join(fields)})"

  @classmethod
  def out_in(cls) -> "BortDimensionNumbers":
    """PyTorch's and Equinox's layout: output units on the first axis.

    Fan-in is every other axis: Linear ``(out, in)`` and Conv
    ``(out, in, kh, kw)`` of PyTorch and Equinox. (Haiku keeps Flax's
    ``(in, out)`` under the name ``w``: pass ``BortDimensionNumbers()``.) Given
    as ``dimension_numbers=BortDimensionNumbers.out_in()``, one value applies
    to every weight matrix of the tree (see :func:`resolve_views`), so an
    ``eqx.nn.MLP`` needs nothing else.

    Returns:
      ``BortDimensionNumbers(output_axis=0)``.
    """
    return cls(output_axis=0)


def _is_axis(x) -> bool:
  return isinstance(x, (int, np.integer)) and not isinstance(x, (bool,
                                                                 np.bool_))


def field_axes(dims: "BortDimensionNumbers", field: str) -> tuple[int, ...]:
  """One field's axes as ints; ``batch_axis=None`` means none."""
  axes = getattr(dims, field)
  if axes is None and field == "batch_axis":
    return ()
  if _is_axis(axes):
    return (int(axes),)
  if isinstance(axes, (tuple, list)) and all(_is_axis(a) for a in axes):
    return tuple(int(a) for a in axes)
  raise ValueError(
      f"BortDimensionNumbers.{field} must be an int or a sequence of ints, "
      f"got {axes!r}.")


def _key_name(key) -> Any:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return getattr(key, attr)
  return str(key)


def path_names(path) -> tuple[Any, ...]:
  """The names along a pytree path, without the ``.value`` of NNX variables.

  ``nnx.Optimizer`` hands ``init`` a tree of ``nnx.Variable`` (paths end in
  ``.value``) and ``update`` a tree of arrays: both name a leaf the same here.
  """
  names = tuple(_key_name(k) for k in path)
  while names and names[-1] in ("value", "raw_value"):
    names = names[:-1]
  return names


def path_string(path) -> str:
  """A leaf's path as ``"a/b/kernel"``."""
  return "/".join(str(n) for n in path_names(path))
