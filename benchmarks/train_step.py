"""A whole training step (forward, backward, update): Bort vs its base optimizer.

What a user pays is the whole step, not the optimizer's part of it: when a
layer has more units than the batch has examples, the O(m²n) correction can
outweigh the O(B·m·n) forward and backward passes. For each model, this times
the application's own step (:func:`bort_jax.experiments.steps.train_step`,
the one ``bort-jax train`` runs) with ``optax.adamw`` and ``optax.sgd`` and
with their Bort versions in ``l2-full`` (``c = 1``) and ``l1-fullrow``
(``c = "ada"``) modes, on synthetic data of the model's input shape, and
prints the Bort step / base step ratios measured in one run, beside the
arithmetic floor of each: the Bort matrices' product cost over the Bort
layers' forward and backward cost, both counted from the layer shapes
(:func:`arithmetic_floor`).

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

``recommended`` is the aliases' own default setting, read when the script
runs from :data:`bort_jax.RECOMMENDED` and the literals of
:func:`bort_jax.bort_adamw`'s and :func:`bort_jax.bort_sgd`'s signatures
(:func:`recommended_setting`). ``--recommended`` times it beside the
amortised candidates (``l2-full`` and ``huber-fullrow`` "ada", every step
and ``every=4``) on all six models in one run:

    python benchmarks/train_step.py --recommended --optimizers adamw
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import math
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
from bort_jax.experiments import flags  # noqa: E402
from bort_jax.experiments import models as models_lib  # noqa: E402
from bort_jax.experiments import optimizers as optimizers_lib  # noqa: E402
from bort_jax.experiments import steps as steps_lib  # noqa: E402
import param_sets  # noqa: E402

#: model -> (input shape, default width): MNIST shapes for the MNIST models
#: of the README, CIFAR shapes for ResNet-18 and the ViT; ``simple-cnn`` is
#: the authors' MNIST SimpleCNN narrowed to half width (4 first-layer
#: channels instead of 8); ``mlp-784`` is the square MLP 784-784-784-10.
MODELS = {
    "mlp": ((28, 28, 1), 256),
    "mlp-784": ((28, 28, 1), 784),
    "cnn": ((28, 28, 1), None),
    "simple-cnn": ((28, 28, 1), 4),
    "resnet18": ((32, 32, 3), None),
    "vit": ((32, 32, 3), None),
}

#: Benchmark names that are another width of an application model.
ARCHITECTURES = {"mlp-784": "mlp"}

#: The name of the aliases' default setting among the configurations.
RECOMMENDED = "recommended"

#: The Bort configurations timed against each base optimizer;
#: ``recommended`` is resolved per base (:func:`recommended_setting`).
CONFIGS = {
    RECOMMENDED: None,
    "l2-full c=1": dict(mode="l2-full", amplitude=1.0),
    "l1-fullrow ada": dict(mode="l1-fullrow", amplitude="ada"),
    "huber-fullrow ada": dict(mode="huber-fullrow", amplitude="ada"),
    "huber-fullrow ada step": dict(mode="huber-fullrow", amplitude="ada",
                                   tau="step"),
}

#: What ``--recommended`` times: the default setting and the amortised
#: candidates, each every step and with ``every=4``.
RECOMMENDED_RUN = dict(configs=(RECOMMENDED, "l2-full c=1",
                                "huber-fullrow ada"), every=(4,))

#: The layers whose kernels the forward and backward cost is counted for.
KERNEL_LAYERS = (nnx.Linear, nnx.Conv, nnx.LinearGeneral)

#: base optimizer -> (its Bort alias, the alias's placement).
ALIASES = {"adamw": (bort_jax.bort_adamw, "decoupled"),
           "sgd": (bort_jax.bort_sgd, "coupled")}


def recommended_setting(base: str) -> dict:
  """The Bort setting a base's alias uses when given none, read now.

  Each of ``gamma``, ``mode``, ``amplitude``, ``every``, ``tau`` and
  ``start_on_constraint`` is the
  alias's signature literal, or, where the signature says ``None``, the
  placement's :data:`bort_jax.RECOMMENDED` field of that name (absent
  fields are left out, and so is ``every=None``).

  Args:
    base: ``"adamw"`` (:func:`bort_jax.bort_adamw`, decoupled) or ``"sgd"``
      (:func:`bort_jax.bort_sgd`, coupled).

  Returns:
    A dict of the setting's keyword arguments.

  Examples:
    >>> setting = recommended_setting("adamw")
    >>> setting["mode"] == bort_jax.RECOMMENDED["decoupled"].mode
    True
  """
  alias, placement = ALIASES[base]
  parameters = inspect.signature(alias).parameters
  record = bort_jax.RECOMMENDED[placement]
  setting = {}
  for field in ("gamma", "mode", "amplitude", "every", "tau",
                "start_on_constraint"):
    value = None
    if field in parameters:
      value = parameters[field].default
      if value is inspect.Parameter.empty:
        value = None
    if value is None:
      value = getattr(record, field, None)
    if value is not None:
      setting[field] = value
  return setting


def describe(setting: dict) -> str:
  """``mode amplitude γ=… [every=k] [tau=…] [start]``, the table's label."""
  c = setting.get("amplitude", "")
  text = f"{setting.get('mode', '?')} {c if isinstance(c, str) else f'c={c:g}'}"
  if "gamma" in setting:
    text += f" γ={setting['gamma']:g}"
  if setting.get("every", 1) != 1:
    text += f" every={setting['every']}"
    if setting.get("lagged"):
      text += " lagged"
  if "tau" in setting and str(setting.get("mode", "")).startswith("huber"):
    tau = setting["tau"]
    text += f" tau={tau}" if isinstance(tau, str) else f" tau={tau:g}"
  if setting.get("start_on_constraint"):
    text += " start"
  return text


