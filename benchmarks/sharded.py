"""Bort on sharded parameters: correctness and the collectives XLA emits.

Runs on 8 simulated CPU devices (a 4×2 "data"×"model" mesh). For every mode,
sharding mode (Auto, Explicit) and layout (fan-in split, units split, both),
one jitted ``tree_correction`` of a Linear and a conv kernel is compared with
the unsharded result, and the collectives in its compiled HLO are counted with
their shapes. Prints one table.

    python benchmarks/sharded.py
"""

import argparse
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8")

import collections  # noqa: E402
import re  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import AxisType  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import bort_jax  # noqa: E402

LAYOUTS = {
    "fan-in split": (P("model", None), P(None, None, "model", None)),
    "units split": (P(None, "model"), P(None, None, None, "model")),
    "both split": (P("data", "model"), P(None, None, "data", "model")),
}
# "%x = f32[8,8]{1,0} all-reduce(" or, once combined, "= (f32[..], ..) ...(".
COLLECTIVE = re.compile(
    r"= (.+?) (all-reduce|all-gather|reduce-scatter|all-to-all|"
    r"collective-permute)(?:-start)?\(")


def collectives(hlo: str) -> str:
  counts = collections.Counter(
      f"{kind} {shape}" for shape, kind in COLLECTIVE.findall(hlo))
  return ", ".join(f"{n}× {name}" for name, n in sorted(counts.items())) or "–"


def main():
  rng = np.random.default_rng(0)
  params = {"dense": {"kernel": jnp.asarray(rng.normal(size=(512, 128)) * 0.05,
                                            jnp.float32)},
            "conv": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 64, 32))
                                           * 0.05, jnp.float32)}}
  print(f"devices: {jax.device_count()} × {jax.devices()[0].device_kind}; "
        "dense kernel (512, 128) → W 128×512, conv (3, 3, 64, 32) → W 32×576")
  print("| sharding | layout | mode | max |Δ − unsharded| | shardings kept | "
        "collectives (dense + conv) |")
  print("|---|---|---|---|---|---|")
  for axis_type in (AxisType.Explicit, AxisType.Auto):
    mesh = jax.make_mesh((4, 2), ("data", "model"),
                         axis_types=(axis_type,) * 2)
    for layout, (dense_spec, conv_spec) in LAYOUTS.items():
      shardings = {"dense": {"kernel": NamedSharding(mesh, dense_spec)},
                   "conv": {"kernel": NamedSharding(mesh, conv_spec)}}
      for mode in bort_jax.MODES:
        expected = bort_jax.tree_correction(params, mode, 1.0)
        with jax.set_mesh(mesh):
          sharded = jax.device_put(params, shardings)
          correct = jax.jit(
              lambda p, mode=mode: bort_jax.tree_correction(p, mode, 1.0))
          got = correct(sharded)
          hlo = correct.lower(sharded).compile().as_text()
        error = max(float(jnp.max(jnp.abs(got[k]["kernel"]
                                          - expected[k]["kernel"])))
                    for k in params)
        kept = all(got[k]["kernel"].sharding.is_equivalent_to(
            shardings[k]["kernel"], got[k]["kernel"].ndim) for k in params)
        print(f"| {axis_type.name} | {layout} | {mode} | {error:.1e} | "
              f"{'yes' if kept else 'NO'} | {collectives(hlo)} |")


if __name__ == "__main__":
  # No options: the parser gives --help and refuses anything else.
  argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      epilog="Takes no options; prints one table.").parse_args()
  main()
