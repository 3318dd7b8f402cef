"""The frontier's report: a Markdown table and the Pareto figure.

See :mod:`bort_jax.experiments.frontier` for the sweep and the selection.
"""

from __future__ import annotations

import math
from typing import Any

from bort_jax.experiments import text
from bort_jax.experiments.frontier_stats import PLACEMENTS
from bort_jax.experiments.frontier_stats import PSNR_PASS_DB
from bort_jax.experiments.frontier_stats import pareto_front


def _cell(stat: dict[str, Any] | None, spec: str, scale: float = 1.0) -> str:
  """``mean ± std`` over seeds; one seed has no spread (``± n/a``)."""
  if stat is None:
    return "n/a"
  spread = ("n/a" if stat.get("n") == 1
            else format(scale * stat["std"], spec))
  return f"{format(scale * stat['mean'], spec)} ± {spread}"


def _interval(stats: dict[str, Any] | None, seeds: int | None = None) -> str:
  """``+0.30 [−1.20, +1.80]`` (pp); one seed has no interval; ``(n=2)``
  after it where it covers fewer than the point's ``seeds``."""
  if not stats:
    return "n/a"
  fewer = (f" (n={stats['n']})" if seeds is not None
           and stats.get("n") is not None and stats["n"] < seeds else "")
  return text.interval(stats["mean_pp"], stats["ci_pp"],
                       alone=" [1 seed: no CI]") + fewer


def _passes(stat: dict[str, Any] | None) -> str:
  if stat is None:
    return "n/a"
  return f"{stat['passed']}/{stat['n']}"


def _stat(stat: dict[str, Any] | None, key: str, spec: str,
          scale: float = 1.0) -> str:
  """One statistic of a summary (``"median"``, ``"mean"``), or n/a."""
  return text.number(None if stat is None else scale * stat[key], spec)


def table(points: list[dict[str, Any]],
          chosen: dict[str, dict[str, Any]] | None = None) -> str:
  """A Markdown table of the points (mean ± std over seeds).

  Δval and Δtest are the paired differences from the point's baseline
  (``paired``, :func:`bort_jax.experiments.frontier.pair`): mean over seeds
  and 95 % t-interval, in percentage points. PSNR is the number of seeds at
  or above :data:`~bort_jax.experiments.frontier_stats.PSNR_PASS_DB` and the
  median; the pinv reference inverts the first layer by its pseudo-inverse.

  Examples:
    >>> from bort_jax.experiments.frontier_report import table
    >>> from bort_jax.experiments.frontier_stats import METRICS
    >>> s = {"mean": 0.9, "std": 0.01, "n": 3, "median": 30.0, "passed": 3}
    >>> p = {"name": "adamw", "point": {"placement": "decoupled",
    ...      "optimizer": "adamw"},
    ...      "summary": {**{m: s for m in METRICS}, "seeds": [0, 1, 2],
    ...                  "val_test_gap": {"mean": 0.004},
    ...                  "best_test_accuracy": None}}  # measured once only
    >>> print(table([p]).splitlines()[2][:67])
    | adamw | decoupled | 90.00 ± 1.00 | 90.00 ± 1.00 | — | — | +0.40 |
  """
  # A placement where no point meets --max-error has no pick, only a tightest.
  marks = {v["name"]: " **(selected)**" if v.get("meets_max_error", True)
           else " **(tightest; none meets --max-error)**"
           for v in (chosen or {}).values()}
  # The authors' protocol (best test epoch) only where the runs measured it.
  best = any(p["summary"].get("best_test_accuracy") for p in points)
  extra = (" best-epoch test acc % | Δ best-epoch test pp [95% CI] |"
           if best else "")
  lines = ["| point | placement | val acc % | test acc % | Δval pp [95% CI] | "
           "Δtest pp [95% CI] |" + extra + " val−test pp | constraint err | "
           f"max abs cos | PSNR ≥{PSNR_PASS_DB:g} dB | PSNR median dB | "
           "pinv PSNR median dB | ms/step | seeds |",
           "|---|---|---|---|---|---|" + ("---|---|" if best else "")
           + "---|---|---|---|---|---|---|---|"]
  for p in points:
    s = p["summary"]
    name = p["name"] + marks.get(p["name"], "")
    paired = p.get("paired")
    if "gamma" not in p["point"]:
      delta = ("—", "—", "—")  # a baseline is the reference
    elif paired is None:
      delta = ("no baseline",) * 3
    else:
      delta = tuple(_interval(paired.get(split), len(s["seeds"]))
                    for split in ("val", "test", "best_test"))
    gap = s.get("val_test_gap")
    columns = (f" {_cell(s.get('best_test_accuracy'), '.2f', 100)} | "
               f"{delta[2]} |" if best else "")
    lines.append(
        f"| {name} | {p['point']['placement']} | "
        f"{_cell(s['val_accuracy'], '.2f', 100)} | "
        f"{_cell(s['test_accuracy'], '.2f', 100)} | {delta[0]} | "
        f"{delta[1]} |{columns} "
        f"{_stat(gap, 'mean', '+.2f', 100)} | "
        f"{_cell(s['constraint_error'], '.2g')} | "
        f"{_cell(s['max_cosine'], '.2g')} | "
        f"{_passes(s.get('reconstruction_psnr'))} | "
        f"{_stat(s.get('reconstruction_psnr'), 'median', '.1f')} | "
        f"{_stat(s.get('pinv_psnr'), 'median', '.1f')} | "
        f"{_cell(s['step_time_ms'], '.1f')} | {len(s['seeds'])}"
        + (f" ({s['diverged']} diverged)" if s.get("diverged") else "")
        + " |")
  return "\n".join(lines) + "\n"


