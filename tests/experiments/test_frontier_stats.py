"""The frontier's statistics: paired differences, PSNR counts, the lr axis.

Issue 16 item 2: every Bort point is paired seed by seed with its
placement's baseline chosen on validation, PSNR is a pass count and a
median beside a pseudo-inverse reference, the val−test gap is a column, the
selection states its rule and margin, and learning rates are a grid axis.
"""

import json
import math

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bort_jax.dbort import DBort
from bort_jax.experiments import cli
from bort_jax.experiments import frontier
from bort_jax.experiments import frontier_stats
from bort_jax.experiments import frontier_report
from bort_jax.experiments import probes
from bort_jax.experiments.config import ConfigError
from bort_jax.models.invertible import InvertibleCNN
from bort_jax.models.invertible import InvertibleMLP

T_975_DF2 = 4.302652729911275  # the 97.5 % quantile of Student's t, 2 df


def _run(point, seed, val, test, psnr=None, error=0.01):
  return {"point": point, "seed": seed, "val_accuracy": val,
          "test_accuracy": test, "constraint_error": error, "max_cosine": 0.1,
          "reconstruction_psnr": psnr, "pinv_psnr": None, "step_time_ms": 1.0}


ADAMW = {"placement": "decoupled", "optimizer": "adamw",
         "learning_rate": 0.001}
ADAMW_FAST = {**ADAMW, "learning_rate": 0.003}
BORT = {"placement": "decoupled", "optimizer": "bort-adamw",
        "learning_rate": 0.001, "mode": "l1-fullrow", "amplitude": "ada",
        "gamma": 1.0, "gamma_warmup": 0.0, "bort_every": 1}
SGD = {"placement": "coupled", "optimizer": "sgd"}
BORT_SGD = {"placement": "coupled", "optimizer": "bort-sgd",
            "mode": "l1-fullrow", "amplitude": "ada", "gamma": 0.01,
            "gamma_warmup": 0.0, "bort_every": 1}


def _hand_made_runs():
  runs = []
  for seed, (slow, fast, bort, sgd, bort_sgd) in enumerate(
      [(0.90, 0.93, 0.94, 0.80, 0.70), (0.91, 0.94, 0.96, 0.81, 0.72),
       (0.92, 0.95, 0.95, 0.82, 0.71)]):
    runs += [_run(ADAMW, seed, slow, slow - 0.01),
             _run(ADAMW_FAST, seed, fast, fast - 0.02),
             _run(BORT, seed, bort, bort - 0.02 - 0.01 * seed),
             _run(SGD, seed, sgd, sgd), _run(BORT_SGD, seed, bort_sgd, 0.5)]
  return runs


def _by_name(points):
  return {p["name"]: p for p in points}


def test_paired_differences_match_a_hand_computation():
  points = _by_name(frontier.aggregate(_hand_made_runs()))
  paired = points["bort-adamw_l1-fullrow_ada_g1_lr0.001"]["paired"]
  # The baseline with the best validation mean (lr 0.003), not the one at
  # the Bort point's own lr: d = bort − adamw_lr0.003 per seed.
  assert paired["baseline"] == "adamw_lr0.003"
  val, test = paired["val"], paired["test"]
  assert val["seeds"] == [0, 1, 2]
  np.testing.assert_allclose(val["d_pp"], [1.0, 2.0, 0.0], atol=1e-9)
  assert val["n"] == 3
  assert math.isclose(val["mean_pp"], 1.0, abs_tol=1e-9)
  assert math.isclose(val["std_pp"], 1.0, abs_tol=1e-9)  # sample std
  half = T_975_DF2 * 1.0 / math.sqrt(3)
  np.testing.assert_allclose(val["ci_pp"], [1 - half, 1 + half], atol=1e-9)
  # test: (bort − 0.02 − 0.01 s) − (fast − 0.02) = d_val − s pp.
  np.testing.assert_allclose(test["d_pp"], [1.0, 1.0, -2.0], atol=1e-9)
  assert math.isclose(test["mean_pp"], 0.0, abs_tol=1e-9)
  assert math.isclose(test["std_pp"], math.sqrt(3.0), abs_tol=1e-9)
  half = T_975_DF2 * math.sqrt(3.0) / math.sqrt(3)
  np.testing.assert_allclose(test["ci_pp"], [-half, half], atol=1e-9)
  # Baselines are the reference: they carry no paired differences.
  assert "paired" not in points["adamw_lr0.001"]


