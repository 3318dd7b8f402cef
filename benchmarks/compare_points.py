"""Paired comparison of frontier points against one reference point.

A frontier pairs every Bort point with its baseline; a study of Bort settings
(an amortised correction against the every-step one, say) needs Bort against
Bort. This reads a frontier's ``runs.json`` and prints, for every point, the
per-seed difference from ``--reference`` (same seed: same initial weights
and batches) of validation and test accuracy (pp) and constraint error, with
a 95 % t-interval, and the ratio of the mean constraint errors.

    python benchmarks/compare_points.py runs/amortised_mlp256/runs.json \\
        --reference bort-adamw_l1-fullrow_ada_g1

``--before OTHER/runs.json`` compares every point instead with the same
point of another frontier: the same grid run before a change of the
library (a commit, in a git worktree), seed by seed. A baseline point, which
no Bort change touches, then differs by zero: the control.

    python benchmarks/compare_points.py runs/after/runs.json \\
        --before runs/before/runs.json
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from bort_jax.experiments import frontier
from bort_jax.experiments import frontier_stats
from bort_jax.experiments import text


def _by_point(runs: list[dict], repeats: list[str] | None = None
              ) -> dict[str, dict[int, dict]]:
  """A frontier's runs by point name, then seed. A (point, seed) recorded
  twice counts once, the first, as in :func:`frontier.aggregate`; its name
  is added to ``repeats``."""
  by_point: dict[str, dict[int, dict]] = {}
  for run in runs:
    name = frontier.point_name(run["point"])
    seeds = by_point.setdefault(name, {})
    if run["seed"] in seeds:
      if repeats is not None:
        repeats.append(f"{name} seed {run['seed']}")
      continue
    seeds[run["seed"]] = run
  return by_point


def differing_settings(runs: list[dict], before: list[dict]) -> list[str]:
  """The settings in which ``before``'s runs differ from the same point and
  seed in ``runs`` (their ``config``; fields one of them lacks, from
  another version, are not compared), as ``name: value before → now``.

  Examples:
    >>> from compare_points import differing_settings
    >>> now = [{"point": {"optimizer": "sgd"}, "seed": 0,
    ...         "config": {"epochs": 3, "seed": 0}}]
    >>> then = [{**now[0], "config": {"epochs": 2, "seed": 0}}]
    >>> differing_settings(now, then)
    ['epochs: 2 → 3']
  """
  earlier = _by_point(before)
  out: dict[str, None] = {}
  for name, seeds in _by_point(runs).items():
    for seed, run in seeds.items():
      old = earlier.get(name, {}).get(seed, {}).get("config") or {}
      new = run.get("config") or {}
      for key in sorted(set(old) & set(new)):
        if old[key] != new[key]:
          out[f"{key}: {old[key]} → {new[key]}"] = None
  return list(out)


def compare(runs: list[dict], reference: str | None = None,
            before: list[dict] | None = None,
            repeats: list[str] | None = None) -> list[dict]:
  """One row per point other than ``reference``: paired differences.

  Args:
    runs: the entries of a frontier's ``runs.json``.
    reference: the name (:func:`frontier.point_name`) to compare against.
    before: instead of ``reference``, another frontier's entries: each point
      is compared with the same point there (the points it lacks are left
      out).
    repeats: where to add the (point, seed) pairs recorded twice (the
      first record is used).

  Returns:
    Dicts with ``name``, ``val`` and ``test`` (:func:`frontier_stats.
    paired_statistics` of the accuracy differences, in pp), ``constraint``
    (:func:`frontier_stats.t_interval` of the constraint-error differences,
    in error units),
    ``constraint_ratio`` (mean error over the reference's, on the shared
    seeds), ``diverged`` (the point's seeds whose run diverged, left out
    of the rest) and ``reference_diverged`` (the seeds left out because the
    reference's run diverged); a point with no seed left keeps its row,
    with ``None`` figures.

  Raises:
    ValueError: ``reference`` is not a point of ``runs``, or ``before``
      shares no point with them.
  """
  by_point = _by_point(runs, repeats)
  if before is not None:
    earlier = _by_point(before, repeats)
    pairs = [(name, seeds, earlier[name]) for name, seeds in by_point.items()
             if name in earlier]
    if not pairs:
      raise ValueError("--before shares no point with these runs; it holds "
                       f"{', '.join(sorted(earlier))}.")
  elif reference in by_point:
    pairs = [(name, seeds, by_point[reference])
             for name, seeds in by_point.items() if name != reference]
  else:
    raise ValueError(f"--reference {reference!r} is not a point of these runs;"
                     f" they hold {', '.join(sorted(by_point))}.")
  rows = []
  for name, seeds, ref in pairs:
    diverged = sorted(s for s, run in seeds.items() if run.get("diverged"))
    theirs = sorted(s for s in set(seeds) & set(ref)
                    if ref[s].get("diverged") and s not in diverged)
    shared = sorted(s for s in set(seeds) & set(ref)
                    if s not in diverged and s not in theirs)
    if not shared:
      rows.append({"name": name, "seeds": [], "diverged": diverged,
                   "reference_diverged": theirs, "val": None, "test": None,
                   "constraint": None, "constraint_ratio": None})
      continue
    diff = lambda key: [seeds[s][key] - ref[s][key] for s in shared]
    rows.append({
        "name": name, "seeds": shared,
        "val": frontier_stats.paired_statistics(diff("val_accuracy")),
        "test": frontier_stats.paired_statistics(diff("test_accuracy")),
        "constraint": frontier_stats.t_interval(diff("constraint_error")),
        "diverged": diverged, "reference_diverged": theirs,
        "constraint_ratio": float(
            np.mean([seeds[s]["constraint_error"] for s in shared])
            / np.mean([ref[s]["constraint_error"] for s in shared]))})
  return rows


def side_of_zero(stats: dict | None) -> str:
  """Where a paired interval lies, read unrounded: ``below 0``, ``includes
  0`` or ``above 0`` (a bound of −0.0007 prints as ``-0.00`` at two
  decimals, which a reader may take for 0); ``n/a`` without one."""
  if stats is None or stats.get("ci_pp") is None:
    return "n/a"
  low, high = stats["ci_pp"]
  return "below 0" if high < 0 else "above 0" if low > 0 else "includes 0"


def _interval(stats: dict | None, spec: str = "+.2f", unit: str = "_pp"
              ) -> str:
  """``mean [low, high]`` of :func:`frontier_stats.paired_statistics`
  (``unit="_pp"``) or :func:`frontier_stats.t_interval` (``unit=""``)."""
  if stats is None:
    return "n/a"
  return text.interval(stats["mean" + unit], stats["ci" + unit], spec)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("runs", help="a frontier's runs.json")
  against = parser.add_mutually_exclusive_group(required=True)
  against.add_argument("--reference",
                       help="the point every other is compared with")
  against.add_argument("--before", metavar="RUNS_JSON",
                       help="another frontier's runs.json: each point is "
                       "compared with the same point there")
  args = parser.parse_args(argv)

  def read(path):
    with open(path) as f:
      try:
        runs = json.load(f)
      except ValueError as e:  # name the file that is not JSON
        raise ValueError(f"{path} is not a runs.json: {e}") from None
    if not (isinstance(runs, list)
            and all(isinstance(run, dict) for run in runs)):
      # The frontier.json beside it: a TypeError deep in compare.
      raise ValueError(f"{path} is not a runs.json: not a list of run "
                       "records (a frontier's runs.json, not its "
                       "frontier.json)")
    return runs

  repeats: list[str] = []
  try:
    runs = read(args.runs)
    before = read(args.before) if args.before else None
    rows = compare(runs, args.reference, before, repeats)
  except (OSError, ValueError) as e:
    print(f"compare_points: error: {e}", file=sys.stderr)
    return 2
  if repeats:
    print(f"compare_points: warning: recorded twice, the first record used: "
          f"{', '.join(repeats)}", file=sys.stderr)
  if before is not None and (changed := differing_settings(runs, before)):
    print("compare_points: warning: the runs differ from --before's in more "
          f"than their points: {'; '.join(changed)}", file=sys.stderr)
  against = (f"the same point of {args.before}" if args.before
             else args.reference)
  print(f"Against {against} (paired by seed, 95 % t-interval):\n")
  print("| point | seeds | Δval pp | Δval vs 0 | Δtest pp | Δtest vs 0 | "
        "Δconstraint | constraint ratio | diverged (its, the reference's) |")
  print("|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    ratio = ("n/a" if r["constraint_ratio"] is None
             else f"{r['constraint_ratio']:.3g}")  # 7.7e-05, not 0.00
    constraint = _interval(r["constraint"], "+.2e", unit="")
    print(f"| {r['name']} | {len(r['seeds'])} | {_interval(r['val'])} | "
          f"{side_of_zero(r['val'])} | {_interval(r['test'])} | "
          f"{side_of_zero(r['test'])} | {constraint} | {ratio} | "
          f"{len(r['diverged'])}, {len(r['reference_diverged'])} |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
