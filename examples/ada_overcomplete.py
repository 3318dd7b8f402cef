"""What each mode does to a matrix with more units than fan-in.

With more units than fan-in (``m > n``: a first convolution with many
channels, a transformer's up-projection, a widening 1×1 shortcut),
``W Wᵀ = cI`` has no solution. The full modes on the units (``l2-full``,
``l1-fullrow``, ``huber-fullrow``) constrain the feasible side there,
``Wᵀ W = cI``, with ``"ada"`` the columns' squared mean norm; the published
code kept ``W Wᵀ`` and ``"ada"`` over the units, which pulls the weights
toward zero step after step. The column modes keep the published ``"ada"``
(the units' norms) and collapse such a matrix; swap ``--units`` and
``--fan-in`` to see the column-norm modes grow instead. This script applies
``W ← W − s·Δ(W)`` with no data gradient, per-step strength ``s``, to one
random ``m × n`` matrix for each mode, with ``"ada"`` and with a fixed
``c = 1``, and prints the final Frobenius norm and constraint error (the
feasible side's, as ``bort_jax.matrix_orthogonality_error`` measures it).

  python examples/ada_overcomplete.py --units 16 --fan-in 9 --steps 3000
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

import bort_jax

AMPLITUDES = {"ada": "ada", "fixed c = 1": 1.0}


def run(w: jax.Array, mode: str, amplitude, steps: int,
        strength: float) -> tuple[float, float]:
  """The Frobenius norm and constraint error after ``steps`` corrections."""

  @jax.jit
  def step(w):
    return w - strength * bort_jax.bort_correction(w, mode, amplitude)

  for _ in range(steps):
    w = step(w)
  error = bort_jax.matrix_orthogonality_error(w).constraint_error
  return float(jnp.linalg.norm(w)), float(error)


def main(argv: list[str] | None = None) -> list[str]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--units", type=int, default=16)
  parser.add_argument("--fan-in", type=int, default=9)
  parser.add_argument("--steps", type=int, default=3000)
  parser.add_argument("--strength", type=float, default=1e-3)
  parser.add_argument("--modes", default=",".join(bort_jax.MODES))
  args = parser.parse_args(argv)
  w = jax.random.normal(jax.random.key(0), (args.units, args.fan_in))
  w = w / jnp.sqrt(args.fan_in)
  start = bort_jax.matrix_orthogonality_error(w).constraint_error
  lines = [f"{args.units} units, fan-in {args.fan_in}, {args.steps} steps "
           f"at per-step strength {args.strength:g}; start: norm "
           f"{float(jnp.linalg.norm(w)):.3g}, constraint error "
           f"{float(start):.3g}",
           "| mode | " + " | ".join(AMPLITUDES) + " |",
           "|---|" + "---|" * len(AMPLITUDES)]
  for mode in args.modes.split(","):
    cells = [run(w, mode, amplitude, args.steps, args.strength)
             for amplitude in AMPLITUDES.values()]
    lines.append(f"| {mode} | " + " | ".join(
        f"norm {norm:.3g}, error {error:.2g}" for norm, error in cells)
                 + " |")
  print("\n".join(lines))
  return lines


if __name__ == "__main__":
  main()
