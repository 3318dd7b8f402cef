"""Bort on any optax optimizer at its usual learning rate, with no Bort argument.

Trains an MLP 64-64-64-10 (a plain pytree, ``(in, out)`` kernels) on
scikit-learn's bundled 8×8 digits, batches of 128, with each optimizer alone
and wrapped in :func:`bort_jax.with_bort` (or the aliases) at their
defaults, from the default start and from the orthogonal one
(:func:`bort_jax.project_to_constraint`; both arms of a row start from the
same weights), for 300 and 3000 steps, and prints the test accuracy and the
mean constraint error of each::

  python examples/any_optimizer.py                  # every row, ~90 s on a 2-core CPU
  python examples/any_optimizer.py --optimizers lion_1e-4 --steps 300

``tests/core/test_any_optimizer.py`` asserts the rows the composition guide
calls safe with this module's :func:`train`.
"""

from __future__ import annotations

import argparse
import functools
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn import datasets

import bort_jax
from bort_jax.experiments import flags
from bort_jax.experiments import frontier_stats
from bort_jax.experiments import text

SIZES = (64, 64, 64, 10)
BATCH = 128


class Outcome(NamedTuple):
  """What one training run ends with."""
  accuracy: float  # on the 397 held-out digits
  mean_error: float  # mean constraint error over the three kernels
  head_error: float  # the classifier's (10 rows in 64-d)
  finite: bool


#: name: (the optimizer alone, the same with Bort and no Bort argument).
OPTIMIZERS: dict[str, tuple[Callable[[], optax.GradientTransformation],
                            Callable[..., optax.GradientTransformation]]] = {
    "muon_0.02": (lambda: optax.contrib.muon(0.02),
                  lambda **kw: bort_jax.with_bort(
                      optax.contrib.muon(0.02), **kw)),
    "lion_1e-4": (lambda: optax.lion(1e-4),
                  lambda **kw: bort_jax.with_bort(optax.lion(1e-4), **kw)),
    "lion_3e-4": (lambda: optax.lion(3e-4),
                  lambda **kw: bort_jax.with_bort(optax.lion(3e-4), **kw)),
    "lamb_1e-3": (lambda: optax.lamb(1e-3),
                  lambda **kw: bort_jax.with_bort(optax.lamb(1e-3), **kw)),
    "adamw_3e-3_with_bort": (lambda: optax.adamw(3e-3),
                             lambda **kw: bort_jax.with_bort(
                                 optax.adamw(3e-3), **kw)),
    "adamw_3e-3_bort_adamw": (lambda: optax.adamw(3e-3),
                              lambda **kw: bort_jax.bort_adamw(3e-3, **kw)),
    "sgd_0.1_with_bort": (lambda: optax.sgd(0.1, momentum=0.9),
                          lambda **kw: bort_jax.with_bort(
                              optax.sgd(0.1, momentum=0.9), **kw)),
    "sgd_0.1_bort_sgd": (lambda: optax.sgd(0.1, momentum=0.9),
                         lambda **kw: bort_jax.bort_sgd(0.1, momentum=0.9,
                                                        **kw)),
    "sgd_0.5_with_bort": (lambda: optax.sgd(0.5, momentum=0.9),
                          lambda **kw: bort_jax.with_bort(
                              optax.sgd(0.5, momentum=0.9), **kw)),
}


@functools.lru_cache(maxsize=None)
def digits():
  """The digits shuffled once: 1400 to train on, 397 to test on."""
  x, y = datasets.load_digits(return_X_y=True)
  perm = np.random.default_rng(0).permutation(len(x))
  x, y = (x[perm] / 16.0).astype(np.float32), y[perm].astype(np.int32)
  return jnp.asarray(x[:1400]), jnp.asarray(y[:1400]), x[1400:], y[1400:]


#: The initialisations: the model's, and its projection on the constraint.
STARTS = ("default", "orthogonal")


def initial_params(seed: int = 0, start: str = "default") -> dict:
  """Normal kernels scaled by 1/sqrt(fan-in), zero biases; ``"orthogonal"``
  puts the kernels on ``W Wᵀ = cI`` (c: each one's mean squared row norm)."""
  keys = jax.random.split(jax.random.key(seed), len(SIZES) - 1)
  params = {f"l{i}": {"kernel": jax.random.normal(k, (a, b)) / np.sqrt(a),
                      "bias": jnp.zeros(b)}
            for i, (k, a, b) in enumerate(zip(keys, SIZES[:-1], SIZES[1:]))}
  if start not in STARTS:
    raise ValueError(f"start must be one of {STARTS}, got {start!r}")
  if start == "orthogonal":
    params = bort_jax.project_to_constraint(params)
  return params


def forward(params: dict, x: jax.Array) -> jax.Array:
  for i in range(len(SIZES) - 1):
    x = x @ params[f"l{i}"]["kernel"] + params[f"l{i}"]["bias"]
    if i < len(SIZES) - 2:
      x = jax.nn.relu(x)
  return x


