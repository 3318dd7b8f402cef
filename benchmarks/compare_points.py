"""Paired comparison of frontier points against one reference point.

A frontier pairs every Bort point with its baseline; a study of Bort settings
(an amortised correction against the every-step one, say) needs Bort against
Bort. This reads a frontier's ``runs.json`` and prints, for every point, the
per-seed difference from ``--reference`` (same seed: same initial weights
and batches) of validation and test accuracy (pp) and constraint error, with
a 95 % t-interval, and the ratio of the mean constraint errors.

    python benchmarks/compare_points.py runs/amortised_mlp256/runs.json \\
        --reference bort-adamw_l1-fullrow_ada_g1
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from bort_jax.experiments import frontier
from bort_jax.experiments import frontier_stats
from bort_jax.experiments import text


def compare(runs: list[dict], reference: str) -> list[dict]:
  """One row per point other than ``reference``: paired differences.

  Args:
    runs: the entries of a frontier's ``runs.json``.
    reference: the name (:func:`frontier.point_name`) to compare against.

  Returns:
    Dicts with ``name``, ``val`` and ``test`` (:func:`frontier_stats.
    paired_statistics` of the accuracy differences, in pp), ``constraint``
    (:func:`frontier_stats.t_interval` of the constraint-error differences,
    in error units),
    ``constraint_ratio`` (mean error over the reference's, on the shared
    seeds) and ``diverged`` (the point's seeds whose run diverged, left out
    of the rest; ``constraint_ratio`` is ``None`` when every one did).

  Raises:
    ValueError: ``reference`` is not a point of ``runs``.
  """
  by_point: dict[str, dict[int, dict]] = {}
  for run in runs:
    by_point.setdefault(frontier.point_name(run["point"]), {})[
        run["seed"]] = run
  if reference not in by_point:
    raise ValueError(f"--reference {reference!r} is not a point of these runs;"
                     f" they hold {', '.join(sorted(by_point))}.")
  ref = by_point[reference]
  rows = []
  for name, seeds in by_point.items():
    if name == reference:
      continue
    diverged = sorted(s for s, run in seeds.items() if run.get("diverged"))
    shared = sorted((set(seeds) & set(ref)) - set(diverged))
    if not shared:
      if diverged:
        rows.append({"name": name, "seeds": [], "diverged": diverged,
                     "val": None, "test": None, "constraint": None,
                     "constraint_ratio": None})
      continue
    diff = lambda key: [seeds[s][key] - ref[s][key] for s in shared]
    rows.append({
        "name": name, "seeds": shared,
        "val": frontier_stats.paired_statistics(diff("val_accuracy")),
        "test": frontier_stats.paired_statistics(diff("test_accuracy")),
        "constraint": frontier_stats.t_interval(diff("constraint_error")),
        "diverged": diverged,
        "constraint_ratio": float(
            np.mean([seeds[s]["constraint_error"] for s in shared])
            / np.mean([ref[s]["constraint_error"] for s in shared]))})
  return rows


def _interval(stats: dict | None, digits: int, unit: str = "_pp") -> str:
  """``mean [low, high]`` of :func:`frontier_stats.paired_statistics`
  (``unit="_pp"``) or :func:`frontier_stats.t_interval` (``unit=""``)."""
  if stats is None:
    return "n/a"
  return text.interval(stats["mean" + unit], stats["ci" + unit],
                       f"+.{digits}f")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("runs", help="a frontier's runs.json")
  parser.add_argument("--reference", required=True,
                      help="the point every other is compared with")
  args = parser.parse_args(argv)
  try:
    with open(args.runs) as f:
      rows = compare(json.load(f), args.reference)
  except (OSError, ValueError) as e:
    print(f"compare_points: error: {e}", file=sys.stderr)
    return 2
  print(f"Against {args.reference} (paired by seed, 95 % t-interval):\n")
  print("| point | seeds | Δval pp | Δtest pp | Δconstraint | constraint ratio "
        "| diverged |")
  print("|---|---|---|---|---|---|---|")
  for r in rows:
    ratio = ("n/a" if r["constraint_ratio"] is None
             else f"{r['constraint_ratio']:.2f}")
    constraint = _interval(r["constraint"], 4, unit="")
    print(f"| {r['name']} | {len(r['seeds'])} | {_interval(r['val'], 2)} | "
          f"{_interval(r['test'], 2)} | {constraint} | {ratio} | "
          f"{len(r['diverged'])} |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
