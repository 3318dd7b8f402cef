"""The authors' SimpleCNN, ResNet-18 and a small ViT, with and without Bort.

Trains, inside a time budget, each model with its baseline and its Bort
optimizer (:data:`RECIPES`):

- ``simple-cnn`` at full width (the authors' MNIST widths 8-24-288-864-2592)
  with the authors' recipe (``bort-jax train --recipe authors-mnist``):
  SGD (lr 0.005, momentum 0.9, weight decay 0.005, constant learning rate)
  against Bort-SGD (γ 0.05, ``l1-fullrow``, c = 1) with DBort on the logits
  (λ 1e-3, β 0.1), batch 256;
- ``resnet18`` and ``vit`` (patch 4): AdamW against Bort-AdamW at the
  library's recommended decoupled setting (:data:`bort_jax.RECOMMENDED`),
  warmup-cosine learning rate;

on the best dataset at hand: MNIST from the local cache (``--data-dir`` or
``$BORT_JAX_DATA`` or ``~/.cache/bort_jax``), else synthetic CIFAR-shaped
data (32×32×3, ten classes of noisy smooth templates). It never downloads.
It prints one table: test accuracy, time per step and its ratio to the
baseline, and the mean orthogonality (constraint) error of the Bort kernels.
(The authors' reporting protocol, best test epoch against a validation
choice, over seeds, is ``examples/authors_protocol.py --width 8``.)

Fair and inside the budget: for each model, both optimizers are compiled and
timed on their first steps; then one step count is chosen for both so that
the model's share of ``--budget-seconds`` (compilation included) is spent;
the learning rate follows a warmup-cosine schedule over that count. The
learning rate is a hyperparameter in the optimizer state
(``optax.inject_hyperparams``), set before each step of the application's one
train step (:func:`bort_jax.experiments.steps.train_step`), so choosing the
count does not recompile.

Usage:
  python benchmarks/gpu_train.py --budget-seconds 540      # on a GPU, < 10 min
  python benchmarks/gpu_train.py --quick                   # CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import bort_jax
from bort_jax.experiments import data as data_lib
from bort_jax.experiments import models as models_lib
from bort_jax.experiments import optimizers as optimizers_lib
from bort_jax.experiments import recipes as recipes_lib
from bort_jax.experiments import steps as steps_lib

WARMUP_STEPS = 100
CALIBRATION_STEPS = 8
_AUTHORS = recipes_lib.recipe("authors-mnist")
_DECOUPLED = bort_jax.RECOMMENDED["decoupled"]

#: model -> its two arms, ``(name, optimizer, make_optimizer kwargs,
#: objective)``, baseline first; its peak learning rate; whether the rate is
#: constant (else warmup-cosine over the run); its batch size (``None``:
#: ``--batch-size``).
RECIPES = {
    "simple-cnn": dict(
        arms=(("sgd", "sgd", {}, steps_lib.Objective()),
              ("bort-sgd+dbort", "bort-sgd",
               dict(gamma=_AUTHORS["gamma"], mode=_AUTHORS["mode"],
                    amplitude=_AUTHORS["amplitude"]),
               steps_lib.Objective(
                   dbort_weight=_AUTHORS["dbort_weight"],
                   dbort_power=_AUTHORS["dbort_power"],
                   dbort_on=_AUTHORS["dbort_on"]))),
        common=dict(weight_decay=_AUTHORS["weight_decay"],
                    momentum=_AUTHORS["momentum"]),
        peak=_AUTHORS["learning_rate"], constant=True,
        batch_size=_AUTHORS["batch_size"]),
    **{name: dict(
        arms=(("adamw", "adamw", {}, steps_lib.Objective()),
              ("bort-adamw", "bort-adamw",
               dict(gamma=_DECOUPLED.gamma, mode=_DECOUPLED.mode,
                    amplitude=_DECOUPLED.amplitude), steps_lib.Objective())),
        common=dict(weight_decay=1e-4), peak=peak, constant=False,
        batch_size=None)
       for name, peak in (("resnet18", 1e-3), ("vit", 5e-4))},
}


def synthetic_cifar(n_train: int, n_test: int, size: int = 32, seed: int = 0):
  """CIFAR-shaped data: ten smooth random templates plus noise, in [0, 1]."""
  rng = np.random.default_rng(seed)
  coarse = rng.normal(size=(10, 4, 4, 3))
  templates = np.kron(coarse, np.ones((size // 4, size // 4, 1)))

  def split(n):
    labels = rng.integers(0, 10, n).astype(np.int32)
    images = templates[labels] + 1.5 * rng.normal(size=(n, size, size, 3))
    images = 1 / (1 + np.exp(-images))
    return data_lib.Split(images.astype(np.float32), labels)

  return data_lib.Dataset(split(n_train), split(n_test))


def load_data(args) -> tuple[str, data_lib.Dataset]:
  if args.quick:
    return "synthetic-16px", synthetic_cifar(512, 256, size=16)
  for name in ("mnist",) if args.data == "auto" else (args.data,):
    if name == "synthetic":
      break
    try:
      return name, data_lib.load_splits(name, cache_dir=args.data_dir,
                                        download=False)
    except data_lib.DatasetUnavailableError as e:
      print(f"{name} is not in the local cache ({e.args[0].splitlines()[0]})"
            "; using synthetic CIFAR-shaped data.", file=sys.stderr)
  return "synthetic-cifar", synthetic_cifar(20_000, 5_000)


def _injectable(optimizer: str, model: nnx.Module, **kwargs
                ) -> optax.GradientTransformation:
  """The optimizer by its command-line name, with its learning rate in its
  state (set before every step, so that choosing the step count after the
  calibration does not recompile)."""
  if optimizers_lib.is_bort(optimizer):
    kwargs["dimension_numbers"] = bort_jax.flax_dimension_numbers(model)

  def make(learning_rate):
    return optimizers_lib.make_optimizer(optimizer, learning_rate, **kwargs)

  return optax.inject_hyperparams(make)(learning_rate=0.0)


class Run:
  """One model and optimizer: state on the device and jitted steps."""

  def __init__(self, model_name, arm, dataset, width, seed, batch_size,
               common):
    label, optimizer_name, kwargs, self.objective = arm
    self.name = f"{model_name} {label}"
    self.label = label
    self.batch_size = batch_size
    images = dataset.train.images
    model = models_lib.make_model(
        model_name, images.shape[1:], 10, width=width,
        rngs=nnx.Rngs(seed))
    optimizer = nnx.Optimizer(
        model, _injectable(optimizer_name, model, **common, **kwargs),
        wrt=nnx.Param)
    self._model_def, model_state = nnx.split(model)
    self._optimizer_def, optimizer_state = nnx.split(optimizer)
    self.state = (model_state, optimizer_state, steps_lib.Metrics.zeros())
    self.steps = 0
    self.step_times: list[float] = []

  def _step(self, lr, images, labels, index):
    model_state, optimizer_state, metrics = self.state
    optimizer_state["opt_state"]["hyperparams"]["learning_rate"].value = (
        jnp.float32(lr))
    self.state = steps_lib.train_step(
        self._model_def, self._optimizer_def, model_state, optimizer_state,
        metrics, images, labels, index, self.objective)

  def compile(self, images, labels) -> float:
    """Compiles the step (timed) by running it once on a copy of the state."""
    start = time.perf_counter()
    index = jnp.zeros(self.batch_size, jnp.int32)
    saved = jax.tree.map(jnp.copy, self.state)
    self._step(0.0, images, labels, index)
    jax.block_until_ready(self.state)
    self.state = saved
    return time.perf_counter() - start

  def run(self, steps, schedule, images, labels, rng) -> None:
    """Runs ``steps`` steps, timing them (synchronised at the end)."""
    n = images.shape[0]
    start = time.perf_counter()
    for _ in range(steps):
      index = rng.integers(0, n, self.batch_size).astype(np.int32)
      self._step(schedule(self.steps), images, labels, index)
      self.steps += 1
    if steps:
      jax.block_until_ready(self.state[2])
      self.step_times.append((time.perf_counter() - start) / steps)

  @property
  def step_time(self) -> float:
    return float(np.median(self.step_times))

  def model(self):
    return nnx.merge(self._model_def, self.state[0])


def _schedule(peak: float, total: list[int], constant: bool = False):
  """Warmup then cosine to 0 at ``total[0]`` (fixed after calibration), or
  ``peak`` throughout (``constant``, as the authors' MNIST script)."""

  def schedule(step: int) -> float:
    if constant:
      return peak
    if step < WARMUP_STEPS:
      return peak * (step + 1) / WARMUP_STEPS
    span = max(total[0] - WARMUP_STEPS, 1)
    progress = min((step - WARMUP_STEPS) / span, 1.0)
    return peak * 0.5 * (1 + math.cos(math.pi * progress))

  return schedule


def bench_model(model_name, dataset, device_data, args, budget, log):
  """Trains both optimizers on one model within ``budget`` seconds."""
  started = time.perf_counter()
  width = args.width.get(model_name)
  recipe = RECIPES[model_name]
  batch_size = (args.batch_size if args.quick or not recipe["batch_size"]
                else recipe["batch_size"])
  total = [args.max_steps or 10**9]
  schedule = _schedule(recipe["peak"], total, recipe["constant"])
  runs, compile_s = [], {}
  rng = np.random.default_rng(args.seed)
  images, labels = device_data
  for arm in recipe["arms"]:
    run = Run(model_name, arm, dataset, width, args.seed, batch_size,
              recipe["common"])
    opt = run.label
    compile_s[opt] = run.compile(images, labels)
    run.run(1, schedule, images, labels, rng)  # warm
    run.step_times.clear()
    run.run(CALIBRATION_STEPS, schedule, images, labels, rng)
    log(f"  {run.name}: compiled in {compile_s[opt]:.1f} s, "
        f"{1000 * run.step_time:.2f} ms/step")
    runs.append(run)
  spent = time.perf_counter() - started
  eval_reserve = 0.1 * budget
  per_pair = sum(r.step_time for r in runs)
  steps = int((budget - spent - eval_reserve) / per_pair)
  steps = max(steps + runs[0].steps, WARMUP_STEPS + 10)
  if args.max_steps:
    steps = min(steps, args.max_steps)
  total[0] = steps
  log(f"  {model_name}: {steps} steps each (batch {batch_size}, "
      f"{steps * batch_size / images.shape[0]:.1f} epochs)")
  for run in runs:
    while run.steps < steps:
      run.run(min(200, steps - run.steps), schedule, images, labels, rng)
  rows = []
  baseline_time = runs[0].step_time
  for run in runs:
    opt = run.label
    model = run.model()
    _, accuracy = steps_lib.evaluate(model, dataset.test.images,
                                     dataset.test.labels, batch_size=1000)
    mean = jax.jit(lambda p: bort_jax.mean_orthogonality_error(
        bort_jax.orthogonality_error(p)))(nnx.state(model, nnx.Param))
    rows.append({
        "model": model_name, "optimizer": opt, "steps": run.steps,
        "batch_size": batch_size,
        "epochs": run.steps * batch_size / images.shape[0],
        "test_accuracy": accuracy,
        "step_time_ms": 1000 * run.step_time,
        "step_time_ratio": run.step_time / baseline_time,
        "constraint_error": float(mean.constraint_error),
        "max_cosine": float(mean.max_cosine),
        "compile_s": compile_s[opt],
    })
  log(f"  {model_name}: done in {time.perf_counter() - started:.0f} s")
  return rows


def format_table(rows) -> str:
  header = ("model", "optimizer", "steps", "test acc", "ms/step",
            "time ratio", "constraint err", "max |cos|", "compile s")
  lines = [(r["model"], r["optimizer"], str(r["steps"]),
            f"{100 * r['test_accuracy']:.2f}%", f"{r['step_time_ms']:.2f}",
            f"{r['step_time_ratio']:.2f}x", f"{r['constraint_error']:.4f}",
            f"{r['max_cosine']:.4f}", f"{r['compile_s']:.1f}") for r in rows]
  widths = [max(len(h), *(len(l[i]) for l in lines))
            for i, h in enumerate(header)]
  fmt = lambda cells: "  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                                for i, (c, w) in enumerate(zip(cells, widths)))
  return "\n".join([fmt(header), "-" * len(fmt(header)), *map(fmt, lines)])


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--budget-seconds", type=float, default=240.0,
                      help="total time for everything (default 240)")
  parser.add_argument("--quick", action="store_true",
                      help="tiny models and synthetic 16×16 data (CPU check)")
  parser.add_argument("--data", choices=("auto", "mnist", "fashion_mnist",
                                         "cifar10", "synthetic"),
                      default="auto", help="dataset (auto: MNIST if cached)")
  parser.add_argument("--data-dir", default=None,
                      help="the bort_jax data cache to read")
  parser.add_argument("--models", default="simple-cnn,resnet18,vit",
                      help="comma-separated subset of " + ", ".join(RECIPES))
  parser.add_argument("--batch-size", type=int, default=256,
                      help="batch size of the models whose recipe sets none "
                      "(the SimpleCNN's is the authors' 256)")
  parser.add_argument("--max-steps", type=int, default=None)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default=None, help="write results as JSON")
  args = parser.parse_args(argv)
  start = time.perf_counter()
  log = lambda msg: print(msg, file=sys.stderr, flush=True)
  if args.quick:
    args.width = {"resnet18": 4, "vit": 32, "simple-cnn": 2}
    args.batch_size = min(args.batch_size, 32)
    args.max_steps = args.max_steps or WARMUP_STEPS + 10
  else:
    args.width = {}
  name, dataset = load_data(args)
  device_data = (jax.device_put(dataset.train.images),
                 jax.device_put(dataset.train.labels))
  models = [m for m in args.models.split(",") if m]
  unknown = [m for m in models if m not in RECIPES]
  if unknown:
    parser.error(f"unknown models {unknown}; choose from {', '.join(RECIPES)}")
  log(f"devices: {jax.devices()}; data: {name} "
      f"{dataset.train.images.shape}; budget {args.budget_seconds:.0f} s")
  rows = []
  for i, model_name in enumerate(models):
    remaining = args.budget_seconds - (time.perf_counter() - start)
    budget = remaining / (len(models) - i)
    log(f"[{model_name}] budget {budget:.0f} s")
    rows += bench_model(model_name, dataset, device_data, args, budget, log)
  total = time.perf_counter() - start
  print(f"\nBort on {jax.devices()[0].device_kind} ({name}; simple-cnn: the "
        f"authors' recipe, Bort-SGD+DBort gamma {_AUTHORS['gamma']} vs SGD; "
        f"others: Bort-AdamW {_DECOUPLED.mode} {_DECOUPLED.amplitude} gamma "
        f"{_DECOUPLED.gamma} vs AdamW); {total:.0f} s in all:")
  print(format_table(rows))
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"data": name, "device": str(jax.devices()[0]),
                 "total_s": total, "rows": rows}, f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