def resolve(config_name: str, configs: dict, base: str) -> dict:
  """A configuration's Bort keyword arguments for one base optimizer."""
  config = configs[config_name]
  if config is None or config.get(RECOMMENDED):
    setting = recommended_setting(base)
    for field in ("every", "lagged", "start_on_constraint"):
      if config is not None and field in config:
        setting[field] = config[field]
    return setting
  return dict(config)


@contextlib.contextmanager
def _recording_outputs(calls: list, owner_paths: dict):
  """Records (layer path, output shape) of every kernel layer's call."""
  originals = {cls: cls.__call__ for cls in KERNEL_LAYERS}

  def wrap(cls):
    original = originals[cls]

    def call(self, *args, **kwargs):
      out = original(self, *args, **kwargs)
      if id(self) in owner_paths:
        calls.append((owner_paths[id(self)], tuple(out.shape)))
      return out
    return call

  try:
    for cls in KERNEL_LAYERS:
      cls.__call__ = wrap(cls)
    yield
  finally:
    for cls, original in originals.items():
      cls.__call__ = original


def _path_key(path) -> tuple[str, ...]:
  """A tree path (jax keys or plain names) as a tuple of strings; an NNX
  Variable's trailing ``.value`` is not part of the parameter's name."""
  if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and (
      path[-1].name == "value"):
    path = path[:-1]
  return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
               for k in path)