def _difference(pp: float | None) -> str:
  if pp is None:
    return "no seed in common with"
  return f"{abs(pp):.2f} pp {'below' if pp >= 0 else 'above'}"


def verdict_on_test(test: dict[str, Any] | None, tolerance: float) -> str:
  """The paired test difference read by the margin: ``free`` where its
  interval's lower end is at or above ``−tolerance``, ``costly`` where its
  upper end is below it, ``not resolved`` otherwise (docs/RESULTS.md's
  pre-registered rule); ``n/a`` without an interval.

  Examples:
    >>> from bort_jax.experiments.frontier_report import verdict_on_test
    >>> [verdict_on_test({"ci_pp": ci}, 0.002) for ci in ([-0.1, 0.3],
    ...  [-0.9, -0.3], [-0.4, 0.1])] + [verdict_on_test(None, 0.002)]
    ['free', 'costly', 'not resolved', 'n/a']
  """
  if not test or test.get("ci_pp") is None:
    return "n/a"
  low, high = test["ci_pp"]
  margin = -100 * tolerance
  return ("free" if low >= margin else "costly" if high < margin
          else "not resolved")


def selection_lines(selected: dict[str, dict[str, Any]], max_error: float,
                    tolerance: float) -> list[str]:
  """One line per placement: the pick, the rule, the margin, the test verdict.

  Args:
    selected: ``frontier.json``'s ``selected``
      (:func:`~bort_jax.experiments.frontier.selection_record`).
    max_error: the constraint error the selection counted as tight.
    tolerance: the margin (accuracy units).

  Returns:
    The lines, without newlines.

  Examples:
    >>> from bort_jax.experiments.frontier_report import selection_lines
    >>> pick = {"name": "bort-sgd_g1", "baseline": "sgd",
    ...         "meets_max_error": False, "constraint_error": 0.2,
    ...         "free": False, "cost_pp": 1.5, "paired_test": None}
    >>> for part in selection_lines({"coupled": pick}, 0.05, 0.002)[0].split(
    ...     "; "):
    ...   print(part)
    no point meets --max-error 0.05 (coupled)
    the tightest is bort-sgd_g1 (constraint error 0.2), 1.50 pp below its baseline sgd on validation
    no paired test difference (no common seed)
  """
  lines = []
  margin = f"the {100 * tolerance:.2f} pp margin"
  for placement, c in selected.items():
    test = c.get("paired_test")
    verdict = ("no paired test difference (no common seed)"
               if not test or test.get("mean_pp") is None else
               f"paired test difference {_interval(test)} pp over "
               f"{test['n']} seed{'s' if test['n'] != 1 else ''}"
               + ("" if test.get("ci_pp") is None else
                  f": {verdict_on_test(test, tolerance)} on test by {margin}"))
    versus = (f"{_difference(c['cost_pp'])} its baseline {c['baseline']} on "
              "validation")
    if c["meets_max_error"]:
      lines.append(
          f"selected ({placement}, on validation): {c['name']}, the most "
          "accurate point on validation with constraint error <= "
          f"{max_error:g}; {versus}, "
          + (f"within {margin} (free on validation)" if c["free"] else
             f"beyond {margin} (not free on validation)") + f"; {verdict}")
    else:
      lines.append(
          f"no point meets --max-error {max_error:g} ({placement}); the "
          f"tightest is {c['name']} (constraint error "
          f"{c['constraint_error']:.2g}), {versus}; {verdict}")
  return lines


