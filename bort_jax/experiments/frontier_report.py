"""The frontier's report: a Markdown table and the Pareto figure.

See :mod:`bort_jax.experiments.frontier` for the sweep and the selection.
"""

from __future__ import annotations

import math
from typing import Any

from bort_jax.experiments.frontier import METRICS
from bort_jax.experiments.frontier import PLACEMENTS
from bort_jax.experiments.frontier import pareto_front


def _cell(stat: dict[str, Any] | None, spec: str, scale: float = 1.0) -> str:
  if stat is None:
    return "n/a"
  return (f"{format(scale * stat['mean'], spec)} ± "
          f"{format(scale * stat['std'], spec)}")


def table(points: list[dict[str, Any]],
          chosen: dict[str, dict[str, Any]] | None = None) -> str:
  """A Markdown table of the points (mean ± std over seeds).

  Examples:
    >>> from bort_jax.experiments.frontier_report import METRICS, table
    >>> s = {"mean": 0.9, "std": 0.01, "n": 3}
    >>> p = {"name": "adamw", "point": {"placement": "decoupled",
    ...      "optimizer": "adamw"},
    ...      "summary": {**{m: s for m in METRICS}, "seeds": [0, 1, 2]}}
    >>> print(table([p]).splitlines()[2][:51])
    | adamw | decoupled | 90.00 ± 1.00 | 90.00 ± 1.00 |
  """
  chosen_names = {v["name"] for v in (chosen or {}).values()}
  lines = ["| point | placement | val acc % | test acc % | constraint err | "
           "max abs cos | PSNR dB | ms/step | seeds |",
           "|---|---|---|---|---|---|---|---|---|"]
  for p in points:
    s = p["summary"]
    name = p["name"] + (" **(selected)**" if p["name"] in chosen_names else "")
    lines.append(
        f"| {name} | {p['point']['placement']} | "
        f"{_cell(s['val_accuracy'], '.2f', 100)} | "
        f"{_cell(s['test_accuracy'], '.2f', 100)} | "
        f"{_cell(s['constraint_error'], '.2g')} | "
        f"{_cell(s['max_cosine'], '.2g')} | "
        f"{_cell(s['reconstruction_psnr'], '.1f')} | "
        f"{_cell(s['step_time_ms'], '.1f')} | {len(s['seeds'])} |")
  return "\n".join(lines) + "\n"


def plot(points: list[dict[str, Any]],
         chosen: dict[str, dict[str, Any]] | None = None):
  """Validation accuracy against constraint error, coloured by PSNR.

  One panel per placement; error bars are the std over seeds; the Pareto
  front (no point both tighter and more accurate) is joined by a line, the
  selected point ringed, and the baseline drawn as a dashed line.

  Returns:
    A ``matplotlib.figure.Figure``.
  """
  from matplotlib.figure import Figure
  placements = [p for p in PLACEMENTS
                if any(q["point"]["placement"] == p for q in points)]
  fig = Figure(figsize=(5.2 * max(len(placements), 1), 4.2),
               layout="constrained")
  axes = fig.subplots(1, max(len(placements), 1), squeeze=False)[0]
  psnrs = [q["summary"]["reconstruction_psnr"]["mean"] for q in points
           if q["summary"]["reconstruction_psnr"]]
  vmin, vmax = (min(psnrs), max(psnrs)) if psnrs else (0.0, 1.0)
  scatter = None
  for ax, placement in zip(axes, placements):
    mine = [q for q in points if q["point"]["placement"] == placement]
    borts = [q for q in mine if "gamma" in q["point"]
             and q["summary"]["constraint_error"]]
    for q in mine:
      if "gamma" not in q["point"] and q["summary"]["val_accuracy"]:
        ax.axhline(100 * q["summary"]["val_accuracy"]["mean"], ls="--",
                   color="gray", label=f"{q['name']} (baseline)")
    if borts:
      err = [q["summary"]["constraint_error"]["mean"] for q in borts]
      acc = [100 * q["summary"]["val_accuracy"]["mean"] for q in borts]
      std = [100 * q["summary"]["val_accuracy"]["std"] for q in borts]
      colour = [q["summary"]["reconstruction_psnr"]["mean"]
                if q["summary"]["reconstruction_psnr"] else math.nan
                for q in borts]
      ax.errorbar(err, acc, yerr=std, fmt="none", ecolor="lightgray")
      scatter = ax.scatter(err, acc, c=colour, cmap="viridis", vmin=vmin,
                           vmax=vmax, zorder=3)
      front = pareto_front(err, acc)
      ax.plot([err[i] for i in front], [acc[i] for i in front], "k-",
              lw=0.8, label="Pareto front")
      if chosen and placement in chosen:
        c = chosen[placement]["summary"]
        ax.scatter([c["constraint_error"]["mean"]],
                   [100 * c["val_accuracy"]["mean"]], s=160,
                   facecolors="none", edgecolors="red", zorder=4,
                   label=f"selected: {chosen[placement]['name']}")
      ax.set_xscale("log")
    ax.set_title(f"{placement} ({PLACEMENTS[placement][1]})")
    ax.set_xlabel("constraint error (log)")
    ax.set_ylabel("validation accuracy %")
    ax.legend(fontsize=7, loc="lower right")
  if scatter is not None:
    fig.colorbar(scatter, ax=list(axes), label="stage-1 PSNR (dB)")
  return fig
