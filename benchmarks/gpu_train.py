"""ResNet-18 and a small ViT, with and without Bort, inside a time budget.

Trains ``resnet18`` and ``vit`` (patch 4) with AdamW and with Bort-AdamW
(``l1-fullrow``, ``amplitude="ada"``) on the best dataset at hand: MNIST from
the local cache (``--data-dir`` or ``$BORT_JAX_DATA`` or
``~/.cache/bort_jax``), else synthetic CIFAR-shaped data (32×32×3, ten
classes of noisy smooth templates). It never downloads. It prints one table:
test accuracy, time per step and its ratio to the baseline, and the mean
orthogonality (constraint) error of the Bort kernels.

Fair and inside the budget: for each model, both optimizers are compiled and
timed on their first steps; then one step count is chosen for both so that
the model's share of ``--budget-seconds`` (compilation included) is spent;
the learning rate follows a warmup-cosine schedule over that count. The
learning rate is a hyperparameter in the optimizer state
(``optax.inject_hyperparams``), set before each step of the application's one
train step (:func:`bort_jax.experiments.steps.train_step`), so choosing the
count does not recompile.

Usage:
  python benchmarks/gpu_train.py --budget-seconds 240      # on a GPU
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
from bort_jax.experiments import steps as steps_lib

OPTIMIZERS = ("adamw", "bort-adamw")
GAMMA, MODE, AMPLITUDE = 0.1, "l1-fullrow", "ada"
WARMUP_STEPS = 100
CALIBRATION_STEPS = 8


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


def _injectable(name: str) -> optax.GradientTransformation:
  """The optimizer with its learning rate in its state (set every step)."""
  if name == "adamw":
    return optax.inject_hyperparams(optax.adamw)(
        learning_rate=0.0, weight_decay=1e-4)
  return optax.inject_hyperparams(
      bort_jax.bort_adamw, static_args=("mode", "amplitude"))(
          learning_rate=0.0, weight_decay=1e-4, gamma=GAMMA, mode=MODE,
          amplitude=AMPLITUDE)


class Run:
  """One model and optimizer: state on the device and jitted steps."""

  def __init__(self, model_name, optimizer_name, dataset, width, seed,
               batch_size):
    self.name = f"{model_name} {optimizer_name}"
    self.batch_size = batch_size
    images = dataset.train.images
    model = models_lib.make_model(
        model_name, images.shape[1:], 10, width=width,
        rngs=nnx.Rngs(seed))
    optimizer = nnx.Optimizer(model, _injectable(optimizer_name),
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
        metrics, images, labels, index)

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


def _schedule(peak: float, total: list[int]):
  """Warmup then cosine to 0 at ``total[0]`` (fixed after calibration)."""

  def schedule(step: int) -> float:
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
  peak = {"resnet18": 1e-3, "vit": 5e-4}[model_name]
  total = [args.max_steps or 10**9]
  schedule = _schedule(peak, total)
  runs, compile_s = [], {}
  rng = np.random.default_rng(args.seed)
  images, labels = device_data
  for opt in OPTIMIZERS:
    run = Run(model_name, opt, dataset, width, args.seed, args.batch_size)
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
  log(f"  {model_name}: {steps} steps each (batch {args.batch_size}, "
      f"{steps * args.batch_size / images.shape[0]:.1f} epochs)")
  for run in runs:
    while run.steps < steps:
      run.run(min(200, steps - run.steps), schedule, images, labels, rng)
  rows = []
  baseline_time = runs[0].step_time
  for opt, run in zip(OPTIMIZERS, runs):
    model = run.model()
    _, accuracy = steps_lib.evaluate(model, dataset.test.images,
                                     dataset.test.labels, batch_size=1000)
    mean = jax.jit(lambda p: bort_jax.mean_orthogonality_error(
        bort_jax.orthogonality_error(p)))(nnx.state(model, nnx.Param))
    rows.append({
        "model": model_name, "optimizer": opt, "steps": run.steps,
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
  parser.add_argument("--models", default="resnet18,vit")
  parser.add_argument("--batch-size", type=int, default=256)
  parser.add_argument("--max-steps", type=int, default=None)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default=None, help="write results as JSON")
  args = parser.parse_args(argv)
  start = time.perf_counter()
  log = lambda msg: print(msg, file=sys.stderr, flush=True)
  if args.quick:
    args.width = {"resnet18": 4, "vit": 32}
    args.batch_size = min(args.batch_size, 32)
    args.max_steps = args.max_steps or WARMUP_STEPS + 10
  else:
    args.width = {}
  name, dataset = load_data(args)
  device_data = (jax.device_put(dataset.train.images),
                 jax.device_put(dataset.train.labels))
  models = [m for m in args.models.split(",") if m]
  log(f"devices: {jax.devices()}; data: {name} "
      f"{dataset.train.images.shape}; budget {args.budget_seconds:.0f} s")
  rows = []
  for i, model_name in enumerate(models):
    remaining = args.budget_seconds - (time.perf_counter() - start)
    budget = remaining / (len(models) - i)
    log(f"[{model_name}] budget {budget:.0f} s")
    rows += bench_model(model_name, dataset, device_data, args, budget, log)
  total = time.perf_counter() - start
  print(f"\nBort on {jax.devices()[0].device_kind} ({name}, batch "
        f"{args.batch_size}, {MODE}, amplitude {AMPLITUDE}, gamma {GAMMA}); "
        f"{total:.0f} s in all:")
  print(format_table(rows))
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"data": name, "device": str(jax.devices()[0]),
                 "total_s": total, "rows": rows}, f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
