"""The frontier's per-point statistics: summaries over seeds, paired
differences with their t-interval, and the Pareto front.

What :mod:`~bort_jax.experiments.frontier` (the sweep and its selection) and
:mod:`~bort_jax.experiments.frontier_report` (its table and figure) share,
below both.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import numpy as np

#: The base optimizer of each placement: the frontier pairs every Bort point
#: with its placement's baseline (:func:`~bort_jax.experiments.frontier.choose_baseline`).
PLACEMENTS = {"decoupled": ("adamw", "bort-adamw"),
              "coupled": ("sgd", "bort-sgd")}

#: The figures a run reports (``pinv_psnr``: the stage-1 reconstruction with
#: the first layer inverted by its pseudo-inverse, the reference of
#: ``reconstruction_psnr``; ``best_test_accuracy``: the best test accuracy
#: over the epochs, only when the test set is measured after each).
METRICS = ("val_accuracy", "test_accuracy", "best_test_accuracy",
           "constraint_error", "max_cosine", "reconstruction_psnr",
           "pinv_psnr", "step_time_ms")

#: The accuracies a Bort point is paired on with its baseline: validation,
#: the test set once at the end (the clean protocol), and, when the test set
#: is measured after every epoch (``--test-each-epoch``), its best epoch (the
#: authors' protocol, which uses the test set as its validation set).
PAIRED = ("val", "test", "best_test")

#: The PSNR (dB) a run's stage-1 reconstruction must reach to pass.
PSNR_PASS_DB = 25.0


def pareto_front(errors: Sequence[float], accuracies: Sequence[float]
                 ) -> list[int]:
  """Indices of the points no other point beats on both axes.

  A point is dominated when another has a constraint error no larger and an
  accuracy no smaller, one of them strictly.

  Args:
    errors: constraint errors (smaller is better).
    accuracies: accuracies (larger is better).

  Returns:
    The indices of the non-dominated points, by increasing error.

  Examples:
    >>> pareto_front([0.1, 0.2, 0.05, 0.3], [0.9, 0.95, 0.8, 0.94])
    [2, 0, 1]
  """
  order = sorted(range(len(errors)), key=lambda i: (errors[i], -accuracies[i]))
  front, best = [], -math.inf
  for i in order:
    if accuracies[i] > best:
      front.append(i)
      best = accuracies[i]
  return front


def summarize(runs: Iterable[dict[str, Any]]) -> dict[str, Any]:
  """Mean, std, count and per-seed values of every metric over a point's seeds.

  Each metric's ``values`` lists the runs' values in the order of
  ``seeds`` (``None`` where a run has none). A PSNR also gets ``passed``
  (the runs at or above :data:`PSNR_PASS_DB`) and ``median``: a mean of dB
  values is dominated by its best run. ``val_test_gap`` is the mean over
  seeds of validation minus test accuracy. ``diverged`` counts the runs
  that diverged (:func:`diverged_run`: they have no figures, so the means
  are over the others).
  """
  runs = list(runs)
  out: dict[str, Any] = {"seeds": [r["seed"] for r in runs],
                         "diverged": sum(bool(r.get("diverged"))
                                         for r in runs)}
  columns = {m: [r.get(m) for r in runs] for m in METRICS}
  columns["val_test_gap"] = [
      None if r.get("val_accuracy") is None or r.get("test_accuracy") is None
      else r["val_accuracy"] - r["test_accuracy"] for r in runs]
  for metric, column in columns.items():
    values = [v for v in column if v is not None]
    if not values:
      out[metric] = None
      continue
    out[metric] = {"mean": float(np.mean(values)),
                   "std": float(np.std(values, ddof=1)) if len(values) > 1
                   else 0.0, "n": len(values), "values": column}
    if metric.endswith("psnr"):
      out[metric].update(median=float(np.median(values)), passed=sum(
          v >= PSNR_PASS_DB for v in values))
  return out


def diverged_run(point: dict[str, Any], seed: int, why: str
                 ) -> dict[str, Any]:
  """The record of a run that diverged (its loss or weights non-finite).

  A divergence is a result of the point, not a failure of the sweep: it is
  recorded (so a rerun does not train it again), it has no figures, and its
  point is never selected
  (:func:`~bort_jax.experiments.frontier.select`).

  Examples:
    >>> from bort_jax.experiments.frontier_stats import diverged_run, summarize
    >>> run = diverged_run({"optimizer": "adamw"}, 0, "loss became nan")
    >>> run["val_accuracy"], summarize([run])["diverged"]
    (None, 1)
  """
  return {"point": point, "seed": seed, "diverged": why,
          **{metric: None for metric in METRICS}}


def t_interval(values: Sequence[float], confidence: float = 0.95
               ) -> dict[str, Any]:
  """Mean, sample std and t-interval of values, in their own units.

  .. math::
    \\bar x ± t_{(1+q)/2,\\,n-1} \\, s / \\sqrt{n}

  Args:
    values: one value per seed (a paired difference, say).
    confidence: the interval's coverage ``q``.

  Returns:
    ``{"values", "n", "mean", "std", "ci"}``; with one value the std and the
    interval are ``None`` (one value says nothing about its spread), with
    none the mean is ``None`` too.

  Examples:
    >>> from bort_jax.experiments.frontier_stats import t_interval
    >>> stats = t_interval([0.01, 0.02, 0.03])  # constraint errors, say
    >>> round(stats["mean"], 6), round(stats["std"], 6)
    (0.02, 0.01)
  """
  from scipy import stats as scipy_stats  # comes with scikit-learn (app)
  x = [float(v) for v in values]
  n = len(x)
  if n < 2:
    return {"values": x, "n": n, "mean": float(np.mean(x)) if x else None,
            "std": None, "ci": None}
  mean, std = float(np.mean(x)), float(np.std(x, ddof=1))
  half = float(scipy_stats.t.ppf((1 + confidence) / 2, n - 1)) * std / (
      math.sqrt(n))
  return {"values": x, "n": n, "mean": mean, "std": std,
          "ci": [mean - half, mean + half]}


def paired_statistics(differences: Sequence[float],
                      confidence: float = 0.95) -> dict[str, Any]:
  """:func:`t_interval` of accuracy differences, in percentage points.

  Args:
    differences: one difference per seed, in accuracy units (0.01 = 1 pp).
    confidence: the interval's coverage.

  Returns:
    ``{"d_pp", "n", "mean_pp", "std_pp", "ci_pp"}``: :func:`t_interval`'s
    figures of ``100 · differences``.

  Examples:
    >>> from bort_jax.experiments.frontier_stats import paired_statistics
    >>> stats = paired_statistics([0.01, 0.02, 0.03])
    >>> stats["mean_pp"], stats["std_pp"]
    (2.0, 1.0)
    >>> [round(v, 3) for v in stats["ci_pp"]]  # 2 ± 4.303 / √3
    [-0.484, 4.484]
  """
  stats = t_interval([100 * float(v) for v in differences], confidence)
  return {"d_pp": stats["values"], "n": stats["n"],
          "mean_pp": stats["mean"], "std_pp": stats["std"],
          "ci_pp": stats["ci"]}
