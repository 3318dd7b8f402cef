"""Where the sign-like correction stops working: strength per application.

``bort_jax.MAX_STEP_STRENGTH`` is the per-step Bort strength above which the
l1 and Huber corrections stop constraining or diverge; the aliases warn
above it. This script is the measurement behind it, and its extension to the
amortised correction (``every=k``), which applies ``k·s`` once every ``k``
steps: is the limit one on ``s`` or on the burst ``k·s``?

An MLP 64-64-64-10 (``first_steps_digits.MLP``) is trained for ``--steps``
steps of batch 128 on scikit-learn's 8×8 digits (1347 train, 450 test
images), ``l1-fullrow`` ``"ada"`` with the aliases' other defaults (so the
decoupled arm starts on the constraint and the coupled one, whose
``bort_sgd`` default is off, does not), in the two placements:

- decoupled: ``with_bort(optax.adamw(1e-3), strength=s, every=k)``;
- coupled: ``bort_sgd(0.05, momentum=0.9, gamma=γ, every=k)``, whose
  per-step strength is ``lr·γ/(1 − μ)`` (``γ = s·(1 − μ)/lr``);

for each strength per application ``b = k·s`` of ``--strengths`` and each
``k`` of ``--everys``, on the seeds of ``--seeds``. It prints the test
accuracy and the mean constraint error at the end, averaged over the seeds
(``nan`` when a run diverged)::

  python examples/step_strength_limit.py             # ~3 min on a 2-core CPU
  python examples/step_strength_limit.py --steps 50 --strengths 1e-3,5e-2
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import bort_jax

sys.path.insert(0, str(Path(__file__).resolve().parent))
from first_steps_digits import MLP  # noqa: E402
from first_steps_digits import constraint_error  # noqa: E402
from first_steps_digits import load_digits  # noqa: E402
from first_steps_digits import train_step  # noqa: E402

BATCH = 128


def optimizer(placement: str, burst: float, every: int):
  """The Bort optimizer whose correction applies ``burst`` every ``every``."""
  s = burst / every
  if placement == "decoupled":
    return bort_jax.with_bort(optax.adamw(1e-3), strength=s, every=every)
  lr, momentum = 0.05, 0.9
  return bort_jax.bort_sgd(lr, momentum=momentum,
                           gamma=s * (1 - momentum) / lr, every=every)


def run(placement: str, burst: float, every: int, seed: int, steps: int,
        data) -> tuple[float, float]:
  """(test accuracy, mean constraint error) after ``steps`` steps."""
  (x_train, y_train), (x_test, y_test) = data
  model = MLP(nnx.Rngs(seed))
  with warnings.catch_warnings():  # above the limit on purpose
    warnings.simplefilter("ignore", UserWarning)
    opt = nnx.Optimizer(model, optimizer(placement, burst, every),
                        wrt=nnx.Param)
  rng = np.random.default_rng(seed)
  order = rng.permutation(len(y_train))
  for step in range(steps):
    start = (step * BATCH) % (len(order) - BATCH + 1)
    batch = order[start:start + BATCH]
    train_step(model, opt, jnp.asarray(x_train[batch]),
               jnp.asarray(y_train[batch]))
  error = constraint_error(model)
  if not math.isfinite(error):
    return math.nan, math.nan
  accuracy = float(np.mean(np.argmax(np.asarray(model(x_test)), -1)
                           == y_test))
  return accuracy, error


def _floats(text: str) -> list[float]:
  return [float(v) for v in text.split(",")]


def _ints(text: str) -> list[int]:
  return [int(v) for v in text.split(",")]


def main(argv: Sequence[str] | None = None
         ) -> dict[tuple[str, int, float], Any]:
  """Prints the table; returns ``{(placement, every, b): (accuracy, error)}``
  averaged over the seeds."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--strengths", type=_floats,
                      default=[1e-4, 1e-3, 1e-2, 2e-2, 5e-2],
                      help="strengths per application b = every * s")
  parser.add_argument("--everys", type=_ints, default=[1, 8])
  parser.add_argument("--seeds", type=_ints, default=[0, 1])
  parser.add_argument("--placements", default="decoupled,coupled")
  args = parser.parse_args(argv)
  data = load_digits()
  print(f"# MLP 64-64-64-10 on digits, {args.steps} steps of batch {BATCH}, "
        f"l1-fullrow 'ada', seeds {args.seeds}; MAX_STEP_STRENGTH = "
        f"{bort_jax.MAX_STEP_STRENGTH:g}")
  print("| placement | every | b = every·s | s | test accuracy | constraint |")
  print("|---|---|---|---|---|---|")
  table = {}
  for placement in args.placements.split(","):
    for every in args.everys:
      for burst in args.strengths:
        results = [run(placement, burst, every, seed, args.steps, data)
                   for seed in args.seeds]
        accuracy = float(np.mean([r[0] for r in results]))
        error = float(np.mean([r[1] for r in results]))
        table[placement, every, burst] = accuracy, error
        print(f"| {placement} | {every} | {burst:g} | {burst / every:.3g} | "
              f"{100 * accuracy:.1f} % | {error:.2g} |", flush=True)
  return table


if __name__ == "__main__":
  main()
