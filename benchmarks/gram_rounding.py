"""How far a float32 Gram on the constraint is from ``cI``: its rounding.

The l1 modes read a residual ``|G − cI|`` within ``4·√n·eps·c`` as 0 (their
rounding zone, ``n`` the fan-in). This prints, for Gaussian
kernels landed on the constraint by :func:`bort_jax.project_to_constraint`
("ada"), the largest residual entry on and off the diagonal in units of
``eps·c``, beside that zone:

    python benchmarks/gram_rounding.py
"""

from __future__ import annotations

import argparse
import jax
import jax.numpy as jnp
import numpy as np

import bort_jax

SHAPES = [(16, 16), (64, 64), (256, 784), (784, 784), (256, 4608),
          (512, 4608), (1024, 1024), (64, 25088)]  # (units m, fan-in n)


def main() -> None:
  eps = float(jnp.finfo(jnp.float32).eps)
  print("| units m | fan-in n | max diag | max off-diag | rms off-diag "
        "| zone |")
  print("|---|---|---|---|---|---|")
  for m, n in SHAPES:
    w = jax.random.normal(jax.random.key(0), (n, m))  # Flax (in, out)
    w = bort_jax.project_to_constraint({"kernel": w}, amplitude="ada")
    x = w["kernel"].T  # the units as rows
    c = float(jnp.mean(jnp.sqrt(jnp.sum(x * x, axis=1))) ** 2)
    r = np.abs(np.asarray(x @ x.T - c * jnp.eye(m))) / (eps * c)
    off = r[~np.eye(m, dtype=bool)]
    zone = 4 * np.sqrt(n)  # the library's zone, in units of eps·c
    print(f"| {m} | {n} | {r.diagonal().max():.1f} | {off.max():.1f} | "
          f"{np.sqrt(np.mean(off ** 2)):.2f} | {zone:.0f} |")


if __name__ == "__main__":
  # No options: the parser gives --help and refuses anything else.
  argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      epilog="Takes no options; prints one table.").parse_args()
  main()