def test_one_seed_has_a_difference_but_no_interval():
  stats = frontier_stats.paired_statistics([0.02])
  assert stats["mean_pp"] == 2.0
  assert stats["std_pp"] is None and stats["ci_pp"] is None
  # Nor has its point a spread: the table says so rather than ± 0.00.
  one = [r for r in _hand_made_runs() if r["seed"] == 0]
  row = frontier_report.table(frontier.aggregate(one)).splitlines()[2]
  assert row.startswith("| adamw_lr0.001 | decoupled | 90.00 ± n/a |"), row


def test_each_placement_is_paired_with_its_own_baseline_chosen_on_validation():
  points = frontier.aggregate(_hand_made_runs())
  named = _by_name(points)
  paired = named["bort-sgd_l1-fullrow_ada_g0.01"]["paired"]
  assert paired["baseline"] == "sgd"
  np.testing.assert_allclose(paired["val"]["d_pp"], [-10.0, -9.0, -11.0],
                             atol=1e-9)
  chosen = frontier.select(points, max_error=0.05, tolerance=0.002)
  assert chosen["decoupled"]["baseline"] == "adamw_lr0.003"
  # The cost is measured against the chosen baseline (0.94 vs 0.95 mean).
  assert math.isclose(chosen["decoupled"]["cost"], -0.01, abs_tol=1e-9)
  assert chosen["coupled"]["baseline"] == "sgd"
  assert math.isclose(chosen["coupled"]["cost"], 0.1, abs_tol=1e-9)


def test_psnr_is_a_pass_count_and_a_median_with_the_raw_values_kept():
  runs = [_run(BORT, s, 0.9, 0.9, psnr=v)
          for s, v in enumerate([30.0, 20.0, 26.0])]
  summary = frontier_stats.summarize(runs)
  stat = summary["reconstruction_psnr"]
  assert stat["passed"] == 2 and stat["median"] == 26.0
  assert stat["values"] == [30.0, 20.0, 26.0]
  point = {"name": "p", "point": BORT, "summary": summary, "paired": None}
  row = frontier_report.table([point]).splitlines()[2]
  assert "| 2/3 | 26.0 |" in row, row
  assert "25.33" not in row  # the mean of dB values is not shown


def test_the_val_test_gap_is_the_mean_of_val_minus_test():
  points = _by_name(frontier.aggregate(_hand_made_runs()))
  gap = points["bort-adamw_l1-fullrow_ada_g1_lr0.001"]["summary"][
      "val_test_gap"]
  assert math.isclose(gap["mean"], 0.03, abs_tol=1e-9)  # 0.02 + 0.01 s
  text = frontier_report.document(
      list(points.values()), frontier.selection_record(frontier.select(
          list(points.values()))), 0.05, 0.002)
  assert "val−test pp" in text and "winner's curse" in text
  assert "1 Bort point and 2 baselines (decoupled)" in text
  assert "1 Bort point and 1 baseline (coupled)" in text


def test_the_best_test_epoch_is_paired_and_shown_only_where_measured():
  runs = []
  for seed, (base, bort) in enumerate([(0.90, 0.93), (0.91, 0.91),
                                       (0.92, 0.94)]):
    runs += [{**_run(ADAMW, seed, 0.9, 0.9), "best_test_accuracy": base},
             {**_run(BORT, seed, 0.9, 0.9), "best_test_accuracy": bort}]
  points = frontier.aggregate(runs)
  paired = _by_name(points)["bort-adamw_l1-fullrow_ada_g1_lr0.001"]["paired"]
  np.testing.assert_allclose(paired["best_test"]["d_pp"], [3.0, 0.0, 2.0],
                             atol=1e-9)
  assert paired["test"]["mean_pp"] == 0.0  # the clean protocol: no change
  header = frontier_report.table(points).splitlines()[0]
  assert "Δ best-epoch test pp [95% CI]" in header
  assert "| +1.67 [" in frontier_report.table(points).splitlines()[3]
  # Runs that measured the test set once only: no such column, n = 0.
  plain = frontier.aggregate(_hand_made_runs())
  assert "best-epoch" not in frontier_report.table(plain)
  assert _by_name(plain)["bort-adamw_l1-fullrow_ada_g1_lr0.001"]["paired"][
      "best_test"]["n"] == 0


