"""``bort-jax demo``: AdamW against Bort-AdamW, a table, figures, results.

Trains an AdamW baseline and Bort-AdamW (the recommended decoupled setting,
:data:`bort_jax.RECOMMENDED`) on MNIST with the invertible MLP, whose first
layer is square (784 units for 784 pixels) so that an orthogonal layer is
inverted exactly by its transpose, falling back to scikit-learn's bundled
digits when MNIST cannot be had. Both runs start from the same orthogonal
weights (``init="orthogonal"``: the kernels put on ``W Wᵀ = cI`` by
:func:`bort_jax.project_to_constraint`), so that Bort is constrained from the
first step and the comparison shows what each optimizer does to that start.
It prints a comparison table (accuracy, the constraint error at step 0 and
at the end, the error of backtracking the first hidden layer to the input,
time) and writes ``results.json`` and three figures. Everything is written
through the one output-folder guard (:mod:`bort_jax.experiments.workdir`).
A run stopped by a signal exits with 130 (SIGINT) or 143 (SIGTERM), as
``bort-jax train`` does.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from typing import Any

import bort_jax
from bort_jax.experiments import flags
from bort_jax.experiments import text

DESCRIPTION = (
    "Train an AdamW baseline and Bort-AdamW on MNIST (or scikit-learn's "
    "digits when MNIST is unavailable) from the same orthogonal start, print "
    "a comparison table and write figures and results.json.")

#: What the demo writes in its folder (``--overwrite`` replaces only these).
DEMO_FILES = ("baseline", "bort", "results.json", "gram.png", "accuracy.png",
              "reconstructions.png")
_NAMES = {"baseline": "AdamW", "bort": "Bort-AdamW"}

#: The datasets the demo takes, the first its default.
DEMO_DATA = ("mnist", "fashion_mnist", "digits")
#: Epochs per MNIST/Fashion-MNIST run: at 3 epochs Bort-AdamW is 1.7 pp
#: below AdamW, at 10 within 1 pp (README's demo table; `bort-jax demo
#: --epochs 3`, 2026-12-07), and both runs take about 6.5 minutes on a
#: 2-core CPU.
DEMO_EPOCHS = 10
#: Epochs per digits run (1347 images: a few steps per epoch).
DIGITS_EPOCHS = 30
#: Epochs per ``--quick`` run: MNIST/Fashion-MNIST (on 2048 images), digits.
QUICK_EPOCHS = 1
QUICK_DIGITS_EPOCHS = 3
#: Both runs' initialisation: the same orthogonal start (see the module
#: docstring).
DEMO_INIT = "orthogonal"


def default_epochs(data: str, quick: bool) -> int:
  """The epochs per run when ``--epochs`` is not given.

  Examples:
    >>> from bort_jax.experiments.demo import default_epochs
    >>> default_epochs("mnist", False), default_epochs("digits", True)
    (10, 3)
  """
  if data == "digits":
    return QUICK_DIGITS_EPOCHS if quick else DIGITS_EPOCHS
  return QUICK_EPOCHS if quick else DEMO_EPOCHS


def add_arguments(p: argparse.ArgumentParser) -> None:
  """The demo's flags; ``--data``, ``--epochs``, ``--gamma`` and
  ``--seed`` are the training config's (:func:`flags.add_config_flag`),
  with the demo's defaults."""
  p.add_argument("--out", default="bort-demo",
                 help="output folder (default: bort-demo)")
  p.add_argument("--quick", action="store_true",
                 help="a tiny run (seconds) to check the installation")
  flags.add_config_flag(p, "data", choices=DEMO_DATA, default=DEMO_DATA[0],
                        help=f"dataset (default: {DEMO_DATA[0]})")
  flags.add_config_flag(
      p, "epochs", help=f"epochs per run (default: {DEMO_EPOCHS}; digits "
      f"{DIGITS_EPOCHS}; with --quick {QUICK_EPOCHS}, digits "
      f"{QUICK_DIGITS_EPOCHS})")
  recommended = bort_jax.RECOMMENDED["decoupled"].gamma
  flags.add_config_flag(p, "gamma", help="Bort strength (default: the "
                        f"recommended {recommended})")
  flags.add_config_flag(p, "seed", default=0)
  p.add_argument("--overwrite", action="store_true",
                 help="replace the files of an earlier demo in --out")