def _gap_note(points: list[dict[str, Any]]) -> str:
  counts = []
  for placement in PLACEMENTS:
    mine = [p for p in points if p["point"]["placement"] == placement]
    if mine:
      borts = sum("gamma" in p["point"] for p in mine)
      counts.append(f"{borts} Bort point{'s' if borts != 1 else ''} and "
                    f"{len(mine) - borts} baseline"
                    f"{'s' if len(mine) - borts != 1 else ''} ({placement})")
  return (
      "The val−test column is the mean over seeds of validation minus test "
      "accuracy. Validation scores carry noise (the split, the seed), and "
      "every choice here is made on them: the selected point of a "
      "placement and the learning rate of its baseline are the candidates "
      "with the highest validation mean, so their validation scores are, "
      "on average, luckier than their true accuracy, and the test set, "
      "never used to choose, does not share that luck: the winner's curse. "
      "The more candidates a choice is made from, the larger the expected "
      "excess, and this grid has " + "; ".join(counts) + ", so the "
      "selected Bort point is chosen from more draws than its baseline and "
      "can show a larger gap even when the two are equally good. The "
      "validation split is also the end of the training set, not the test "
      "set, so it can differ from the test distribution, and a tighter "
      "constraint can fit it differently; the gap can then differ between "
      "arms for that reason too. Compare the arms on Δtest (paired by seed, "
      "with its interval), not on validation accuracy.")


def document(points: list[dict[str, Any]], selected: dict[str, Any],
             max_error: float, tolerance: float) -> str:
  """``frontier.md``: the table, the note on the val−test gap, the pick."""
  rule = (f"Selection, per placement, on validation only: the most accurate "
          f"point with constraint error <= {max_error:g}, free when its "
          f"validation accuracy is at most {100 * tolerance:.2f} pp (the "
          "margin) below its baseline's; each Bort point's baseline is its "
          "placement's baseline learning rate with the highest validation "
          "mean. Δ columns: Bort − baseline, seed by seed, mean [95% "
          "t-interval] in pp.")
  picks = "\n".join(f"- {line}" for line in selection_lines(
      selected, max_error, tolerance))
  return (f"{table(points, selected)}\n{_gap_note(points)}\n\n{rule}\n\n"
          f"{picks}\n")


def _log_ticks(ax, values: list[float]) -> None:
  """Decade ticks only, labelled once, so that no two labels overlap.

  Matplotlib labels minor ticks when the data span less than a decade, and
  their labels then run into each other; the axis is widened to whole
  decades instead, and at most six of them are labelled.
  """
  from matplotlib import ticker
  positive = [v for v in values if v > 0]
  if positive:
    low = 10.0 ** math.floor(math.log10(min(positive)))
    high = 10.0 ** math.ceil(math.log10(max(positive)))
    ax.set_xlim(low / 1.5, (high if high > low else 10 * low) * 1.5)
  ax.xaxis.set_major_locator(ticker.LogLocator(base=10, numticks=6))
  ax.xaxis.set_minor_locator(ticker.LogLocator(base=10, subs="auto",
                                               numticks=12))
  ax.xaxis.set_minor_formatter(ticker.NullFormatter())