# The pseudo-inverse reference -----------------------------------------------


def _mlp(kernel):
  model = InvertibleMLP((4, 4, 1), (16,), 3, rngs=nnx.Rngs(0))
  model.layers[1].kernel[...] = kernel
  return model


IMAGES = jnp.asarray(np.random.default_rng(0).uniform(size=(8, 4, 4, 1)),
                     jnp.float32)


def test_pinv_and_transpose_agree_on_an_orthogonal_first_layer():
  q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(16, 16)))
  model = _mlp(jnp.asarray(0.5 * q, jnp.float32))
  transpose = probes.first_stage_reconstruction(model, IMAGES)
  pinv = probes.first_stage_reconstruction(model, IMAGES, first_layer="pinv")
  np.testing.assert_allclose(pinv.images, transpose.images, atol=1e-4)
  assert transpose.psnr > 60 and pinv.psnr > 60


@pytest.mark.parametrize("first_layer", probes.FIRST_LAYER_INVERSES)
def test_a_dbort_wrapped_first_layer_is_the_first_stage(first_layer):
  # The wrapper has no kernel of its own: the probe skipped it and called
  # the second hidden layer's backtrack the first stage's.
  q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(16, 16)))
  plain = _mlp(jnp.asarray(0.5 * q, jnp.float32))
  wrapped = _mlp(jnp.asarray(0.5 * q, jnp.float32))
  wrapped.layers[1] = DBort(wrapped.layers[1])
  got = probes.first_stage_reconstruction(wrapped, IMAGES,
                                          first_layer=first_layer)
  want = probes.first_stage_reconstruction(plain, IMAGES,
                                           first_layer=first_layer)
  assert got.layer == want.layer == 2
  np.testing.assert_allclose(got.images, want.images, atol=1e-6)


def test_pinv_inverts_a_random_square_layer_the_transpose_does_not():
  w = np.random.default_rng(2).normal(size=(16, 16)) / 4
  model = _mlp(jnp.asarray(w, jnp.float32))
  transpose = probes.first_stage_reconstruction(model, IMAGES)
  pinv = probes.first_stage_reconstruction(model, IMAGES, first_layer="pinv")
  assert pinv.psnr > 60, pinv.psnr
  assert transpose.psnr < 25, transpose.psnr


@pytest.mark.slow
def test_pinv_inverts_a_random_convolution_through_its_padding():
  model = InvertibleCNN((6, 6, 1), (12,), (), 3, rngs=nnx.Rngs(0))
  images = jnp.asarray(np.random.default_rng(3).uniform(size=(2, 6, 6, 1)),
                       jnp.float32)
  pinv = probes.first_stage_reconstruction(model, images, first_layer="pinv")
  transpose = probes.first_stage_reconstruction(model, images)
  assert pinv.psnr > 50 and pinv.psnr > transpose.psnr + 10, (
      pinv.psnr, transpose.psnr)


def test_an_unknown_first_layer_inverse_is_refused():
  with pytest.raises(ValueError, match="first_layer must be one of"):
    probes.first_stage_reconstruction(_mlp(jnp.eye(16)), IMAGES, "inverse")


# The learning-rate axis ------------------------------------------------------


def test_without_lrs_the_points_and_names_are_those_of_older_frontiers():
  grid = frontier.Grid(gammas={"decoupled": (1.0,), "coupled": (0.01,)},
                       modes=("l1-fullrow",), amplitudes=("ada",))
  assert [frontier.point_name(p) for p in grid.points()] == [
      "adamw", "sgd", "bort-adamw_l1-fullrow_ada_g1",
      "bort-sgd_l1-fullrow_ada_g0.01"]
  assert all("learning_rate" not in p for p in grid.points())
  args = cli.build_parser().parse_args(["frontier", "--out", "x"])
  assert frontier.grid_from_args(args) == frontier.Grid()


