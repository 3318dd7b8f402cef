"""The accuracy–explainability frontier: what a Bort user actually chooses.

For one model and dataset, :func:`run_frontier` trains every point of a grid
(:data:`AXES`: learning rate per placement × mode × amplitude × γ on a log
grid per placement, optionally with a γ warm-up and an amortised correction,
``bort_every``) for several seeds, with the baseline of each placement
(AdamW for the decoupled Bort-AdamW, SGD for the coupled Bort-SGD) at every
learning rate of that placement. Every setting is judged on a validation
split carved from the end of the training set; the test set is evaluated
once per run and reported, never used to choose.

Each Bort point is paired with its placement's baseline chosen on validation
(:func:`choose_baseline`: the learning rate with the highest validation
mean, at the same value of every other non-Bort axis), seed by seed (the
same seed: the same initialisation and batches): per point, the paired
differences on validation and on test with their mean, sample std and 95 %
t-interval (:func:`pair`). Per point it also reports the validation and test
accuracy, their gap, the mean constraint error, the largest ``|cos|``
between units and the step time (mean ± std over the seeds), and, for
models :mod:`bort_jax.explain` can invert, the PSNR of the stage-1
reconstruction (the input backtracked from the first hidden layer) as the
seeds passing 25 dB and the median, beside the same reconstruction with the
first layer inverted by its pseudo-inverse (what an exact inverse recovers).

Each run trains in its own folder under ``points/`` (config, metrics,
checkpoints) and is recorded in ``runs.json`` once it has finished; a rerun
skips the recorded runs and resumes an interrupted one from its checkpoint.
SIGINT or SIGTERM stops the sweep after the current step
(:class:`~bort_jax.experiments.signals.Interrupted`; ``bort-jax frontier``
exits with 130 or 143). The sweep writes ``frontier.json``, the table
``frontier.md`` and the figure ``frontier.png``: accuracy against
constraint error, coloured by PSNR where there is one, Pareto front marked.

A grid takes each value once, and a point's name (:func:`point_name`) tells
any two points apart; a bad grid, ``validation``, ``max_error`` or
``tolerance`` is refused (:func:`check_settings`) before anything is written.

Selection (per placement, on validation means, :func:`select`): the most
accurate point whose constraint error is at most ``max_error`` (0.05), and
whether it is also free (at most ``tolerance``, the margin, 0.2 pp, below
its baseline). When no point is that tight, the tightest is reported as
such, not as a pick.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import numbers
import os
from typing import Any, Callable, Sequence

from bort_jax.experiments import choices
from bort_jax.experiments import config as config_lib
from bort_jax.experiments import flags
from bort_jax.experiments import frontier_report
from bort_jax.experiments import signals
from bort_jax.experiments import text
from bort_jax.experiments import workdir
from bort_jax.experiments.config import ConfigError
from bort_jax.experiments.errors import DivergedError
from bort_jax.experiments.frontier_stats import PAIRED
from bort_jax.experiments.frontier_stats import PLACEMENTS
from bort_jax.experiments.frontier_stats import PSNR_PASS_DB
from bort_jax.experiments.frontier_stats import diverged_run
from bort_jax.experiments.frontier_stats import paired_statistics
from bort_jax.experiments.frontier_stats import summarize
from bort_jax.experiments.train_data import validation_split  # noqa: F401

@dataclasses.dataclass(frozen=True)
class Axis:
  """One axis of the grid: a :class:`Grid` attribute, its flag, its field.

  Attributes:
    attribute: the :class:`Grid` attribute holding the values (a tuple, or
      a dict of tuples by placement when ``per_placement``).
    field: the :class:`~bort_jax.experiments.config.TrainConfig` field the
      values set.
    flag: the command-line flag (``{placement}`` is filled in per
      placement).
    parse: turns one comma-separated item into a value.
    help: the flag's help (without its default).
    bort_only: the axis applies to Bort points only; otherwise baselines
      run at every value too, and a Bort point is paired with a baseline at
      its own value (except for ``learning_rate``, which the baseline's
      validation chooses).
    per_placement: the values differ by placement.
    tag: the prefix of the value in a point's name (``None``: the value is
      part of the fixed name ``<optimizer>_<mode>_<amp>_g<gamma>``).
    silent: the value left out of the name (older frontiers' names), and,
      when ``None``, out of the point: the field keeps its shared value.
    missing: for a per-placement axis, the values of a placement the dict
      leaves out (``None``: it must be given); ``(None,)`` also keeps the
      field's shared training flag (``--lr``, ``--init``, …) on the
      frontier's command line.
    gate: ``(field, applies, needs)``: the axis means something only where
      the grid's value of another field passes ``applies`` (τ for the Huber
      modes, lagging for ``bort_every`` above 1, the switch for the late and
      anneal schedules). Crossed with a value that fails it, the axis is
      left out of that point, which is then the same point as its
      neighbours' and runs once; set by a shared flag instead, the gate is
      the config's to check. ``needs`` says what it needs, for the refusal
      of an axis that applies to no point.
  """

  attribute: str
  field: str
  flag: str
  parse: Callable[[str], Any]
  help: str
  bort_only: bool = True
  per_placement: bool = False
  tag: str | None = None
  silent: Any = None
  missing: tuple | None = None
  gate: tuple[str, Callable[[Any], bool], str] | None = None


def _boolean(text: str) -> bool:
  if text.lower() not in ("true", "false"):
    raise ValueError(f"expected true or false, got {text!r}")
  return text.lower() == "true"


#: The grid's axes, in the order a point's name lists them. A new axis is a
#: :class:`Grid` attribute and one entry here (its flag, parsing and naming
#: follow); the learning rate comes first so that the points of a grid
#: without ``--lrs-*`` are those, and in the order, older frontiers ran.
AXES = (
    Axis("lrs", "learning_rate", "--lrs-{placement}", float,
         "learning rates of the {placement} placement, baselines and Bort "
         "points alike", bort_only=False, per_placement=True, tag="lr",
         missing=(None,)),
    Axis("modes", "mode", "--modes", str, "Bort modes"),
    Axis("amplitudes", "amplitude", "--amplitudes",
         config_lib.parse_amplitude,
         "amplitudes (1 and/or ada)"),
    Axis("gammas", "gamma", "--gammas-{placement}", float,
         "gamma grid of the {placement} placement", per_placement=True),
    Axis("gamma_warmups", "gamma_warmup", "--gamma-warmups", float,
         "gamma ramps in epochs (0: constant gamma)", tag="ramp", silent=0),
    Axis("bort_everys", "bort_every", "--bort-everys", int,
         "apply the correction every k steps, as k*gamma*Delta (1: every "
         "step)", tag="every", silent=1),
    Axis("taus", "tau", "--taus", config_lib.parse_tau,
         "the Huber modes' widths relative to the amplitude, or 'step' "
         "(huber modes only)", tag="tau", missing=(None,),
         gate=("mode", lambda mode: mode.startswith("huber"),
               "huber-fullrow or huber-fullcol (--modes)")),
    Axis("bort_laggeds", "bort_lagged", "--bort-laggeds", _boolean,
         "whether an amortised correction is lagged (Delta every k steps, "
         "gamma*Delta every step; true and/or false; every k > 1 only)",
         tag="lagged", missing=(None,),
         gate=("bort_every", lambda every: every > 1,
               "above 1 (--bort-everys)")),
    # The levers of a tight-and-free search: each keeps its shared training
    # flag (--init, ...) when the grid does not vary it.
    Axis("inits", "init", "--inits", str,
         "initialisations (default and/or orthogonal), baselines and Bort "
         "points alike", bort_only=False, tag="init", missing=(None,)),
    Axis("gamma_schedules", "gamma_schedule", "--gamma-schedules", str,
         "gamma schedules (constant, late, anneal)", tag="sched",
         missing=(None,)),
    Axis("gamma_switches", "gamma_switch", "--gamma-switches", float,
         "where the late and anneal gamma schedules switch, as fractions of "
         "the run (only with those schedules)", tag="switch",
         missing=(None,),
         gate=("gamma_schedule",
               lambda schedule: schedule in ("late", "anneal"),
               "late or anneal (--gamma-schedules)")),
    Axis("bort_heads", "bort_head", "--bort-heads", _boolean,
         "whether Bort constrains the classifier head (true and/or false; "
         "baselines too, measured and started on the same kernels)",
         bort_only=False, tag="head", missing=(None,)),
    Axis("bort_starts", "bort_start_on_constraint", "--bort-starts",
         _boolean, "whether the optimizer's first step lands the Bort "
         "kernels on the constraint (true and/or false)", tag="start",
         missing=(None,)),
    Axis("bort_lr_scales", "bort_lr_scale", "--bort-lr-scales", float,
         "learning-rate multipliers of the Bort kernels", tag="lrscale",
         missing=(None,)),
)


AXIS = {axis.attribute: axis for axis in AXES}


def _flag(axis: Axis, placement: str) -> str:
  return axis.flag.format(placement=placement)


@dataclasses.dataclass(frozen=True)
class Grid:
  """The points of a frontier sweep.

  Attributes:
    gammas: the γ grid per placement (the same γ is a far stronger step in
      the coupled placement, where momentum multiplies it by about
      ``1/(1 − μ)``).
    modes: the Bort modes.
    placements: ``"decoupled"`` and/or ``"coupled"``.
    amplitudes: ``1.0`` and/or ``"ada"``.
    gamma_warmups: γ ramps, in epochs (0: constant γ).
    bort_everys: how often the correction is applied (k: ``k·γ·Δ`` on every
      k-th step; 1: every step).
    taus: the Huber modes' widths (``tau``); ``(None,)``: the shared value.
    bort_laggeds: whether an amortised correction is lagged (``bort_lagged``:
      Δ every k-th step, ``γ·Δ`` of the last one on every step); ``(None,)``:
      the shared value, and the names of older frontiers.
    lrs: the learning rates per placement; the baseline and every Bort
      point of a placement run at each. ``(None,)`` (the default, also for
      a placement left out): the shared ``--lr``, else the optimizer's
      default, and the names of older frontiers.
    inits, gamma_schedules, gamma_switches, bort_heads, bort_starts,
      bort_lr_scales: the levers (``init``, ``gamma_schedule``,
      ``gamma_switch``, ``bort_head``, ``bort_start_on_constraint``,
      ``bort_lr_scale`` of the training config); ``(None,)``:
      the shared value, and the names of older frontiers. ``inits`` and
      ``bort_heads`` apply to the baselines too, so a Bort point is paired
      with a baseline that started from the same weights and is measured on
      the same kernels (with the orthogonal init, :func:`check_settings`
      refuses a point whose numeric amplitude would start it elsewhere).
    seeds: the seeds of every point.
  """

  gammas: dict[str, tuple[float, ...]] = dataclasses.field(
      default_factory=lambda: {"decoupled": (0.1, 0.3, 1.0, 3.0),
                               "coupled": (0.003, 0.01, 0.03, 0.1)})
  modes: tuple[str, ...] = ("l1-fullrow", "l2-full")
  placements: tuple[str, ...] = ("decoupled", "coupled")
  amplitudes: tuple[float | str, ...] = (1.0, "ada")
  gamma_warmups: tuple[float, ...] = (0.0,)
  bort_everys: tuple[int, ...] = (1,)
  bort_laggeds: tuple[bool | None, ...] = (None,)
  taus: tuple[float | str | None, ...] = (None,)
  lrs: dict[str, tuple[float | None, ...]] = dataclasses.field(
      default_factory=lambda: {"decoupled": (None,), "coupled": (None,)})
  inits: tuple[str | None, ...] = (None,)
  gamma_schedules: tuple[str | None, ...] = (None,)
  gamma_switches: tuple[float | None, ...] = (None,)
  bort_heads: tuple[bool | None, ...] = (None,)
  bort_starts: tuple[bool | None, ...] = (None,)
  bort_lr_scales: tuple[float | None, ...] = (None,)
  seeds: tuple[int, ...] = (0, 1, 2)

  def __post_init__(self):
    for placement in self.placements:
      if placement not in PLACEMENTS:
        raise ConfigError(
            f"--placements takes decoupled and/or coupled, got "
            f"{placement!r}.")
      if placement not in self.gammas:
        raise ConfigError(
            f"The grid has no gammas for the {placement} placement; pass "
            f"--gammas-{placement}.")
    lists = {"--placements": self.placements, "--seeds": self.seeds}
    for axis in AXES:
      for placement in (self.placements if axis.per_placement else (None,)):
        lists[_flag(axis, placement or "")] = self.values(axis, placement)
    for flag, values in lists.items():
      if not values:
        raise ConfigError(f"{flag} is empty; give at least one value.")
      for i, value in enumerate(values):
        # A repeat would train the same run twice and count it as two seeds.
        if value in values[:i]:
          raise ConfigError(
              f"{flag} repeats {value!r}; give each value once (a repeat "
              "trains the same run twice).")
    for placement in self.placements:
      for lr in self.values(AXIS["lrs"], placement):
        if lr is not None and not (isinstance(lr, numbers.Real)
                                   and math.isfinite(lr) and lr > 0):
          raise ConfigError(
              f"--lrs-{placement} takes positive finite learning rates, got "
              f"{lr!r}.")

  def values(self, axis: Axis, placement: str | None = None) -> tuple:
    """The values of ``axis`` (for ``placement`` when it is per placement)."""
    values = getattr(self, axis.attribute)
    if not axis.per_placement:
      return tuple(values)
    if placement not in values and axis.missing is not None:
      return axis.missing
    return tuple(values[placement])

  def points(self) -> list[dict[str, Any]]:
    """Every point, baselines first: dicts of config overrides.

    An axis crossed with a value of its gate that it does not apply to
    (:attr:`Axis.gate`: ``--taus`` with an l1 mode, ``--bort-laggeds``
    with every step) is left out of that point, and a point met twice is
    listed once; an axis given that applies to no point is refused.

    Raises:
      ConfigError: a gated axis that no point of the grid applies to.
    """
    out, applied = [], set()
    for bort in (False, True):
      axes = [a for a in AXES if bort or not a.bort_only]
      for p in self.placements:
        for combo in itertools.product(*(self.values(a, p) for a in axes)):
          point = {"placement": p, "optimizer": PLACEMENTS[p][bort]}
          point.update({a.field: v for a, v in zip(axes, combo)
                        if v is not None})
          for axis in axes:
            if axis.gate is None:
              continue
            gate, applies, _ = axis.gate
            if gate not in point or applies(point[gate]):
              applied.add(axis.flag)  # not in the point: the config checks
            else:
              point.pop(axis.field, None)
          if point not in out:
            out.append(point)
    for axis in AXES:
      if (axis.gate is not None and axis.flag not in applied
          and self.values(axis) != (None,)):
        raise ConfigError(
            f"{axis.flag} applies to no point of this grid: it needs "
            f"{axis.gate[0]} {axis.gate[2]}; drop it, or add such "
            f"a value to the grid.")
    return out


def _number(value: float) -> str:
  """The shortest text that reads back as exactly ``value``.

  ``:g`` where it is exact (the names of older frontiers: ``1``, ``0.003``),
  else ``repr`` (``0.1000001``, which ``:g`` would round to ``0.1``).
  """
  if isinstance(value, bool):
    return "yes" if value else "no"
  if isinstance(value, str):
    return value
  text = format(value, "g")
  return text if float(text) == value else repr(float(value))


def point_name(point: dict[str, Any]) -> str:
  """A file-system-safe name for a point; two different points never share one.

  Every number reads back as exactly its value, so a near-duplicate
  (``0.1000001`` beside ``0.1``) gets its own name, and the names of older
  frontiers, whose numbers ``:g`` wrote exactly, are unchanged. An axis at
  its silent value (:data:`AXES`: no ramp, every step, the shared learning
  rate) adds nothing to the name.

  Examples:
    >>> from bort_jax.experiments.frontier import point_name
    >>> point = {"optimizer": "bort-adamw", "mode": "l1-fullrow",
    ...          "amplitude": "ada", "gamma": 0.1}
    >>> point_name(point), point_name({**point, "gamma": 0.1000001})
    ('bort-adamw_l1-fullrow_ada_g0.1', 'bort-adamw_l1-fullrow_ada_g0.1000001')
    >>> point_name({"optimizer": "adamw", "learning_rate": 0.003})
    'adamw_lr0.003'
  """
  if "gamma" not in point:
    name = point["optimizer"]
  else:
    amp = ("ada" if point["amplitude"] == "ada"
           else f"c{_number(point['amplitude'])}")
    name = (f"{point['optimizer']}_{point['mode']}_{amp}_"
            f"g{_number(point['gamma'])}")
  for axis in AXES:
    value = point.get(axis.field, axis.silent)
    if axis.tag is not None and value != axis.silent:
      name += f"_{axis.tag}{_number(value)}"
  return name


# The point fields a Bort point and its baseline share; the learning rate is
# not among them: the baseline's own validation chooses it. A field a point
# lacks is at its default (a baseline recorded before bort_head reached
# baselines ran with the head).
def _shared(point: dict[str, Any]) -> dict[str, Any]:
  fields = {a.field for a in AXES if not a.bort_only} - {"learning_rate"}
  return {k: point.get(k, config_lib.DEFAULTS.get(k))
          for k in ("placement", *sorted(fields))}


def choose_baseline(point: dict[str, Any], points: list[dict[str, Any]]
                    ) -> dict[str, Any] | None:
  """The baseline a Bort point is compared with, chosen on validation.

  Among the baselines of the point's placement at the same value of every
  other non-Bort axis, the one (learning rate) with the highest validation
  mean; the first such on a tie. A baseline with a diverged seed is never
  chosen, as a Bort point is not (:func:`select`): its mean covers the
  other seeds only. ``None`` when there is none.
  """
  base = PLACEMENTS[point["point"]["placement"]][0]
  mine = [p for p in points if p["point"]["optimizer"] == base
          and _shared(p["point"]) == _shared(point["point"])
          and p["summary"].get("val_accuracy") is not None
          and not p["summary"].get("diverged")]
  if not mine:
    return None
  return max(mine, key=lambda p: p["summary"]["val_accuracy"]["mean"])


def _per_seed(summary: dict[str, Any], metric: str) -> dict[int, float]:
  stat = summary.get(metric)
  if stat is None or "values" not in stat:
    return {}
  return {seed: v for seed, v in zip(summary["seeds"], stat["values"])
          if v is not None}


def _seed_differences(point: dict[str, Any], baseline: dict[str, Any],
                      metric: str) -> tuple[list[int], list[float]]:
  """The seeds both points have a ``metric`` for, and the point's minus the
  baseline's on each (the same seed: the same initialisation and batches)."""
  mine = _per_seed(point["summary"], metric)
  theirs = _per_seed(baseline["summary"], metric)
  seeds = [s for s in mine if s in theirs]
  return seeds, [mine[s] - theirs[s] for s in seeds]


