"""The first steps of Bort-AdamW on digits: where the weights start.

Bort pulls every weight matrix towards ``W Wᵀ = cI`` a little at each step,
so from a random start the correction alone takes many steps to get there:
after 200 steps of ``bort_jax.bort_adamw(1e-3, start_on_constraint=False)``
an MLP is still far from its constraint. An orthogonal start puts it there
at step 0::

  params = bort_jax.project_to_constraint(nnx.state(model, nnx.Param))
  nnx.update(model, params)

and Bort then keeps it there, while AdamW from the same start drifts away.
The aliases' default, ``start_on_constraint=True``, does the same with the
optimizer's first step, from whatever initialisation. This script trains an
NNX MLP (64-64-64-10) on scikit-learn's bundled 8×8 digits with AdamW and
with Bort-AdamW without its start, each from the default and from the
orthogonal initialisation (the same seed), and with Bort-AdamW's default
from the default initialisation ("first step"), and prints the mean
constraint error (:func:`bort_jax.mean_orthogonality_error`) at steps 0,
10, 50 and the last, and the test accuracy::

  python examples/first_steps_digits.py            # 200 steps, ~30 s on a CPU
  python examples/first_steps_digits.py --steps 20
"""

from __future__ import annotations

import argparse
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import bort_jax


class MLP(nnx.Module):
  """64 → 64 → 64 → 10 with ReLU."""

  def __init__(self, rngs: nnx.Rngs):
    self.hidden1 = nnx.Linear(64, 64, rngs=rngs)
    self.hidden2 = nnx.Linear(64, 64, rngs=rngs)
    self.head = nnx.Linear(64, 10, rngs=rngs)

  def __call__(self, x):
    x = jax.nn.relu(self.hidden1(x))
    x = jax.nn.relu(self.hidden2(x))
    return self.head(x)


def load_digits(seed: int = 0):
  """Digits as float32 in [0, 1]: 1347 training and 450 test images."""
  from sklearn.datasets import load_digits as sklearn_digits
  digits = sklearn_digits()
  images = (digits.data / 16.0).astype(np.float32)
  labels = digits.target.astype(np.int32)
  order = np.random.default_rng(seed).permutation(len(labels))
  train, test = order[:1347], order[1347:]
  return (images[train], labels[train]), (images[test], labels[test])


def _loss(model, images, labels):
  logits = model(images)
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


@nnx.jit
def train_step(model, optimizer, images, labels):
  grads = nnx.grad(_loss)(model, images, labels)
  optimizer.update(model, grads)


def constraint_error(model) -> float:
  """The mean ‖WWᵀ − cI‖/‖cI‖ over the model's kernels."""
  errors = bort_jax.orthogonality_error(nnx.state(model, nnx.Param))
  return float(bort_jax.mean_orthogonality_error(errors).constraint_error)


def run(tx: optax.GradientTransformation, orthogonal: bool, data, *,
        steps: int = 200, batch_size: int = 128, seed: int = 0,
        record: Sequence[int] = (0, 10, 50, 200)) -> dict:
  """Trains one model; returns its errors at ``record`` and test accuracy.

  Args:
    tx: the optimizer.
    orthogonal: start from the kernels projected on ``W Wᵀ = cI``.
    data: ``((train images, labels), (test images, labels))``.
    steps: training steps.
    batch_size: examples per step.
    seed: the init's and the batches' seed.
    record: the steps at which to measure the constraint error (those past
      ``steps`` are left out; ``steps`` itself is always measured).

  Returns:
    ``{"errors": {step: error}, "accuracy": test accuracy}``.
  """
  (train_x, train_y), (test_x, test_y) = data
  model = MLP(nnx.Rngs(seed))
  if orthogonal:
    params = bort_jax.project_to_constraint(nnx.state(model, nnx.Param))
    nnx.update(model, params)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  rng = np.random.default_rng(seed)
  marks = sorted({s for s in record if s <= steps} | {steps})
  errors = {0: constraint_error(model)}
  for step in range(1, steps + 1):
    index = rng.choice(len(train_y), batch_size, replace=False)
    train_step(model, optimizer, jnp.asarray(train_x[index]),
               jnp.asarray(train_y[index]))
    if step in marks:
      errors[step] = constraint_error(model)
  predictions = jnp.argmax(model(jnp.asarray(test_x)), axis=-1)
  accuracy = float(jnp.mean(predictions == jnp.asarray(test_y)))
  return {"errors": {s: errors[s] for s in marks}, "accuracy": accuracy}


def table(results: dict[tuple[str, str], dict]) -> str:
  """A markdown table: one row per (optimizer, start)."""
  marks = list(next(iter(results.values()))["errors"])
  header = ["optimizer", "start", *(f"err @ {s}" for s in marks), "test acc"]
  lines = ["| " + " | ".join(header) + " |",
           "|" + "---|" * len(header)]
  for (name, start), result in results.items():
    cells = [name, start, *(f"{result['errors'][s]:.4f}" for s in marks),
             f"{100 * result['accuracy']:.2f}%"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
  """Runs the five trainings and prints the table; returns the results."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=200,
                      help="training steps per run (default: 200)")
  parser.add_argument("--seed", type=int, default=0, help="random seed")
  args = parser.parse_args(argv)
  if args.steps < 1:
    parser.error(f"--steps must be a positive integer, got {args.steps}")
  data = load_digits(args.seed)
  unstarted = lambda: bort_jax.bort_adamw(1e-3, start_on_constraint=False)
  runs = [("AdamW", "default", lambda: optax.adamw(1e-3), False),
          ("AdamW", "orthogonal", lambda: optax.adamw(1e-3), True),
          ("Bort-AdamW", "default", unstarted, False),
          ("Bort-AdamW", "orthogonal", unstarted, True),
          ("Bort-AdamW", "first step", lambda: bort_jax.bort_adamw(1e-3),
           False)]
  results = {}
  for name, start, make, orthogonal in runs:
    results[name, start] = run(make(), orthogonal, data, steps=args.steps,
                               seed=args.seed)
  print(f"Mean constraint error ‖WWᵀ − cI‖/‖cI‖ over the 3 kernels, "
        f"{args.steps} steps of batch 128 on digits (seed {args.seed}):\n")
  print(table(results))
  return results


if __name__ == "__main__":
  main()
