"""Per-epoch accuracy and constraint error of a frontier's points.

A frontier run with ``--test-each-epoch`` measures the test set after every
epoch; its report gives the last epoch (the clean protocol) and the best one
(the optimistic protocol of scripts that select on the test set). This reads
the per-run histories under ``<frontier>/points/`` and prints, for every
point, the seed mean of the validation and test accuracy (%) and of the
constraint error at each epoch, so that the two protocols can be seen on the
curves they come from. ``--png`` also draws the curves.

Inside a frontier run the validation split is the run's evaluation split, so
a history's ``test_accuracy`` is the validation accuracy, and the test set,
measured after every epoch by ``--test-each-epoch``, is its
``holdout_accuracy``.

    python benchmarks/epoch_curves.py runs/planB_resnet18 \\
        --png docs/figures/planB_resnet18_curves.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from bort_jax.experiments import frontier


def curves(folder: str | Path) -> dict[str, dict]:
  """The seed-mean curves of every point of a frontier folder.

  Args:
    folder: a frontier's ``--out``: its ``runs.json`` names the runs, and
      ``points/<name>_seed<s>/metrics.json`` holds each run's history.

  Returns:
    ``{name: {"epochs": [...], "val": [...], "test": [...],
    "constraint": [...], "seeds": [...]}}``, in the order of ``runs.json``:
    the epochs every seed measured (epoch 0 is the start), the mean
    validation and test accuracy (%) and the mean constraint error at each.
    Diverged runs are left out.

  Raises:
    ValueError: a run's history has no per-epoch test accuracy (the
      frontier ran without ``--test-each-epoch``).
  """
  folder = Path(folder)
  histories: dict[str, dict[int, list[dict]]] = {}
  for run in json.loads((folder / "runs.json").read_text()):
    if run.get("diverged"):
      continue
    name = frontier.point_name(run["point"])
    path = folder / "points" / f"{name}_seed{run['seed']}" / "metrics.json"
    history = json.loads(path.read_text())["history"]
    if any(h.get("holdout_accuracy") is None for h in history):
      raise ValueError(f"{path} has epochs without a test accuracy; run the "
                       "frontier with --test-each-epoch.")
    histories.setdefault(name, {})[run["seed"]] = history
  result = {}
  for name, by_seed in histories.items():
    epochs = sorted(set.intersection(
        *({h["epoch"] for h in history} for history in by_seed.values())))
    at = lambda key, e: [next(h[key] for h in history if h["epoch"] == e)
                         for history in by_seed.values()]
    result[name] = {
        "seeds": sorted(by_seed), "epochs": epochs,
        "val": [100 * float(np.mean(at("test_accuracy", e))) for e in epochs],
        "test": [100 * float(np.mean(at("holdout_accuracy", e)))
                 for e in epochs],
        "constraint": [float(np.mean(at("constraint_error", e)))
                       for e in epochs]}
  return result


def plot(result: dict[str, dict], path: str | Path) -> None:
  """Draws validation and test accuracy and constraint error per epoch."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(15, 4.2), layout="constrained")
  val, test, err = fig.subplots(1, 3)
  for name, c in result.items():
    val.plot(c["epochs"][1:], c["val"][1:], marker="o", ms=3, label=name)
    test.plot(c["epochs"][1:], c["test"][1:], marker="o", ms=3, label=name)
    err.semilogy(c["epochs"], c["constraint"], marker="o", ms=3, label=name)
  val.set(xlabel="epoch", ylabel="validation accuracy (%, mean over seeds)")
  test.set(xlabel="epoch", ylabel="test accuracy (%, mean over seeds)")
  err.set(xlabel="epoch", ylabel="constraint error (mean over seeds)")
  test.legend(fontsize=7)
  fig.savefig(path, dpi=120)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("folder", help="a frontier's --out folder")
  parser.add_argument("--png", help="also draw the curves into this file")
  args = parser.parse_args(argv)
  try:
    result = curves(args.folder)
  except (OSError, KeyError, ValueError) as e:
    print(f"epoch_curves: error: {e}", file=sys.stderr)
    return 2
  names = [f"{name} ({len(c['seeds'])} seeds)" for name, c in result.items()]
  epochs = sorted(set().union(*(c["epochs"] for c in result.values())))
  for title, key, fmt in (("Validation accuracy (%)", "val", "{:.2f}"),
                          ("Test accuracy (%)", "test", "{:.2f}"),
                          ("Constraint error", "constraint", "{:.3g}")):
    print(f"{title}, mean over seeds, per epoch (0 = the start):\n")
    print("| epoch | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for e in epochs:
      cells = [fmt.format(c[key][c["epochs"].index(e)])
               if e in c["epochs"] else "–" for c in result.values()]
      print(f"| {e} | " + " | ".join(cells) + " |")
    print()
  if args.png:
    plot(result, args.png)
    print(f"wrote {args.png}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