def pair(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Adds ``paired`` to every Bort point: its differences from its baseline.

  The baseline is :func:`choose_baseline`'s; the differences are taken seed
  by seed (the same seed: the same initialisation and batches) on the seeds
  both have, on validation, test and best-epoch test accuracy
  (:data:`PAIRED`, :func:`paired_statistics`; ``n`` is 0 where the runs
  have no such figure). A point without a baseline gets ``paired: None``.

  Returns:
    The points, each Bort point with ``paired: {"baseline": name, "val":
    {...}, "test": {...}, "best_test": {...}}``.
  """
  out = []
  for p in points:
    if "gamma" not in p["point"]:
      out.append(p)
      continue
    baseline = choose_baseline(p, points)
    paired = None
    if baseline is not None:
      paired = {"baseline": baseline["name"]}
      for split in PAIRED:
        seeds, differences = _seed_differences(p, baseline,
                                               f"{split}_accuracy")
        paired[split] = {"seeds": seeds,
                         **paired_statistics(differences)}
    out.append({**p, "paired": paired})
  return out


# Accuracies are counts over examples: two equal ones may differ by float
# summation order, never by less than one example in 1e9.
_ROUNDING = 1e-9


def select(points: list[dict[str, Any]], max_error: float = 0.05,
           tolerance: float = 0.002) -> dict[str, dict[str, Any]]:
  """The recommended point of each placement, chosen on validation only.

  The most accurate point (validation mean) among those whose constraint
  error is at most ``max_error``: Bort is for an orthogonal network, so the
  constraint comes first and its price is reported, not hidden. Without
  such a point, the tightest one, with ``meets_max_error`` false. A point
  with a diverged seed is never chosen (its means cover the other seeds
  only). Each
  choice carries ``free``: whether its validation accuracy is at most
  ``tolerance`` (the margin) below that of its baseline
  (:func:`choose_baseline`), paired: the mean over the seeds both have of
  the baseline's minus its own (``None`` without a common seed, not free);
  a cost equal to the margin but for rounding (1e-9) is within it.

  Args:
    points: aggregated points (``point`` and ``summary`` keys).
    max_error: the largest constraint error that counts as tight.
    tolerance: the margin: how much validation accuracy below the
      baseline's is free.

  Returns:
    ``{placement: point}``, each point with ``baseline`` (its name),
    ``cost`` (the paired validation accuracy below the baseline's),
    ``free`` and ``meets_max_error`` added.
  """
  chosen = {}
  for placement in PLACEMENTS:
    borts = [p for p in points if p["point"]["placement"] == placement
             and "gamma" in p["point"]
             and p["summary"]["val_accuracy"] is not None
             and p["summary"]["constraint_error"] is not None
             and not p["summary"].get("diverged")
             and choose_baseline(p, points) is not None]
    if not borts:
      continue
    error = lambda p: p["summary"]["constraint_error"]["mean"]
    accuracy = lambda p: p["summary"]["val_accuracy"]["mean"]
    tight = [p for p in borts if error(p) <= max_error]
    best = max(tight, key=accuracy) if tight else min(borts, key=error)
    baseline = choose_baseline(best, points)
    _, differences = _seed_differences(best, baseline, "val_accuracy")
    cost = -sum(differences) / len(differences) if differences else None
    chosen[placement] = {**best, "baseline": baseline["name"], "cost": cost,
                         "free": cost is not None
                         and cost <= tolerance + _ROUNDING,
                         "meets_max_error": bool(tight)}
  return chosen


def selection_record(chosen: dict[str, dict[str, Any]]) -> dict[str, Any]:
  """The selection as ``frontier.json`` keeps it (per placement)."""
  out = {}
  for placement, p in chosen.items():
    paired = p.get("paired") or {}
    out[placement] = {
        "name": p["name"], "baseline": p["baseline"],
        "meets_max_error": p["meets_max_error"],
        "constraint_error": p["summary"]["constraint_error"]["mean"],
        "free": p["free"],
        "cost_pp": None if p["cost"] is None else 100 * p["cost"],
        "paired_test": paired.get("test")}
  return out


# ---------------------------------------------------------------------------
# Running the sweep.


def check_settings(base: dict[str, Any], grid: Grid, *,
                   validation: float = 0.1, max_error: float = 0.05,
                   tolerance: float = 0.002, n_train: int | None = None
                   ) -> None:
  """Refuses a bad sweep before anything is written or trained.

  Args:
    base: the config fields every point shares.
    grid: the :class:`Grid` (it refused repeats when it was made).
    validation: the held-out fraction: a finite number in (0, 1).
    max_error: the constraint error the selection counts as tight (finite,
      at least 0).
    tolerance: the accuracy loss the selection counts as free (finite, at
      least 0).
    n_train: the size of the training set, to check that ``validation``
      leaves at least one training and one validation example.

  Raises:
    ConfigError: a value is refused; the message names its flag.

  Examples:
    >>> from bort_jax.experiments.frontier import Grid, check_settings
    >>> check_settings({}, Grid(), validation=1.0)
    Traceback (most recent call last):
    ...
    bort_jax.experiments.config.ConfigError: --validation must be ...
  """
  finite = lambda v: (isinstance(v, numbers.Real) and not isinstance(v, bool)
                      and math.isfinite(v))
  if not (finite(validation) and 0 < validation < 1):
    raise ConfigError(
        "--validation must be a finite number strictly between 0 and 1 (the "
        f"held-out share of the training set, e.g. 0.1), got {validation!r}.")
  for flag, value in (("--max-error", max_error), ("--tolerance", tolerance)):
    if not (finite(value) and value >= 0):
      raise ConfigError(f"{flag} must be a finite number at least 0, got "
                        f"{value!r}.")
  if n_train is not None:
    held = int(round(n_train * validation))
    if not 0 < held < n_train:
      raise ConfigError(
          f"--validation {validation!r} of the {n_train} training examples "
          f"holds out {held}, leaving {n_train - held} to train on; choose a "
          "fraction that leaves at least one example on each side.")
    limit = base.get("train_limit")
    if limit is not None and limit > n_train - held:
      raise ConfigError(
          f"--train-limit {limit} is above the {n_train - held} examples "
          f"left to train on after --validation {validation!r} holds out "
          f"{held}; pass at most {n_train - held}.")
  config_lib.check_dbort_only(
      base, base.get("dbort_weight", config_lib.TrainConfig.dbort_weight),
      flags.flag)
  for axis in AXES:  # a shared flag the grid would silently override
    if base.get(axis.field) is None:
      continue
    for placement in grid.placements:
      if grid.values(axis, placement) != (None,):
        shared = flags.flag(axis.field)
        default = (f" ({shared} is the default of a placement without "
                   f"{axis.flag.format(placement='*')})"
                   if axis.per_placement else "")
        raise ConfigError(
            f"{shared} and {axis.flag.format(placement=placement)} both set "
            f"{axis.field}; give one of them{default}.")
  points = grid.points()
  for point in points:  # every run's config is valid, before work
    for seed in grid.seeds:
      point_config(base, point, seed)

  def start(point):  # what the orthogonal init reads of the point's run
    config = point_config(base, point, grid.seeds[0])
    return config.init == "orthogonal" and config_lib.orthogonal_start(config)

  baselines = [p for p in points if "gamma" not in p]
  for point in points:  # paired with baselines that start from its weights
    if "gamma" in point and start(point) and any(
        _shared(b) == _shared(point) and start(b) != start(point)
        for b in baselines):
      raise ConfigError(
          f"With the orthogonal init, {point_name(point)} would start "
          "from other weights than its baseline (the init projects a "
          "run's Bort kernels at its numeric amplitude, the baseline's at "
          "'ada'), so their paired difference would not be Bort's alone; "
          "give --amplitudes ada.")


def point_config(base: dict[str, Any], point: dict[str, Any], seed: int
                 ) -> Any:
  """The training config of one point and seed.

  The shared fields ``base``, then the point's (``placement`` picks the
  optimizer and is not a field), then the seed. A baseline is the same run
  without Bort: the shared Bort fields (``--gamma-schedule``,
  ``--gamma-switch``, …, :data:`~bort_jax.experiments.config.BORT_FIELDS`)
  apply to the Bort points only (``--no-bort-head`` is not one: it also
  sets which kernels a baseline's init and metrics take); the shared
  ``--momentum`` applies to the SGD points only.

  Examples:
    >>> from bort_jax.experiments.frontier import point_config
    >>> base = {"data": "digits", "gamma_schedule": "anneal",
    ...         "gamma_switch": 0.5}
    >>> point_config(base, {"placement": "coupled", "optimizer": "sgd"},
    ...              0).gamma_switch
    0.8
    >>> point_config(base, {"placement": "coupled", "optimizer": "bort-sgd",
    ...                     "gamma": 0.003}, 0).gamma_switch
    0.5
  """
  fields = {k: v for k, v in point.items() if k != "placement"}
  if choices.base_name(fields.get("optimizer")) != "sgd":
    base = {k: v for k, v in base.items() if k != "momentum"}
  if "gamma" not in point:
    base = {k: v for k, v in base.items()
            if k not in config_lib.BORT_FIELDS}
  return config_lib.TrainConfig(**{**base, **fields, "seed": seed})


def run_point(base: dict[str, Any], point: dict[str, Any], seed: int,
              dataset: Any, *, validation: float = 0.1,
              probe_images: int = 256, run_dir: str | None = None,
              log: Callable[[str], None] | None = None,
              test_each_epoch: bool = False) -> dict[str, Any]:
  """Trains one point for one seed; measures it on validation and test.

  Args:
    base: the :class:`~bort_jax.experiments.config.TrainConfig` fields every
      point shares (data, model, epochs, …).
    point: the point's fields (:meth:`Grid.points`; ``placement`` picks the
      optimizer and is not a config field).
    seed: the seed.
    dataset: the full dataset (the validation split is carved from its
      training set; its test set is evaluated once, at the end).
    validation: the held-out fraction of the training set.
    probe_images: how many test images the reconstruction PSNRs average
      (``reconstruction_psnr``: the first layer undone by its scaled
      transpose; ``pinv_psnr``: by its pseudo-inverse, the reference).
    run_dir: the run's folder (config, metrics, checkpoints); a run started
      there before is resumed from its checkpoint. ``None``: nothing is
      written and an interrupted run starts over.
    log: called with one line per epoch.
    test_each_epoch: also measure the test set after every epoch (as the
      history's ``holdout_accuracy``), for ``best_test_accuracy``: the
      authors' protocol, the best test accuracy over the epochs. It
      changes no step of the run.

  Returns:
    The run's figures (:data:`~bort_jax.experiments.frontier_stats.METRICS`),
    its point, seed and history.

  Raises:
    Interrupted: SIGINT or SIGTERM stopped the run before its end (its
      checkpoint is saved in ``run_dir``).
    DivergedError: the run diverged (the sweep records it,
      :func:`diverged_run`).
  """
  from bort_jax.experiments import loop
  from bort_jax.experiments import probes
  from bort_jax.experiments import steps
  config = point_config(base, point, seed)
  resume = run_dir is not None and os.path.lexists(
      os.path.join(run_dir, "config.json"))
  result = loop.train(config, run_dir, dataset=validation_split(
      dataset, validation), resume=resume, log=log,
      holdout=dataset.test if test_each_epoch else None)
  if not result.finished:  # a truncated run must never count as a result
    saved = (f"its checkpoint is saved in {run_dir!r}" if run_dir
             else "nothing of it is saved")
    raise signals.Interrupted(
        f"{point_name(point)} seed {seed} was interrupted by "
        f"{result.stopped_by} at step {result.step}; {saved} and it is not "
        "recorded as finished", result.stopped_by)
  last = result.history[-1]
  test = steps.evaluate(result.model, dataset.test.images,
                        dataset.test.labels, config.eval_batch_size)
  psnr = pinv_psnr = None
  if probes.is_invertible(result.model):
    images = dataset.test.images[:probe_images]
    psnr = probes.first_stage_reconstruction(result.model, images).psnr
    pinv_psnr = probes.first_stage_reconstruction(
        result.model, images, first_layer="pinv").psnr
  # Epoch 0 is the untrained start, not an epoch a protocol may pick.
  each = [r["holdout_accuracy"] for r in result.history[1:]
          if r.get("holdout_accuracy") is not None]
  return {"point": point, "seed": seed, "config": config.to_dict(),
          "val_accuracy": last["test_accuracy"], "test_accuracy": test[1],
          "best_test_accuracy": max(each) if each else None,
          "constraint_error": last["constraint_error"],
          "max_cosine": last["max_cosine"], "reconstruction_psnr": psnr,
          "pinv_psnr": pinv_psnr,
          "step_time_ms": last["step_time_ms"],
          "history": [{k: r[k] for k in ("epoch", "test_accuracy",
                                         "holdout_accuracy",
                                         "constraint_error") if k in r}
                      for r in result.history]}


def aggregate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Groups runs by point (in first-seen order), summarises and pairs them.

  A (point, seed) recorded twice (by a sweep before grids refused repeats)
  counts once: the same run is not two seeds. Every Bort point is paired
  with its baseline (:func:`pair`).
  """
  groups: dict[str, list[dict[str, Any]]] = {}
  for run in runs:
    group = groups.setdefault(point_name(run["point"]), [])
    if all(r["seed"] != run["seed"] for r in group):
      group.append(run)
  return pair([{"name": name, "point": group[0]["point"],
                "summary": summarize(group)}
               for name, group in groups.items()])


def _run_dir(folder: Any, point: dict[str, Any], seed: int) -> str:
  return str(folder.path / "points" / f"{point_name(point)}_seed{seed}")


#: What to do about a damaged file of a frontier folder.
_REPAIRS = {
    "runs.json": "Move it aside (e.g. rename it to runs.json.damaged) and "
                 "rerun: its runs are measured again from their checkpoints.",
    "settings.json": "Restore it, or choose another --out.",
}


def _damaged(folder: Any, name: str, why: str):
  return workdir.RunDirectoryError(
      f"{str(folder.path / name)!r} is damaged ({why}); nothing was changed. "
      + _REPAIRS[name])


def _read_json(folder: Any, name: str, kind: type, what: str) -> Any:
  """A JSON file of the folder (``None`` if absent); one line if damaged."""
  text = folder.read_text(name)
  if text is None:
    return None
  try:
    value = json.loads(text)
  except ValueError as e:
    raise _damaged(folder, name, f"not JSON: {e}") from None
  if not isinstance(value, kind):
    raise _damaged(folder, name, f"a JSON {type(value).__name__}, not "
                   f"{what}")
  return value


def _read_runs(folder: Any) -> list[dict[str, Any]]:
  """The recorded runs; a damaged ``runs.json`` is refused, not replaced."""
  runs = _read_json(folder, "runs.json", list, "a list of runs") or []
  for i, run in enumerate(runs):
    try:
      if not isinstance(run["seed"], int):
        raise TypeError(run["seed"])
      point_name(run["point"])
    except (KeyError, TypeError, ValueError, IndexError):
      raise _damaged(folder, "runs.json", f"entry {i} is not a run with a "
                     "point and a seed") from None
  return runs


def _defining(settings: dict[str, Any]) -> dict[str, Any]:
  """The settings that change the runs: those a training run's resume may
  change (the evaluation's batch size, the checkpoints' spacing) do not."""
  base = {k: v for k, v in settings.get("base", {}).items()
          if k not in config_lib.RESUMABLE}
  return {**settings, "base": base} if "base" in settings else settings


def _differences(saved: dict[str, Any], given: dict[str, Any],
                 prefix: str = "") -> list[str]:
  """``"base.width 16 vs 32"`` for each setting that differs, nested dicts
  by their keys."""
  lines = []
  for k in sorted(set(saved) | set(given)):
    a, b = saved.get(k), given.get(k)
    if isinstance(a, dict) and isinstance(b, dict):
      lines += _differences(a, b, f"{prefix}{k}.")
    elif a != b:
      lines.append(f"{prefix}{k} {a!r} vs {b!r}")
  return lines


def _open_folder(out: str, settings: dict[str, Any],
                 log: Callable[[str], None]):
  """The locked output folder and its recorded runs: a frontier's own folder
  is resumed (:func:`workdir.open_output`), and one that recorded nothing
  may change settings."""
  folder = workdir.open_output(out, kind="frontier", files=(), resume=True)
  try:
    for note in folder.notes:
      log(note)
    runs = _read_runs(folder)
    saved = _read_json(folder, "settings.json", dict, "a frontier's settings")
    points = folder.path / "points"
    started = runs or (os.path.lexists(points) and os.listdir(points))
    diff = ", ".join(_differences(_defining(saved or {}),
                                  _defining(settings)))
    if diff and started:
      raise workdir.RunDirectoryError(
          f"{out!r} holds a frontier with other settings (saved vs given: "
          f"{diff}); choose another --out to change them.")
    if saved not in (None, settings):
      log(f"frontier: {out!r} holds no run yet; its settings are replaced."
          if diff else f"frontier: {out!r}: the evaluation's settings are "
          "updated (they change no run).")
    folder.write_json("settings.json", settings)
  except BaseException:
    folder.close(remove_if_empty=True)
    raise
  return folder, runs


def run_frontier(out: str, dataset: Any, base: dict[str, Any], grid: Grid, *,
                 validation: float = 0.1, max_error: float = 0.05,
                 tolerance: float = 0.002, test_each_epoch: bool = False,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
  """Runs (or resumes) a sweep; writes the table, JSON and figure to ``out``.

  Every (point, seed) run trains in ``out/points/<name>_seed<seed>`` and is
  recorded in ``runs.json`` once it has finished, so a rerun with the same
  settings skips it; a grid may grow between reruns, while the shared
  settings (``base``, ``validation``) may not change once a run has started.
  The settings are checked (:func:`check_settings`) before anything is
  written.

  A run that diverges (:class:`DivergedError`) is recorded as diverged
  (:func:`diverged_run`) and the sweep goes on: a rerun does not train it
  again, and its point is never selected.

  SIGINT or SIGTERM stops the sweep after the current step: the run's
  checkpoint is saved, nothing unfinished is recorded, and
  :class:`~bort_jax.experiments.signals.Interrupted` is raised; the same call
  again resumes that run from its checkpoint.

  Args:
    out: the output folder.
    dataset: the full dataset.
    base: the config fields every point shares.
    grid: the :class:`Grid`.
    validation: the held-out fraction of the training set.
    max_error: the constraint error the selection counts as tight.
    tolerance: the accuracy loss the selection counts as free.
    test_each_epoch: measure the test set after every epoch too, for the
      authors' protocol (:func:`run_point`); a setting of the folder, like
      ``validation``.
    log: called with progress lines.

  Returns:
    The contents of ``frontier.json``.

  Raises:
    ConfigError: a bad grid or setting (nothing is written).
    RunDirectoryError: ``out`` is not this frontier's folder, or its
      ``runs.json`` or ``settings.json`` is damaged (nothing is changed).
    Interrupted: a signal stopped the sweep.
  """
  check_settings(base, grid, validation=validation, max_error=max_error,
                 tolerance=tolerance, n_train=len(dataset.train.labels))
  settings = {"base": base, "validation": validation}
  if test_each_epoch:  # absent otherwise: older folders keep their settings
    settings["test_each_epoch"] = True
  folder, runs = _open_folder(out, settings, log)
  with folder, signals.StopRequest() as stop:
    done = {(point_name(r["point"]), r["seed"]) for r in runs}
    todo = [(p, s) for p in grid.points() for s in grid.seeds
            if (point_name(p), s) not in done]
    log(f"frontier: {len(done)} runs done, {len(todo)} to go -> {out}")
    again = f"Run the same frontier again (same --out {out}) to continue."
    for i, (point, seed) in enumerate(todo):
      where = _run_dir(folder, point, seed)
      if os.path.lexists(os.path.join(where, "config.json")):
        log(f"{point_name(point)} seed {seed}: resuming it from {where}")
      try:
        run = run_point(base, point, seed, dataset, validation=validation,
                        run_dir=where, test_each_epoch=test_each_epoch)
      except signals.Interrupted as e:
        raise signals.Interrupted(
            f"frontier: {e}. {again}", e.stopped_by) from None
      except DivergedError as e:
        run = diverged_run(point, seed, str(e))
      runs.append(run)
      folder.write_json("runs.json", runs)
      if run.get("diverged"):
        log(f"[{i + 1}/{len(todo)}] {point_name(point)} seed {seed}: "
            f"diverged ({run['diverged']}); recorded as diverged, and the "
            "sweep goes on")
      else:
        log(f"[{i + 1}/{len(todo)}] {point_name(point)} seed {seed}: val "
            f"{run['val_accuracy']:.4f} test {run['test_accuracy']:.4f} "
            f"constraint {text.number(run['constraint_error'], '.2e')} psnr "
            f"{text.number(run['reconstruction_psnr'], '.1f')}")
      if stop.requested is not None:  # came between two runs' training
        raise signals.Interrupted(
            f"frontier: stopped by {stop.requested} after "
            f"{point_name(point)} seed {seed}, which is recorded. {again}",
            stop.requested)
    points = aggregate(runs)
    chosen = select(points, max_error, tolerance)
    result = {"settings": settings, "max_error": max_error,
              "tolerance": tolerance, "psnr_pass_db": PSNR_PASS_DB,
              "points": points, "selected": selection_record(chosen)}
    folder.write_json("frontier.json", result)
    from bort_jax import explain
    folder.write_text("frontier.md", frontier_report.document(
        points, result["selected"], max_error, tolerance))
    with folder.atomic("frontier.png", "wb") as f:
      explain.save_figure(frontier_report.plot(points, chosen), f)
  return result


# ---------------------------------------------------------------------------
# The command line (``bort-jax frontier``; the shared config flags come from
# the training config, see :mod:`bort_jax.experiments.cli`).

#: The config fields the grid sets, whose training flags the frontier does not
#: take; every other field is shared by all points. An axis whose default is
#: the shared value (the learning rate: ``--lr``) keeps its shared flag.
GRID_FIELDS = ("optimizer", "placement", "seed",
               *(a.field for a in AXES if a.missing != (None,)))


def _list(convert):
  def parse(text: str):
    items = []
    parts = text.split(",")
    if len(parts) > 1 and not all(v.strip() for v in parts):
      raise argparse.ArgumentTypeError(
          f"an empty item in the list {text!r}; give values separated by "
          "single commas.")
    for v in parts:
      if v.strip():
        try:
          items.append(convert(v))
        except (TypeError, ValueError) as e:  # argparse would name `parse`
          where = f" (in the list {text!r})" if "," in text else ""
          raise argparse.ArgumentTypeError(f"{e}{where}") from None
    return tuple(items)
  return parse


def _shown(values: Sequence[Any], field: str) -> str:
  """An axis's default values in words: ``None`` keeps the shared flag."""
  shared = f"the shared {flags.flag(field)}"
  if field == "learning_rate":
    shared += ", else the optimizer's default"
  return ",".join(shared if v is None else str(v) for v in values)


def add_arguments(p: Any) -> None:
  """The grid's (:data:`AXES`) and the selection's flags (comma-separated)."""
  grid = Grid()
  p.add_argument("--out", required=True, help="output folder (resumable)")
  p.add_argument("--placements", type=_list(str), default=grid.placements,
                 help="decoupled (Bort-AdamW vs AdamW) and/or coupled "
                 "(Bort-SGD vs SGD)")
  for axis in AXES:
    for placement in (PLACEMENTS if axis.per_placement else (None,)):
      flag = _flag(axis, placement or "")
      values = grid.values(axis, placement)
      p.add_argument(flag, type=_list(axis.parse), default=values,
                     help=f"{axis.help.format(placement=placement)} "
                     f"(default: {_shown(values, axis.field)})")
  p.add_argument("--seeds", type=_list(int), default=grid.seeds,
                 help="seeds of every point (default: 0,1,2)")
  p.add_argument("--validation", type=float, default=0.1,
                 help="held-out share of the training set (default: 0.1)")
  p.add_argument("--max-error", type=float, default=0.05,
                 help="the constraint error the selection counts as tight "
                 "(default: 0.05)")
  p.add_argument("--tolerance", type=float, default=0.002,
                 help="the margin: validation accuracy below the baseline's "
                 "that counts as free (default: 0.002, 0.2 pp)")
  p.add_argument("--test-each-epoch", action="store_true",
                 help="also measure the test set after every epoch and "
                 "report its best epoch (the authors' protocol) beside the "
                 "clean one (the test set once, at the end)")


def grid_from_args(args: Any) -> Grid:
  """The :class:`Grid` of parsed ``bort-jax frontier`` arguments."""
  fields, defaults = {}, Grid()
  for axis in AXES:
    dest = lambda placement: _flag(axis, placement)[2:].replace("-", "_")
    fields[axis.attribute] = (
        {p: getattr(args, dest(p)) for p in PLACEMENTS} if axis.per_placement
        else getattr(args, dest("")))
    for p in PLACEMENTS if axis.per_placement else ():
      if (p not in args.placements
          and getattr(args, dest(p)) != defaults.values(axis, p)):
        raise ConfigError(
            f"{_flag(axis, p)} applies to the {p} placement, which "
            f"--placements leaves out; drop it, or add {p} to --placements.")
  return Grid(placements=args.placements, seeds=args.seeds, **fields)


def command(args: Any, base: dict[str, Any]) -> int:
  """Runs ``bort-jax frontier`` with parsed arguments.

  Returns:
    0 once the sweep is done; 130 (SIGINT) or 143 (SIGTERM) when a signal
    stopped it, after one line on stderr saying how to continue.
  """
  import sys

  from bort_jax.experiments import data as data_lib
  base = {"data": config_lib.TrainConfig.data,
          "model": config_lib.TrainConfig.model, **base}
  grid = grid_from_args(args)
  if grid.bort_starts == (None,):
    # Recorded in the settings (None: each placement's recommended start),
    # so a folder begun before the decoupled start became the default is
    # refused, not continued under it.
    base = {"bort_start_on_constraint": None, **base}
  # Before the data load (which may download); the sizes once it is loaded.
  check_settings(base, grid, validation=args.validation,
                 max_error=args.max_error, tolerance=args.tolerance)
  dataset = data_lib.load_splits(base["data"], download=not args.offline)
  try:
    result = run_frontier(args.out, dataset, base, grid,
                          validation=args.validation,
                          max_error=args.max_error, tolerance=args.tolerance,
                          test_each_epoch=args.test_each_epoch,
                          log=lambda line: print(line, flush=True))
  except signals.Interrupted as e:
    print(e, file=sys.stderr, flush=True)
    return e.exit_status
  print(frontier_report.table(result["points"], result["selected"]))
  for line in frontier_report.selection_lines(
      result["selected"], args.max_error, args.tolerance):
    print(line)
  return 0
