"""A whole training step (forward, backward, update): Bort vs its base optimizer.

What a user pays is the whole step, not the optimizer's part of it: when a
layer has more units than the batch has examples, the O(m²n) correction can
outweigh the O(B·m·n) forward and backward passes. For each model, this times
the application's own step (:func:`bort_jax.experiments.steps.train_step`,
the one ``bort-jax train`` runs) with ``optax.adamw`` and ``optax.sgd`` and
with their Bort versions in ``l2-full`` (``c = 1``) and ``l1-fullrow``
(``c = "ada"``) modes, on synthetic data of the model's input shape, and
prints the Bort step / base step ratios measured in one run.

Each timed call runs ``--steps`` training steps in one jitted
``jax.lax.fori_loop`` (a device-side loop, so host dispatch is not what gets
timed; unrolled on CPU, where XLA runs convolutions inside a while loop about
15 times slower than outside one); the calls of all optimizers of a model are interleaved, repeat by
repeat, so that a shared machine's drift falls on all of them alike; each
figure is the median over ``--repeats`` calls.

    python benchmarks/train_step.py                          # all models
    python benchmarks/train_step.py --models mlp,cnn --repeats 3 --steps 2
    python benchmarks/train_step.py --width resnet18=32 --json out.json
    python benchmarks/train_step.py --models mlp --optimizers adamw \
        --configs "l1-fullrow ada" --every 2,4,8 --steps 8   # amortised

``--every k,…`` adds each chosen configuration with the correction applied
as ``k·γ·Δ`` on every k-th step only (``every=k``); ``--steps`` must then be
a multiple of every k, so that each timed call holds whole cycles.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import timing  # noqa: E402

import bort_jax  # noqa: E402
from bort_jax.experiments import models as models_lib  # noqa: E402
from bort_jax.experiments import optimizers as optimizers_lib  # noqa: E402
from bort_jax.experiments import steps as steps_lib  # noqa: E402

#: model -> (input shape, default width): MNIST shapes for the MNIST models
#: of the README, CIFAR shapes for ResNet-18 and the ViT; ``simple-cnn`` is
#: the authors' MNIST SimpleCNN narrowed to half width (4 first-layer
#: channels instead of 8).
MODELS = {
    "mlp": ((28, 28, 1), 256),
    "cnn": ((28, 28, 1), None),
    "simple-cnn": ((28, 28, 1), 4),
    "resnet18": ((32, 32, 3), None),
    "vit": ((32, 32, 3), None),
}

#: The Bort configurations timed against each base optimizer.
CONFIGS = {
    "l2-full c=1": dict(mode="l2-full", amplitude=1.0),
    "l1-fullrow ada": dict(mode="l1-fullrow", amplitude="ada"),
}

BASES = ("adamw", "sgd")


def steps_fn(model_def, optimizer_def, steps: int, unroll: bool = False):
  """``steps`` training steps on one batch, in one jitted call.

  ``unroll`` writes the steps out one after the other (XLA's CPU backend runs
  convolutions inside a while loop many times slower than outside one).
  """
  def run(model_state, optimizer_state, images, labels):
    index = jax.numpy.arange(images.shape[0])

    def step(_, carry):
      return steps_lib.train_step(model_def, optimizer_def, *carry, images,
                                  labels, index)

    return jax.lax.fori_loop(
        0, steps, step, (model_state, optimizer_state,
                         steps_lib.Metrics.zeros()), unroll=unroll)
  return jax.jit(run)


def build(model_name: str, shape, width, optimizer: str, config: dict | None):
  """The model's and the optimizer's graphs and states."""
  model = models_lib.make_model(model_name, shape, 10, width=width,
                                rngs=nnx.Rngs(0))
  kwargs = {}
  if config is not None:
    kwargs = dict(config, dimension_numbers=bort_jax.flax_dimension_numbers(
        model))
  name = optimizer if config is None else f"bort-{optimizer}"
  tx = optimizers_lib.make_optimizer(
      name, optimizers_lib.default_learning_rate(name), **kwargs)
  opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
  (model_def, model_state), (opt_def, opt_state) = (
      nnx.split(model), nnx.split(opt))
  params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(
      nnx.state(model, nnx.Param)))
  return model_def, opt_def, model_state, opt_state, params


def measure(model_name: str, batch: int, steps: int, repeats: int,
            width: int | None, bases=BASES, configs=CONFIGS,
            unroll: bool = False) -> list[dict]:
  """The step times of every optimizer of one model, interleaved."""
  shape, default_width = MODELS[model_name]
  width = default_width if width is None else width
  key = jax.random.key(0)
  images = jax.random.uniform(key, (batch, *shape))
  labels = jax.random.randint(jax.random.fold_in(key, 1), (batch,), 0, 10)
  runs = {}
  for base in bases:
    for config_name, config in [(None, None), *configs.items()]:
      model_def, opt_def, m, o, params = build(model_name, shape, width, base,
                                               config)
      fn = steps_fn(model_def, opt_def, steps, unroll)
      args = (m, o, images, labels)
      start = time.perf_counter()
      out = jax.block_until_ready(fn(*args))  # compiles
      compile_s = time.perf_counter() - start
      loss = float(out[2].loss) / max(int(out[2].count), 1)
      runs[base, config_name] = dict(fn=fn, args=args, times=[],
                                     compile_s=compile_s, loss=loss)
  for _ in range(repeats):
    for run in runs.values():
      start = time.perf_counter()
      jax.block_until_ready(run["fn"](*run["args"]))
      run["times"].append((time.perf_counter() - start) / steps)
  rows = []
  for base in bases:
    base_s = statistics.median(runs[base, None]["times"])
    for config_name in configs:
      run = runs[base, config_name]
      bort_s = statistics.median(run["times"])
      rows.append(dict(
          model=model_name, width=width, params=params, batch=batch,
          optimizer=base, config=config_name, base_ms=1e3 * base_s,
          bort_ms=1e3 * bort_s, ratio=bort_s / base_s,
          added=(bort_s - base_s) / base_s,
          spread=(max(run["times"]) - min(run["times"])) / bort_s,
          finite=bool(np.isfinite(run["loss"]))))
  return rows


def print_table(rows: list[dict]) -> None:
  header = ("| model | width | params | batch | base | Bort config | base ms "
            "| Bort ms | Bort / base | added |")
  print(header)
  print("|---" * (header.count("|") - 1) + "|")
  for r in rows:
    width = "default" if r["width"] is None else r["width"]
    print(f"| {r['model']} | {width} | {r['params'] / 1e6:.2f} M | "
          f"{r['batch']} | {r['optimizer']} | {r['config']} | "
          f"{r['base_ms']:.2f} | {r['bort_ms']:.2f} | {r['ratio']:.2f} | "
          f"{r['added']:+.0%} |")


def _widths(items: list[str]) -> dict[str, int]:
  out = {}
  for item in items:
    name, _, value = item.partition("=")
    if name not in MODELS or not value.isdigit():
      raise SystemExit(f"--width takes MODEL=N with MODEL in "
                       f"{', '.join(MODELS)}; got {item!r}")
    out[name] = int(value)
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default=",".join(MODELS),
                      help="comma-separated subset of " + ", ".join(MODELS))
  parser.add_argument("--optimizers", default=",".join(BASES))
  parser.add_argument("--configs", default=",".join(CONFIGS),
                      help="comma-separated subset of " + ", ".join(CONFIGS))
  parser.add_argument("--batch", type=int, default=128,
                      help="batch size (the README's and the study's: 128)")
  parser.add_argument("--steps", type=int, default=None,
                      help="training steps per timed call (default: 20 on "
                      "GPU, 3 on CPU)")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--width", action="append", default=[],
                      metavar="MODEL=N", help="a model's width (repeatable)")
  parser.add_argument("--unroll", choices=("auto", "yes", "no"),
                      default="auto", help="unroll the device-side loop "
                      "(auto: on CPU, whose while loops slow convolutions)")
  parser.add_argument("--every", default="",
                      help="comma-separated k: also time each config with "
                      "every=k (the correction on every k-th step only)")
  parser.add_argument("--json", type=Path, default=None)
  args = parser.parse_args(argv)

  models = args.models.split(",")
  unknown = [m for m in models if m not in MODELS]
  if unknown:
    raise SystemExit(f"unknown models {unknown}; choose from "
                     f"{', '.join(MODELS)}")
  widths = _widths(args.width)
  configs = {name: CONFIGS[name] for name in args.configs.split(",")}
  everys = [int(k) for k in args.every.split(",") if k.strip()]
  configs.update({f"{name} every={k}": dict(config, every=k)
                  for name, config in list(configs.items()) for k in everys})
  gpu = jax.default_backend() != "cpu"
  steps = args.steps or (20 if gpu else 3)
  if any(steps % k for k in everys):
    raise SystemExit(f"--steps {steps} must be a multiple of every --every "
                     f"value ({args.every}), so each call holds whole cycles")
  unroll = args.unroll == "yes" or (args.unroll == "auto" and not gpu)
  print(f"device {timing.device_name()}  jax {jax.__version__}  batch "
        f"{args.batch}  {steps} step(s) per timed call, median of "
        f"{args.repeats}{', unrolled' if unroll else ''}")
  rows, skipped = [], []

  def save():  # after every model: a timeout keeps what is done
    if args.json:
      args.json.write_text(json.dumps(dict(
          device=timing.device_name(), jax=jax.__version__, steps=steps,
          repeats=args.repeats, unroll=unroll, skipped=skipped, rows=rows),
          indent=1))

  for model in models:
    if model not in models_lib.MODELS:
      print(f"(skipped {model}: not in bort_jax.experiments.models.MODELS)")
      skipped.append(model)
      continue
    start = time.perf_counter()
    rows += measure(model, args.batch, steps, args.repeats,
                    widths.get(model), args.optimizers.split(","), configs,
                    unroll)
    print(f"({model}: {time.perf_counter() - start:.0f} s)", flush=True)
    save()
  print_table(rows)
  save()


if __name__ == "__main__":
  main()