def layer_costs(model: nnx.Module, input_shape) -> list[dict]:
  """Each kernel layer's shape, Bort view and uses per example.

  The model runs once under :func:`jax.eval_shape` on one example, each
  ``nnx.Linear``/``nnx.Conv``/``nnx.LinearGeneral`` call recording its
  output, so ``positions`` is how many times per example the kernel is
  applied (1 for a dense layer on a vector, ``H_out·W_out`` for a conv, the
  tokens for a token-wise layer).

  Returns:
    One dict per kernel: ``path``, ``m`` (units), ``n`` (fan-in),
    ``matrices`` (stacked batch), ``positions`` and ``bort`` (whether the
    default Flax selection makes it a Bort matrix).
  """
  graphdef, state = nnx.split(model)
  params = nnx.state(model, nnx.Param)
  dims = bort_jax.flax_dimension_numbers(model)(params)
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  chosen = jax.tree_util.tree_structure(params).flatten_up_to(dims)
  kernels = {}
  for (path, leaf), dims_i in zip(leaves, chosen):
    names = _path_key(path)
    if not names or names[-1] != "kernel":
      continue
    kernels[names[:-1]] = (leaf.shape, dims_i)
  calls = []

  def forward(state, x):
    merged = nnx.merge(graphdef, state)
    owners = {id(module): _path_key(path)
              for path, module in nnx.iter_modules(merged)}
    with _recording_outputs(calls, owners):
      return merged(x)

  jax.eval_shape(forward, state,
                 jax.ShapeDtypeStruct((1, *input_shape), jax.numpy.float32))
  rows = []
  for owner, (shape, dims_i) in kernels.items():
    if dims_i is not None:
      matrices, m, n = param_sets.matrix_shape(shape, dims_i)
    else:  # not Bort: a plain kernel, output features last
      matrices, m, n = 1, shape[-1], math.prod(shape[:-1])
    outputs = sum(math.prod(out) for path, out in calls if path == owner)
    rows.append(dict(path="/".join(owner), m=m, n=n, matrices=matrices,
                     positions=outputs // max(matrices * m, 1),
                     bort=dims_i is not None))
  return rows


def arithmetic_floor(costs: list[dict], batch: int, mode: str,
                     every: int = 1) -> dict:
  """The correction's multiply-adds per step over the forward and backward's.

  A Bort matrix with ``m`` units and fan-in ``n`` costs
  :data:`param_sets.PRODUCT_MACS` (``2·min(m, n)·m·n`` for the full row modes,
  ``2·m²·n`` when ``m ≤ n``) every ``every`` steps; a kernel applied
  at ``P`` positions per example costs ``3·B·P·m·n`` in the forward and
  backward passes (the forward product and the two of the backward). Their
  ratio is the least time the correction adds to a step whose time is its
  matrix products: ``2m/(3B)`` for a square dense layer in l1-fullrow.

  Args:
    costs: :func:`layer_costs`.
    batch: the batch size ``B``.
    mode: the Bort mode.
    every: the correction's period.

  Returns:
    ``dict(bort_macs, step_macs, added)``, ``added`` their ratio.

  Examples:
    >>> square = [dict(m=784, n=784, matrices=1, positions=1, bort=True)]
    >>> round(arithmetic_floor(square, 128, "l1-fullrow")["added"], 3)
    4.083
    >>> round(arithmetic_floor(square, 128, "l1-fullrow", every=4)["added"], 3)
    1.021
  """
  product = param_sets.PRODUCT_MACS.get(mode, lambda m, n: 0)
  bort = sum(r["matrices"] * product(r["m"], r["n"]) for r in costs
             if r["bort"]) / every
  step = sum(3 * batch * r["positions"] * r["matrices"] * r["m"] * r["n"]
             for r in costs)
  return dict(bort_macs=bort, step_macs=step,
              added=bort / step if step else math.nan)

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
  model = models_lib.make_model(ARCHITECTURES.get(model_name, model_name),
                                shape, 10, width=width, rngs=nnx.Rngs(0))
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
  """The step times of every optimizer of one model, interleaved, and the
  arithmetic floor of each Bort configuration."""
  shape, default_width = MODELS[model_name]
  width = default_width if width is None else width
  costs = layer_costs(models_lib.make_model(
      ARCHITECTURES.get(model_name, model_name), shape, 10, width=width,
      rngs=nnx.Rngs(0)), shape)
  key = jax.random.key(0)
  images = jax.random.uniform(key, (batch, *shape))
  labels = jax.random.randint(jax.random.fold_in(key, 1), (batch,), 0, 10)
  runs = {}
  for base in bases:
    for config_name in [None, *configs]:
      setting = None if config_name is None else resolve(config_name,
                                                         configs, base)
      model_def, opt_def, m, o, params = build(model_name, shape, width, base,
                                               setting)
      fn = steps_fn(model_def, opt_def, steps, unroll)
      args = (m, o, images, labels)
      start = time.perf_counter()
      out = jax.block_until_ready(fn(*args))  # compiles
      compile_s = time.perf_counter() - start
      loss = float(out[2].loss) / max(int(out[2].count), 1)
      # Timed from the state after those steps: a multiple of every k, so
      # each call holds whole cycles, and past a one-time first step
      # (start_on_constraint's projection), which is no steady-state cost.
      args = (out[0], out[1], images, labels)
      runs[base, config_name] = dict(fn=fn, args=args, times=[],
                                     compile_s=compile_s, loss=loss,
                                     setting=setting)
  for _ in range(repeats):
    for run in runs.values():
      start = time.perf_counter()
      jax.block_until_ready(run["fn"](*run["args"]))
      run["times"].append((time.perf_counter() - start) / steps)
  rows = []
  for base in bases:
    base_times = runs[base, None]["times"]
    base_s = statistics.median(base_times)
    for config_name in configs:
      run = runs[base, config_name]
      setting = run["setting"]
      floor = arithmetic_floor(costs, batch, setting["mode"],
                               setting.get("every") or 1)
      bort_s = statistics.median(run["times"])
      label = config_name
      if config_name.startswith(RECOMMENDED):
        label = f"{config_name} = {describe(setting)}"
      rows.append(dict(
          model=model_name, width=width, params=params, batch=batch,
          optimizer=base, config=label, setting=_jsonable(setting),
          base_ms=1e3 * base_s, bort_ms=1e3 * bort_s, ratio=bort_s / base_s,
          added=(bort_s - base_s) / base_s,
          # Repeat by repeat, so that drift between repeats cancels.
          paired_ratio=statistics.median(
              b / a for a, b in zip(base_times, run["times"])),
          spread=(max(run["times"]) - min(run["times"])) / bort_s,
          floor_added=floor["added"], bort_gmacs=floor["bort_macs"] / 1e9,
          step_gmacs=floor["step_macs"] / 1e9,
          finite=bool(np.isfinite(run["loss"]))))
  return rows