def test_an_lr_axis_runs_baseline_and_bort_at_every_lr_of_its_placement():
  args = cli.build_parser().parse_args(
      ["frontier", "--out", "x", "--lrs-decoupled", "1e-3,3e-3",
       "--gammas-decoupled", "1", "--gammas-coupled", "0.01", "--modes",
       "l1-fullrow", "--amplitudes", "ada"])
  grid = frontier.grid_from_args(args)
  names = [frontier.point_name(p) for p in grid.points()]
  assert names == ["adamw_lr0.001", "adamw_lr0.003", "sgd",
                   "bort-adamw_l1-fullrow_ada_g1_lr0.001",
                   "bort-adamw_l1-fullrow_ada_g1_lr0.003",
                   "bort-sgd_l1-fullrow_ada_g0.01"]
  assert [p.get("learning_rate") for p in grid.points()] == [
      0.001, 0.003, None, 0.001, 0.003, None]
  frontier.check_settings({"data": "digits"}, grid)  # every point is valid


def test_an_lr_axis_refuses_repeats_bad_values_and_a_shared_lr():
  with pytest.raises(ConfigError, match="^--lrs-coupled repeats 0.1;"):
    frontier.Grid(lrs={"coupled": (0.1, 0.1)})
  with pytest.raises(ConfigError, match="^--lrs-decoupled takes positive"):
    frontier.Grid(lrs={"decoupled": (-1.0,)})
  with pytest.raises(ConfigError, match="^--lr and --lrs-decoupled both"):
    frontier.check_settings({"learning_rate": 0.01},
                            frontier.Grid(lrs={"decoupled": (0.001,)}))


# The selection ---------------------------------------------------------------


def test_no_point_meets_max_error_is_said_plainly():
  points = frontier.aggregate(_hand_made_runs())
  chosen = frontier.select(points, max_error=1e-9, tolerance=0.002)
  assert not chosen["decoupled"]["meets_max_error"]
  lines = frontier_report.selection_lines(
      frontier.selection_record(chosen), 1e-9, 0.002)
  assert lines[0].startswith(
      "no point meets --max-error 1e-09 (decoupled); the tightest is "
      "bort-adamw_l1-fullrow_ada_g1_lr0.001 (constraint error 0.01)"), lines
  assert not any(line.startswith("selected") for line in lines)
  table = frontier_report.table(points, frontier.selection_record(chosen))
  assert "(selected)" not in table and "(tightest; none meets" in table
  lines = frontier_report.selection_lines(
      frontier.selection_record(frontier.select(points, 0.05, 0.002)), 0.05,
      0.002)
  assert lines[0] == (
      "selected (decoupled, on validation): "
      "bort-adamw_l1-fullrow_ada_g1_lr0.001, the most accurate point on "
      "validation with constraint error <= 0.05; 1.00 pp above its baseline "
      "adamw_lr0.003 on validation, within the 0.20 pp margin (free on "
      "validation); paired test difference +0.00 [-4.30, +4.30] pp over 3 "
      "seeds: not resolved on test by the 0.20 pp margin"), lines[0]


def test_a_baseline_with_a_diverged_seed_is_never_the_baseline():
  # The faster AdamW is the best on validation, until one of its seeds
  # diverges: its mean then covers two seeds, and the pairing two.
  runs = [r for r in _hand_made_runs()
          if not (r["point"] is ADAMW_FAST and r["seed"] == 1)]
  runs.append(frontier_stats.diverged_run(ADAMW_FAST, 1, "loss became nan"))
  bort = _by_name(frontier.aggregate(runs))[
      "bort-adamw_l1-fullrow_ada_g1_lr0.001"]
  assert bort["paired"]["baseline"] == "adamw_lr0.001"
  assert bort["paired"]["val"]["seeds"] == [0, 1, 2]
  assert frontier.select(frontier.aggregate(runs))["decoupled"][
      "baseline"] == "adamw_lr0.001"


def test_the_cost_of_a_pick_is_paired_over_the_seeds_both_have():
  # A grown grid: Bort has a third seed its baseline lacks. Unpaired, it
  # would look 2 pp above; on the seeds both have it is 1 pp below.
  runs = [_run(ADAMW, s, 0.90, 0.90) for s in (0, 1)]
  runs += [_run(BORT, s, v, v) for s, v in ((0, 0.89), (1, 0.89), (2, 0.98))]
  chosen = frontier.select(frontier.aggregate(runs), 0.05, 0.002)
  assert chosen["decoupled"]["cost"] == pytest.approx(0.01)
  assert not chosen["decoupled"]["free"]
  line = frontier_report.selection_lines(
      frontier.selection_record(chosen), 0.05, 0.002)[0]
  assert "1.00 pp below its baseline adamw_lr0.001" in line, line
  bort = _by_name(frontier.aggregate(runs))[
      "bort-adamw_l1-fullrow_ada_g1_lr0.001"]
  assert "(n=2)" in frontier_report.table([bort]), "the Δ's fewer seeds"