def train(tx: optax.GradientTransformation, steps: int,
          start: str = "default", seed: int = 0) -> Outcome:
  """Trains ``steps`` steps of random batches (from ``seed``) in one scan."""
  x_train, y_train, x_test, y_test = digits()
  params = initial_params(seed, start)
  batches = jnp.asarray(np.random.default_rng(seed).integers(
      0, len(x_train), (steps, BATCH)))

  def loss(p, i):
    return optax.softmax_cross_entropy_with_integer_labels(
        forward(p, x_train[i]), y_train[i]).mean()

  @jax.jit
  def run(params):
    def step(carry, i):
      p, s = carry
      updates, s = tx.update(jax.grad(loss)(p, i), s, p)
      return (optax.apply_updates(p, updates), s), None
    return jax.lax.scan(step, (params, tx.init(params)), batches)[0][0]

  params = run(params)
  accuracy = float((forward(params, x_test).argmax(-1) == y_test).mean())
  errors = bort_jax.orthogonality_error(params)
  mean = float(np.mean([e.constraint_error for e in errors.values()]))
  head = float(errors[f"l{len(SIZES) - 2}/kernel"].constraint_error)
  finite = all(bool(jnp.all(jnp.isfinite(leaf)))
               for leaf in jax.tree.leaves(params))
  return Outcome(accuracy, mean, head, finite)


def _accuracy(outcome: Outcome) -> str:
  """An accuracy cell, flagged when the run's weights are not finite."""
  return f"{100 * outcome.accuracy:.1f}" + (
      "" if outcome.finite else " (non-finite)")


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--optimizers", default=",".join(OPTIMIZERS),
                      help="comma-separated names (default: every one)")
  parser.add_argument("--steps", default="300,3000",
                      help="comma-separated step counts (default: 300,3000)")
  parser.add_argument("--starts", default="default,orthogonal",
                      help="initialisations: the model's and/or its "
                      "projection on the constraint")
  parser.add_argument("--seeds", default="0",
                      help="comma-separated seeds (initialisation and "
                      "batches; default: 0); with several, a last row per "
                      "setting gives the mean Δ and its 95%% t-interval")
  parser.add_argument("--bort-start", choices=("default", "on", "off"),
                      default="default",
                      help="the Bort optimizers' start_on_constraint: their "
                      "default, or forced on or off (off reproduces the "
                      "composition guide's table, measured before the "
                      "decoupled default started on the constraint)")
  args = parser.parse_args(argv)
  kw = ({} if args.bort_start == "default"
        else {"start_on_constraint": args.bort_start == "on"})
  names = args.optimizers.split(",")
  unknown = sorted(set(names) - set(OPTIMIZERS))
  if unknown:
    parser.error(f"unknown optimizers {unknown}; choose from "
                 f"{', '.join(OPTIMIZERS)}")
  starts = args.starts.split(",")
  if set(starts) - set(STARTS):  # a typo trained the default start
    parser.error(f"--starts takes {' and/or '.join(STARTS)}, got "
                 f"{args.starts!r}")
  try:
    steps_list = [flags.positive_int(s) for s in args.steps.split(",")]
    seeds = [flags.nonnegative_int(s) for s in args.seeds.split(",")]
  except argparse.ArgumentTypeError as e:
    parser.error(f"--steps and --seeds take integers separated by commas: "
                 f"{e}")
  if len(set(seeds)) < len(seeds):  # one run counted twice: no interval
    parser.error(f"--seeds repeats a seed: {args.seeds!r}")
  seed_column = "" if seeds == [0] else " seed |"
  print(f"| optimizer | start | steps |{seed_column} acc alone % | "
        "acc with Bort % | Δ pp | error alone | error with Bort |")
  print("|---|---|---|" + "---|" * (seed_column.count("|") + 5))
  for name in names:
    alone, bort = OPTIMIZERS[name]
    for start in starts:
      for steps in steps_list:
        deltas = []
        for seed in seeds:
          a = train(alone(), steps, start, seed)
          b = train(bort(**kw), steps, start, seed)
          deltas.append(100 * (b.accuracy - a.accuracy))
          seed_cell = f" {seed} |" if seed_column else ""
          print(f"| {name} | {start} | {steps} |{seed_cell} "
                f"{_accuracy(a)} | {_accuracy(b)} | "
                f"{deltas[-1]:+.1f} | {a.mean_error:.3f} | "
                f"{b.mean_error:.3f} |", flush=True)
        if len(seeds) > 1:
          stats = frontier_stats.t_interval(deltas)
          print(f"| {name} | {start} | {steps} | mean | | | "
                f"{text.interval(stats['mean'], stats['ci'], '+.1f')} | | |",
                flush=True)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