def _jsonable(setting: dict) -> dict:
  return {k: v if isinstance(v, (int, float, str)) else repr(v)
          for k, v in setting.items()}


def print_table(rows: list[dict]) -> None:
  header = ("| model | width | params | batch | base | Bort config | base ms "
            "| Bort ms | Bort / base | added | floor added |")
  print(header)
  print("|---" * (header.count("|") - 1) + "|")
  for r in rows:
    width = "default" if r["width"] is None else r["width"]
    print(f"| {r['model']} | {width} | {r['params'] / 1e6:.2f} M | "
          f"{r['batch']} | {r['optimizer']} | {r['config']} | "
          f"{r['base_ms']:.2f} | {r['bort_ms']:.2f} | {r['ratio']:.2f} | "
          f"{r['added']:+.0%} | {r['floor_added']:+.0%} |")
  print("(floor added: the Bort matrices' product multiply-adds per step over "
        "the kernels' forward and backward multiply-adds, 3·B·P·m·n; "
        "biases, norms, attention scores and the optimizer are not counted)")


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
                      help="comma-separated subset of " + ", ".join(CONFIGS)
                      + f" ({RECOMMENDED!r}: the aliases' default setting)")
  parser.add_argument("--recommended", action="store_true",
                      help="the default setting beside the amortised "
                      "candidates: --configs "
                      f"{','.join(RECOMMENDED_RUN['configs'])!r} --every "
                      f"{','.join(map(str, RECOMMENDED_RUN['every']))} "
                      "(unless given), on every model")
  parser.add_argument("--batch", type=flags.positive_int, default=128,
                      help="batch size (the README's and the study's: 128)")
  parser.add_argument("--steps", type=flags.positive_int, default=None,
                      help="training steps per timed call (default: 20 on "
                      "GPU; on CPU the least multiple of 3 and of every "
                      "--every value)")
  parser.add_argument("--repeats", type=flags.positive_int, default=5)
  parser.add_argument("--width", action="append", default=[],
                      metavar="MODEL=N", help="a model's width (repeatable)")
  parser.add_argument("--unroll", choices=("auto", "yes", "no"),
                      default="auto", help="unroll the device-side loop "
                      "(auto: on CPU, whose while loops slow convolutions)")
  parser.add_argument("--every", default=None,
                      help="comma-separated k: also time each config with "
                      "every=k (the correction on every k-th step only)")
  parser.add_argument("--lagged", action="store_true",
                      help="time each every=k config lagged as well (Delta "
                      "every k steps, gamma*Delta every step)")
  parser.add_argument("--start-on-constraint", action="store_true",
                      help="time each Bort config also with "
                      "start_on_constraint=True, in the same run (its first "
                      "step, an SVD per kernel, is outside the timed steady "
                      "state: the first call is a warm-up)")
  parser.add_argument("--json", type=Path, default=None)
  args = parser.parse_args(argv)

  models = args.models.split(",")
  unknown = [m for m in models if m not in MODELS]
  if unknown:
    raise SystemExit(f"unknown models {unknown}; choose from "
                     f"{', '.join(MODELS)}")
  widths = _widths(args.width)
  names = args.configs.split(",")
  every_text = args.every or ""
  if args.recommended:
    if args.configs == parser.get_default("configs"):
      names = list(RECOMMENDED_RUN["configs"])
    if args.every is None:
      every_text = ",".join(map(str, RECOMMENDED_RUN["every"]))
  unknown = [name for name in names if name not in CONFIGS]
  if unknown:
    raise SystemExit(f"unknown --configs {unknown}; choose from "
                     f"{', '.join(CONFIGS)}")
  configs = {name: CONFIGS[name] for name in names}
  bases = args.optimizers.split(",")
  if RECOMMENDED in configs and any(b not in ALIASES for b in bases):
    raise SystemExit(f"--configs {RECOMMENDED} needs --optimizers from "
                     f"{', '.join(ALIASES)} (whose aliases define it); got "
                     f"{args.optimizers!r}")
  try:
    everys = [int(k) for k in every_text.split(",") if k.strip()]
  except ValueError:
    everys = [0]
  if any(k < 1 for k in everys):
    raise SystemExit(f"--every takes positive integers k,…; got "
                     f"{every_text!r}")
  styles = {"": {}, " lagged": {"lagged": True}} if args.lagged else {"": {}}
  configs.update({f"{name} every={k}{style}": dict(
      config or {RECOMMENDED: True}, every=k, **extra)
                  for name, config in list(configs.items()) for k in everys
                  for style, extra in styles.items()})
  if args.start_on_constraint:  # each config without and with the start
    configs.update({f"{name} start": dict(config or {RECOMMENDED: True},
                                          start_on_constraint=True)
                    for name, config in list(configs.items())})
  gpu = jax.default_backend() != "cpu"
  steps = args.steps or (20 if gpu else math.lcm(3, *everys))
  # A recommended every=k of its own must fit whole cycles too.
  periods = everys + [recommended_setting(b).get("every") or 1
                      for b in bases if RECOMMENDED in configs]
  if any(steps % k for k in periods):
    raise SystemExit(f"--steps {steps} must be a multiple of every --every "
                     f"value and of the recommended every "
                     f"({', '.join(map(str, sorted(set(periods))))}), so each "
                     "call holds whole cycles")
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
    if ARCHITECTURES.get(model, model) not in models_lib.MODELS:
      print(f"(skipped {model}: not in bort_jax.experiments.models.MODELS)")
      skipped.append(model)
      continue
    start = time.perf_counter()
    rows += measure(model, args.batch, steps, args.repeats,
                    widths.get(model), bases, configs,
                    unroll)
    print(f"({model}: {time.perf_counter() - start:.0f} s)", flush=True)
    save()
  print_table(rows)
  save()


if __name__ == "__main__":
  main()