def test_a_cost_equal_to_the_margin_but_for_rounding_is_within_it():
  # 64 + 61 = 65 + 60 correct of 135 a seed: equal means, whose paired
  # difference rounds to 5.6e-17, not 0.
  runs = [_run(ADAMW, 0, 64 / 135, 0.5), _run(ADAMW, 1, 61 / 135, 0.5),
          _run(BORT, 0, 65 / 135, 0.5), _run(BORT, 1, 60 / 135, 0.5)]
  chosen = frontier.select(frontier.aggregate(runs), 0.05, tolerance=0.0)
  assert chosen["decoupled"]["cost"] != 0 and chosen["decoupled"]["free"]


def test_the_selection_reads_the_paired_test_interval_by_the_margin():
  chosen = frontier.select(frontier.aggregate(_hand_made_runs()), 0.05,
                           0.002)
  record = frontier.selection_record(chosen)
  record["decoupled"]["paired_test"] = {"n": 3, "mean_pp": -0.3,
                                        "ci_pp": [-0.5, -0.21]}
  line = frontier_report.selection_lines(record, 0.05, 0.002)[0]
  assert line.endswith("over 3 seeds: costly on test by the 0.20 pp margin")


def test_the_figure_draws_points_without_psnr_and_no_empty_colour_bar():
  points = frontier.aggregate(_hand_made_runs())  # no PSNR anywhere
  fig = frontier_report.plot(points, frontier.select(points))
  assert len(fig.axes) == 2  # two panels, no colour bar
  borts = [ax.collections for ax in fig.axes]
  offsets = [np.asarray(c.get_offsets()) for cs in borts for c in cs
             if len(c.get_offsets())]
  drawn = {tuple(o) for arr in offsets for o in arr}
  assert (0.01, 100 * 0.95) in {(round(e, 6), round(a, 6)) for e, a in drawn}
  for ax in fig.axes:
    colours = [c.get_facecolors() for c in ax.collections
               if len(c.get_offsets())]
    assert any(len(f) and f[0][3] > 0 for f in colours)  # not transparent


def test_log_axis_tick_labels_do_not_overlap():
  runs = []
  for i, error in enumerate([0.0021, 0.0034, 0.0052, 0.0078]):
    point = {**BORT, "gamma": float(i + 1)}
    runs += [_run(point, s, 0.9, 0.9, psnr=30.0, error=error)
             for s in range(2)]
  runs += [_run(ADAMW, s, 0.9, 0.9) for s in range(2)]
  fig = frontier_report.plot(frontier.aggregate(runs))
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  canvas = FigureCanvasAgg(fig)
  canvas.draw()
  renderer = canvas.get_renderer()
  ax = fig.axes[0]
  labels = [t for t in ax.get_xticklabels(which="both")
            if t.get_visible() and t.get_text()]
  assert labels
  boxes = [t.get_window_extent(renderer) for t in labels]
  lo, hi = ax.get_xlim()
  inside = [b for b, t in zip(boxes, labels) if lo <= t.get_position()[0] <= hi]
  for i, a in enumerate(inside):
    for b in inside[i + 1:]:
      assert not a.overlaps(b), (a, b)


# End to end ------------------------------------------------------------------


@pytest.mark.slow
def test_a_tiny_frontier_on_digits_writes_the_new_columns(tmp_path, capsys):
  out = tmp_path / "f"
  status = cli.main(
      ["frontier", "--data", "digits", "--model", "invertible-mlp", "--width",
       "8", "--epochs", "1", "--batch-size", "256", "--offline",
       "--no-progress", "--placements", "decoupled", "--gammas-decoupled",
       "1", "--modes", "l1-fullrow", "--amplitudes", "ada", "--seeds", "0,1",
       "--out", str(out)])
  assert status == 0
  printed = capsys.readouterr().out
  result = json.loads((out / "frontier.json").read_text())
  bort = _by_name(result["points"])["bort-adamw_l1-fullrow_ada_g1"]
  assert bort["paired"]["baseline"] == "adamw"
  for split in ("val", "test"):
    assert bort["paired"][split]["n"] == 2
    assert len(bort["paired"][split]["ci_pp"]) == 2
  psnr = bort["summary"]["reconstruction_psnr"]
  assert len(psnr["values"]) == 2 and "passed" in psnr and "median" in psnr
  assert bort["summary"]["pinv_psnr"]["median"] > 0
  assert "paired_test" in result["selected"]["decoupled"]
  md = (out / "frontier.md").read_text()
  for column in ("Δval pp [95% CI]", "Δtest pp [95% CI]", "val−test pp",
                 "PSNR ≥25 dB", "PSNR median dB", "pinv PSNR median dB"):
    assert column in md and column in printed
  assert "winner's curse" in md and "margin" in md
  line = [x for x in printed.splitlines()
          if x.startswith(("selected (decoupled", "no point meets"))]
  assert len(line) == 1 and "paired test difference" in line[0], printed