def plot(points: list[dict[str, Any]],
         chosen: dict[str, dict[str, Any]] | None = None):
  """Validation accuracy against constraint error, coloured by PSNR.

  One panel per placement; error bars are the std over seeds; the Pareto
  front (no point both tighter and more accurate) is joined by a line, the
  selected point ringed, and the baseline drawn as a dashed line. Points are
  coloured by their median stage-1 PSNR where they have one (a model
  without a reconstruction draws them in one colour, with no colour bar).

  Returns:
    A ``matplotlib.figure.Figure``.
  """
  from matplotlib.figure import Figure
  placements = [p for p in PLACEMENTS
                if any(q["point"]["placement"] == p for q in points)]
  fig = Figure(figsize=(5.2 * max(len(placements), 1), 4.2),
               layout="constrained")
  axes = fig.subplots(1, max(len(placements), 1), squeeze=False)[0]
  psnr = lambda q: (q["summary"].get("reconstruction_psnr") or {}).get(
      "median")
  psnrs = [psnr(q) for q in points if psnr(q) is not None]
  vmin, vmax = (min(psnrs), max(psnrs)) if psnrs else (0.0, 1.0)
  scatter = None
  for ax, placement in zip(axes, placements):
    mine = [q for q in points if q["point"]["placement"] == placement]
    borts = [q for q in mine if "gamma" in q["point"]
             and q["summary"]["constraint_error"]
             and q["summary"]["val_accuracy"]]
    for q in mine:
      if "gamma" not in q["point"] and q["summary"]["val_accuracy"]:
        ax.axhline(100 * q["summary"]["val_accuracy"]["mean"], ls="--",
                   color="gray", label=f"{q['name']} (baseline)")
    if borts:
      err = [q["summary"]["constraint_error"]["mean"] for q in borts]
      acc = [100 * q["summary"]["val_accuracy"]["mean"] for q in borts]
      std = [100 * q["summary"]["val_accuracy"]["std"] for q in borts]
      ax.errorbar(err, acc, yerr=std, fmt="none", ecolor="lightgray")
      coloured = [i for i, q in enumerate(borts) if psnr(q) is not None]
      plain = [i for i in range(len(borts)) if i not in coloured]
      if coloured:
        scatter = ax.scatter([err[i] for i in coloured],
                             [acc[i] for i in coloured],
                             c=[psnr(borts[i]) for i in coloured],
                             cmap="viridis", vmin=vmin, vmax=vmax, zorder=3)
      if plain:  # NaN colours would be drawn transparent: draw them plainly
        ax.scatter([err[i] for i in plain], [acc[i] for i in plain],
                   color="tab:blue", zorder=3,
                   label="Bort points" + (" (no PSNR)" if coloured else ""))
      front = pareto_front(err, acc)
      ax.plot([err[i] for i in front], [acc[i] for i in front], "k-",
              lw=0.8, label="Pareto front")
      if chosen and placement in chosen:
        pick = next((q for q in borts if q["name"] == chosen[placement][
            "name"]), None)
        if pick is not None:
          ax.scatter([pick["summary"]["constraint_error"]["mean"]],
                     [100 * pick["summary"]["val_accuracy"]["mean"]], s=160,
                     facecolors="none", edgecolors="red", zorder=4,
                     label=("selected" if chosen[placement].get(
                         "meets_max_error", True) else "tightest (none "
                         "meets --max-error)") + f": {pick['name']}")
      ax.set_xscale("log")
      _log_ticks(ax, err)
    ax.set_title(f"{placement} ({PLACEMENTS[placement][1]})")
    ax.set_xlabel("constraint error (log)")
    ax.set_ylabel("validation accuracy %")
    ax.legend(fontsize=7, loc="lower right")
  if scatter is not None:
    fig.colorbar(scatter, ax=list(axes), label="stage-1 PSNR, median (dB)")
  return fig
