"""Reading a traced array's Explicit sharding (no math, no optax)."""

from __future__ import annotations

import jax


def explicit_spec(x) -> tuple | None:
  """x's PartitionSpec, one entry per axis, when its mesh is Explicit.

  ``None`` for unsharded arrays and under Auto sharding, where XLA chooses
  shardings after tracing and nothing is known here.
  """
  try:
    sharding = jax.typeof(x).sharding
  except (AttributeError, TypeError):
    return None
  mesh = getattr(sharding, "mesh", None)
  if mesh is None or mesh.empty or not any(
      t == jax.sharding.AxisType.Explicit for t in mesh.axis_types
  ):
    return None
  spec = tuple(sharding.spec)
  return spec + (None,) * (len(x.shape) - len(spec))


def on_mesh_of(x, *entries) -> jax.sharding.NamedSharding:
  """The sharding ``P(*entries)`` on x's own (Explicit) mesh.

  A bare ``PartitionSpec`` would need the caller's ``jax.set_mesh`` context;
  read from x's type, it works eagerly and under jit without one.
  """
  return jax.sharding.NamedSharding(jax.typeof(x).sharding.mesh,
                                    jax.sharding.PartitionSpec(*entries))


def merged_spec(entries) -> object:
  """The spec entry of axes merged by a reshape (split axes must lead)."""
  names = []
  for entry in entries:
    if entry is not None:
      names.extend(entry if isinstance(entry, tuple) else (entry,))
  if not names:
    return None
  return names[0] if len(names) == 1 else tuple(names)
