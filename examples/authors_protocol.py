"""The authors' MNIST protocol, reported two ways, on a narrowed SimpleCNN.

Three arms, each over ``--seeds`` seeds, trained with the recipe
``authors-mnist`` (the Bort authors' MNIST/CIFAR script: Bort-SGD, lr 0.005,
momentum 0.9, weight decay 0.005, γ 0.05, ``l1-fullrow``, c = 1, DBort on the
logits with λ 1e-3 and β 0.1, batch 256, no schedule) on their SimpleCNN,
narrowed by ``--width`` (the first convolution's channels; theirs is 8) and
shortened to ``--epochs`` (theirs is 40):

- ``bort-sgd+dbort``: the recipe;
- ``bort-sgd``: the recipe with DBort off;
- ``sgd``: SGD with the recipe's learning rate, momentum and weight decay,
  no Bort, no DBort.

The last 10% of the training set is held out as a validation split. After
every epoch the model is evaluated on the validation split and on the test
set, and two figures are reported per arm:

- the authors' protocol: the best test accuracy over all epochs (their
  script uses the test set as its validation set);
- a clean protocol: the test accuracy at the epoch with the best validation
  accuracy.

It writes ``results.json`` (every run, per epoch) and ``tables.md`` to
``--out``. A rerun into the same folder continues where it stopped: finished
runs are read back, and each run is a resumable ``bort-jax train`` folder;
a non-empty folder that is not this script's is refused, untouched.

  python examples/authors_protocol.py --out runs/authors --width 2 \\
      --epochs 6 --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from typing import Any

import numpy as np

from bort_jax.experiments import data as data_lib
from bort_jax.experiments import frontier
from bort_jax.experiments import loop
from bort_jax.experiments import recipes
from bort_jax.experiments import signals
from bort_jax.experiments import workdir
from bort_jax.experiments.config import BORT_FIELDS
from bort_jax.experiments.config import TrainConfig

ARMS = ("bort-sgd+dbort", "bort-sgd", "sgd")
#: The files of the folder besides the arms' run folders.
OUT_FILES = ("results.json", "tables.md")


def arm_config(arm: str, *, data: str, width: int, epochs: int,
               seed: int) -> TrainConfig:
  """The recipe ``authors-mnist`` for one arm, narrowed and shortened."""
  values = {**recipes.recipe("authors-mnist"), "data": data, "width": width,
            "epochs": epochs, "seed": seed}
  if arm != "bort-sgd+dbort":
    values["dbort_weight"] = 0.0
  if arm == "sgd":
    values = {k: v for k, v in values.items() if k not in BORT_FIELDS}
    values["optimizer"] = "sgd"
  return TrainConfig(**values)


def run_arm(config: TrainConfig, path: str, held_out: Any,
            test: Any) -> dict[str, Any]:
  """Trains one arm in its run folder (resuming a stopped run), measuring
  the validation split and the test set after every epoch.

  Raises:
    signals.Interrupted: SIGINT or SIGTERM stopped it (its checkpoint is
      saved, and the same command continues it).
  """
  result = loop.train(config, path, dataset=held_out, holdout=test,
                      resume=os.path.exists(os.path.join(path, "config.json")))
  if not result.finished:
    raise signals.Interrupted(
        f"stopped by {result.stopped_by} at step {result.step}; the "
        "checkpoint is saved: run the same command again to continue",
        result.stopped_by)
  epochs = [{"epoch": r["epoch"], "val_accuracy": r["test_accuracy"],
             "test_accuracy": r["holdout_accuracy"],
             "constraint_error": r["constraint_error"]}
            for r in result.history[1:]]
  best_test = max(epochs, key=lambda e: e["test_accuracy"])
  best_val = max(epochs, key=lambda e: e["val_accuracy"])
  return {"config": config.to_dict(), "epochs": epochs,
          "authors_protocol": best_test["test_accuracy"],
          "authors_epoch": best_test["epoch"],
          "clean_protocol": best_val["test_accuracy"],
          "clean_epoch": best_val["epoch"],
          "final_constraint_error": epochs[-1]["constraint_error"]}


def _stat(values: list[float], scale: float = 100.0, spec: str = ".2f"
          ) -> str:
  v = scale * np.asarray(values, float)
  std = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
  return f"{format(float(np.mean(v)), spec)} ± {format(std, spec)}"


def tables(runs: dict[str, list[dict[str, Any]]]) -> str:
  """The Markdown table of both protocols, mean ± std over seeds."""
  lines = ["| arm | authors' protocol: best test epoch (%) | clean: test at "
           "best validation epoch (%) | final constraint error | seeds |",
           "|---|---|---|---|---|"]
  for arm, rows in runs.items():
    if rows:
      lines.append(
          f"| {arm} | {_stat([r['authors_protocol'] for r in rows])} | "
          f"{_stat([r['clean_protocol'] for r in rows])} | "
          f"{_stat([r['final_constraint_error'] for r in rows], 1, '.3g')} | "
          f"{len(rows)} |")
  return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", required=True,
                 help="output folder (a rerun of the same settings continues "
                 "it)")
  p.add_argument("--data", default="mnist", choices=("mnist", "fashion_mnist",
                                                      "digits"),
                 help="data set (default: mnist)")
  p.add_argument("--width", type=int, default=2,
                 help="the SimpleCNN's first convolution's channels (the "
                      "authors' is 8; default: 2)")
  p.add_argument("--epochs", type=int, default=6,
                 help="epochs per run (default: 6)")
  p.add_argument("--seeds", default="0,1,2",
                 help="comma-separated seeds (default: 0,1,2)")
  p.add_argument("--arms", default=",".join(ARMS),
                 help=f"comma-separated arms (default: {','.join(ARMS)})")
  p.add_argument("--offline", action="store_true",
                 help="never download a data set")
  args = p.parse_args(argv)
  seeds = [int(s) for s in args.seeds.split(",")]
  arms = [a for a in args.arms.split(",") if a]
  for arm in arms:
    if arm not in ARMS:
      p.error(f"unknown arm {arm!r}; choose from {', '.join(ARMS)}")
  configs = {(arm, seed): arm_config(arm, data=args.data, width=args.width,
                                      epochs=args.epochs, seed=seed)
             for arm in arms for seed in seeds}  # all valid before any work
  dataset = data_lib.load_splits(args.data, download=not args.offline)
  held_out = frontier.validation_split(dataset, 0.1)
  with workdir.open_script_output(args.out, kind="authors_protocol",
                                  files=OUT_FILES, resume=True) as folder:
    saved = json.loads(folder.read_text("results.json") or "{}")
    settings = {"data": args.data, "width": args.width,
                "epochs": args.epochs}
    if saved.get("done") and saved.get("settings") != settings:
      # Finished runs are kept by arm and seed: of other settings, they
      # would be reported as this command's.
      print(f"error: {args.out} holds runs of other settings "
            f"({saved.get('settings', 'not recorded')}, not {settings}); "
            "use another --out, or the settings it holds.", file=sys.stderr)
      return 2
    saved["settings"] = settings
    runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in arms}
    for (arm, seed), config in configs.items():
      key = f"{arm}/seed{seed}"
      if key in saved.get("done", {}):
        runs[arm].append(saved["done"][key])
        continue
      t0 = time.perf_counter()
      try:
        row = run_arm(config, str(folder.path / arm.replace("+", "_") /
                                  f"seed{seed}"), held_out, dataset.test)
      except signals.Interrupted as e:
        print(f"{key}: {e}", file=sys.stderr)
        return e.exit_status
      row["time_s"] = time.perf_counter() - t0
      runs[arm].append(row)
      saved.setdefault("done", {})[key] = row
      saved["machine"] = f"{platform.node()} ({os.cpu_count()} CPUs)"
      saved["date"] = datetime.date.today().isoformat()
      saved["command"] = " ".join(["python", *sys.argv])
      folder.write_json("results.json", saved)
      print(f"{key}: authors {row['authors_protocol']:.4f} (epoch "
            f"{row['authors_epoch']}), clean {row['clean_protocol']:.4f} "
            f"(epoch {row['clean_epoch']}), constraint "
            f"{row['final_constraint_error']:.3g}, {row['time_s']:.0f} s",
            flush=True)
    text = tables(runs)
    folder.write_text("tables.md", text)
  print(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