@pytest.mark.slow
def test_test_each_epoch_records_the_authors_protocol_beside_the_clean_one(
    tmp_path):
  """The test set measured after every epoch: the best epoch is the
  maximum over epochs 1.. of the history, the last equals the clean test."""
  out = tmp_path / "f"
  status = cli.main(
      ["frontier", "--data", "digits", "--model", "mlp", "--width", "8",
       "--epochs", "3", "--batch-size", "256", "--offline", "--no-progress",
       "--placements", "decoupled", "--gammas-decoupled", "1", "--modes",
       "l1-fullrow", "--amplitudes", "ada", "--seeds", "0", "--out",
       str(out), "--test-each-epoch"])
  assert status == 0
  runs = json.loads((out / "runs.json").read_text())
  assert json.loads((out / "settings.json").read_text())["test_each_epoch"]
  for run in runs:
    each = [r["holdout_accuracy"] for r in run["history"]]
    assert len(each) == 4  # epoch 0 (the start) and the three epochs
    assert run["best_test_accuracy"] == max(each[1:])
    assert math.isclose(each[-1], run["test_accuracy"], abs_tol=1e-9)
  assert "best-epoch test acc %" in (out / "frontier.md").read_text()
  # The folder's setting: the same folder without the flag is refused.
  with pytest.raises(SystemExit) as info:
    cli.main(
      ["frontier", "--data", "digits", "--model", "mlp", "--width", "8",
       "--epochs", "3", "--batch-size", "256", "--offline", "--no-progress",
       "--placements", "decoupled", "--gammas-decoupled", "1", "--modes",
       "l1-fullrow", "--amplitudes", "ada", "--seeds", "0,1", "--out",
       str(out)])
  assert info.value.code == 2


@pytest.mark.slow
def test_a_diverged_run_is_recorded_and_the_sweep_goes_on(tmp_path, capsys):
  """A point that diverges (l2-full at a per-step strength of 1e3) is a
  result: recorded once, never retrained, never selected; the other points
  of the sweep still run."""
  out = tmp_path / "f"
  argv = ["frontier", "--data", "digits", "--model", "mlp", "--width", "8",
          "--epochs", "1", "--batch-size", "256", "--offline",
          "--no-progress", "--placements", "decoupled", "--gammas-decoupled",
          "1,1000000", "--modes", "l2-full", "--amplitudes", "1", "--seeds",
          "0", "--no-bort-start-on-constraint", "--out", str(out)]
  assert cli.main(argv) == 0
  printed = capsys.readouterr().out
  runs = {frontier.point_name(r["point"]): r
          for r in json.loads((out / "runs.json").read_text())}
  bad = runs["bort-adamw_l2-full_c1_g1e+06"]
  assert "non-finite" in bad["diverged"] or "nan" in bad["diverged"]
  assert bad["val_accuracy"] is None and bad["test_accuracy"] is None
  good = runs["bort-adamw_l2-full_c1_g1"]
  assert not good.get("diverged") and good["val_accuracy"] > 0
  assert "recorded as diverged, and the sweep goes on" in printed
  assert "| 1 (1 diverged) |" in (out / "frontier.md").read_text()
  result = json.loads((out / "frontier.json").read_text())
  assert result["selected"]["decoupled"]["name"] == "bort-adamw_l2-full_c1_g1"
  assert cli.main(argv) == 0  # resumed: the diverged run is not retrained
  assert "1 diverged" not in capsys.readouterr().out.split("\n")[0]
  assert len(json.loads((out / "runs.json").read_text())) == 3