def configs(data: str, quick: bool, epochs: int | None, gamma: float | None,
            seed: int):
  """The baseline's and Bort's :class:`TrainConfig` (Bort: its defaults)."""
  from bort_jax.experiments.config import TrainConfig
  # The first layer is square (one unit per input pixel), so that it can be
  # orthogonal and exactly inverted by its transpose; the learning rate is
  # each optimizer's default.
  if epochs is None:  # 0 is the config's to refuse, not the default's
    epochs = default_epochs(data, quick)
  if data == "digits":
    common = dict(width=64, batch_size=64, epochs=epochs, warmup=1.0)
  else:
    common = dict(width=784, batch_size=128, epochs=epochs, warmup=0.2)
    if quick:
      common.update(width=64, train_limit=2048)
  # The same seed and orthogonal init: both runs start from one set of
  # weights ("ada", the init's own scale, as Bort's default amplitude).
  common.update(data=data, model="invertible-mlp", seed=seed, init=DEMO_INIT)
  baseline = TrainConfig(optimizer="adamw", **common)
  bort = TrainConfig(optimizer="bort-adamw", **common,
                     **({} if gamma is None else {"gamma": gamma}))
  return baseline, bort


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


def table(rows: list[dict[str, Any]]) -> str:
  """The comparison table printed at the end."""
  header = ("run", "test acc", "constraint err step 0", "constraint err end",
            "max |cos|", "recon MSE", "PSNR dB", "ms/step", "train s")
  lines = [(r["name"], text.number(100 * r["test_accuracy"], ".2f") + "%",
            text.number(r.get("constraint_error_start"), ".4f"),
            text.number(r["constraint_error"], ".4f"),
            text.number(r["max_cosine"], ".4f"),
            text.number(r.get("reconstruction_mse"), ".4f"),
            text.number(r.get("reconstruction_psnr"), ".2f"),
            text.number(r.get("step_time_ms"), ".2f"),
            text.number(r.get("train_time_s"), ".1f")) for r in rows]
  widths = [max(len(h), *(len(line[i]) for line in lines))
            for i, h in enumerate(header)]
  render = lambda cells: "  ".join(
      c.ljust(w) if i == 0 else c.rjust(w)
      for i, (c, w) in enumerate(zip(cells, widths)))
  return "\n".join([render(header), "-" * len(render(header)),
                    *map(render, lines)])


def _load(name: str, offline: bool):
  from bort_jax.experiments import data as data_lib
  try:
    return name, data_lib.load_splits(name, download=not offline), None
  except data_lib.DatasetUnavailableError as e:
    reason = str(e).splitlines()[0]
  print(f"\n*** {name} is not available ({reason}).\n*** FALLING BACK to "
        "scikit-learn's bundled 8x8 digits (1347 train / 450 test images): "
        f"the numbers below are NOT {name} numbers.\n", file=sys.stderr,
        flush=True)
  return "digits", data_lib.load_splits("digits", download=False), reason


def _train_pair(folder, configs_, dataset, probe, progress):
  from bort_jax.experiments import loop
  from bort_jax.experiments import probes
  results, kernels, reconstructions, histories = [], {}, {}, {}
  for key, config in zip(("baseline", "bort"), configs_):
    name = _NAMES[key]
    print(f"\n[{name}]", flush=True)
    t0 = time.perf_counter()
    result = loop.train(config, str(folder.path / key), dataset=dataset,
                        progress=progress,
                        log=lambda line: print("  " + line, flush=True))
    if not result.finished:
      return result.stopped_by
    last = result.history[-1]
    row = {"name": name, "optimizer": config.optimizer,
           "config": dataclasses.asdict(config),
           "constraint_error_start": result.history[0]["constraint_error"],
           **{k: last[k] for k in ("test_accuracy", "test_loss",
                                   "constraint_error", "max_cosine",
                                   "norm_spread", "step_time_ms")},
           "train_time_s": time.perf_counter() - t0,
           "history": result.history}
    rec = probes.first_stage_reconstruction(result.model, probe)
    row.update(reconstruction_mse=rec.mse, reconstruction_psnr=rec.psnr,
               reconstruction_layer=rec.layer)
    reconstructions[name] = rec.images
    path, kernel = probes.first_kernel(result.model)
    kernels[f"{name}: {path}"] = kernel
    histories[name] = result.history
    results.append(row)
  return results, kernels, reconstructions, histories


def _figures(folder, probe, kernels, reconstructions, histories):
  from bort_jax import explain
  figures = {
      "accuracy": _accuracy_figure(histories),
      "gram": explain.plot_gram(kernels),
      "reconstructions": explain.plot_reconstructions(
          probe[:8], reconstructions, max_images=8)}
  for name, fig in figures.items():
    with folder.atomic(f"{name}.png", "wb") as f:
      explain.save_figure(fig, f)
  return {name: f"{name}.png" for name in figures}


def run(args) -> int:
  """Runs the demo with parsed arguments; returns the exit status.

  Args:
    args: the parsed ``bort-jax demo`` arguments.

  Returns:
    0, or :func:`bort_jax.experiments.signals.exit_status` of the signal
    that stopped a run (130 SIGINT, 143 SIGTERM).
  """
  from bort_jax.experiments import workdir
  from bort_jax.experiments import signals
  start = time.perf_counter()
  # The settings are checked before the folder is made; the pair is built
  # again once the data are loaded (MNIST may fall back to digits).
  configs(args.data, args.quick, args.epochs, args.gamma, args.seed)
  with workdir.open_output(args.out, kind="demo", files=DEMO_FILES,
                           overwrite=args.overwrite) as folder:
    data_name, dataset, fallback = _load(args.data, args.offline)
    pair = configs(data_name, args.quick, args.epochs, args.gamma, args.seed)
    print(f"bort-jax demo: AdamW vs Bort-AdamW ({pair[1].mode}, amplitude "
          f"{pair[1].amplitude}, gamma {pair[1].gamma}) on {data_name}, "
          f"{pair[0].epochs} epoch(s) each, both from the same orthogonal "
          f"start -> {args.out}", flush=True)
    probe = dataset.test.images[:256 if args.quick else 1000]
    trained = _train_pair(folder, pair, dataset, probe, not args.no_progress)
    if not isinstance(trained, tuple):  # the signal that stopped a run
      print(f"Stopped by {trained}; the runs so far are in {args.out} (the "
            "demo does not resume them: rerun with --overwrite to start "
            "again)", file=sys.stderr)
      return signals.exit_status(trained)
    results, kernels, reconstructions, histories = trained
    figures = _figures(folder, probe, kernels, reconstructions, histories)
    total = time.perf_counter() - start
    folder.write_json("results.json", {
        "data": data_name, "requested_data": args.data,
        "fallback_reason": fallback, "quick": args.quick, "runs": results,
        "figures": figures,
        "reconstruction": f"mean over the first {len(probe)} test images of "
        "backtracking the first hidden layer's output to the input",
        "total_time_s": total})
  print(f"\nResults on {data_name}"
        + (f" (FALLBACK: {args.data} unavailable)" if fallback else "")
        + f", {pair[0].epochs} epoch(s), {pair[0].model}:")
  print(table(results))
  print("\nconstraint err: mean ‖WWᵀ − cI‖/‖cI‖ over the Bort kernels (c: "
        "mean squared row norm), at step 0 (the shared orthogonal start) and "
        "at the end; recon: backtracking the first hidden layer to the input "
        "(lower MSE / higher PSNR is better); train s: each run's wall time, "
        "the first (AdamW) also paying the start-up both share.")
  print(f"Figures and results.json in {args.out} ({total:.0f} s in all).")
  return 0
