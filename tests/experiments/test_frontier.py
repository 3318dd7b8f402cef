"""The frontier sweep: Pareto front, selection on validation, resume."""

import json

import pytest

from bort_jax.experiments import data as data_lib
from bort_jax.experiments import cli
from bort_jax.experiments import frontier
from bort_jax.experiments import frontier_stats
from bort_jax.experiments.cli import main
from bort_jax.experiments.config import ConfigError
from bort_jax.experiments.config import TrainConfig
from bort_jax.experiments.workdir import RunDirectoryError


def test_pareto_front_keeps_exactly_the_undominated_points():
  errors = [0.5, 0.1, 0.1, 0.01, 0.3]
  accuracies = [0.99, 0.95, 0.97, 0.90, 0.96]
  front = frontier_stats.pareto_front(errors, accuracies)
  assert front == [3, 2, 0]
  for i in range(len(errors)):
    dominated = any(errors[j] <= errors[i] and accuracies[j] >= accuracies[i]
                    and (errors[j], accuracies[j]) != (errors[i], accuracies[i])
                    for j in range(len(errors)))
    assert (i in front) == (not dominated)


def _point(placement, optimizer, val, err, gamma=None):
  point = {"placement": placement, "optimizer": optimizer}
  if gamma is not None:
    point.update(mode="l1-fullrow", amplitude="ada", gamma=gamma,
                 gamma_warmup=0.0)
  stat = lambda v: None if v is None else {"mean": v, "std": 0.0, "n": 3,
                                           "values": [v] * 3}
  return {"name": frontier.point_name(point), "point": point,
          "summary": {"val_accuracy": stat(val), "constraint_error": stat(err),
                      "test_accuracy": stat(0.0), "seeds": [0, 1, 2]}}


def test_selection_takes_the_most_accurate_tight_point_on_validation():
  points = [_point("decoupled", "adamw", 0.9795, 1.2),
            _point("decoupled", "bort-adamw", 0.979, 0.30, 0.1),
            _point("decoupled", "bort-adamw", 0.978, 0.01, 1.0),
            _point("decoupled", "bort-adamw", 0.950, 1e-6, 3.0)]
  points[3]["summary"]["test_accuracy"] = {"mean": 0.999, "std": 0, "n": 3}
  chosen = frontier.select(points, max_error=0.05, tolerance=0.002)["decoupled"]
  assert chosen["point"]["gamma"] == 1.0  # the test accuracy plays no part
  assert chosen["free"] and abs(chosen["cost"] - 0.0015) < 1e-12
  chosen = frontier.select(points, max_error=1e-5)["decoupled"]
  assert chosen["point"]["gamma"] == 3.0 and not chosen["free"]
  # Nothing tight enough: the tightest point.
  chosen = frontier.select(points, max_error=1e-9)["decoupled"]
  assert chosen["point"]["gamma"] == 3.0


def test_a_baseline_recorded_without_a_head_setting_ran_with_the_head():
  # Baselines took --bort-heads later: an older frontier's baseline has no
  # bort_head and pairs with the Bort points that kept the head (it paired
  # with none).
  baseline = _point("decoupled", "adamw", 0.97, 1.2)
  points = [baseline]
  for head in (True, False):
    points.append(_point("decoupled", "bort-adamw", 0.96, 0.01, 1.0))
    points[-1]["point"]["bort_head"] = head
  assert frontier.choose_baseline(points[1], points) is baseline
  assert frontier.choose_baseline(points[2], points) is None


@pytest.fixture(scope="module")
def digits():
  return data_lib.load_splits("digits")


BASE = {"data": "digits", "model": "invertible-mlp", "width": 16,
        "epochs": 1, "batch_size": 64, "train_limit": 640}


@pytest.mark.slow
def test_frontier_runs_end_to_end_and_resumes(digits, tmp_path):
  out = str(tmp_path / "frontier")
  grid = frontier.Grid(gammas={"decoupled": (1.0,), "coupled": (0.003,)},
                       modes=("l1-fullrow",), amplitudes=("ada",),
                       seeds=(0, 1))
  lines = []
  result = frontier.run_frontier(out, digits, BASE, grid, log=lines.append)
  assert "0 runs done, 8 to go" in lines[0]
  names = {p["name"] for p in result["points"]}
  assert names == {"adamw", "sgd", "bort-adamw_l1-fullrow_ada_g1",
                   "bort-sgd_l1-fullrow_ada_g0.003"}
  for p in result["points"]:
    assert p["summary"]["val_accuracy"]["n"] == 2
    assert p["summary"]["reconstruction_psnr"] is not None
  assert set(result["selected"]) == {"decoupled", "coupled"}
  for name in ("frontier.json", "frontier.md", "frontier.png", "runs.json"):
    assert (tmp_path / "frontier" / name).stat().st_size > 0
  runs = json.loads((tmp_path / "frontier" / "runs.json").read_text())
  assert len(runs) == 8 and all(0 <= r["test_accuracy"] <= 1 for r in runs)
  # Each run trained in its own folder, which a rerun resumes.
  assert (tmp_path / "frontier" / "points" / "sgd_seed1" / "checkpoints"
          ).is_dir()

  lines.clear()  # a rerun trains nothing; a grown grid only the new points
  frontier.run_frontier(out, digits, BASE, grid, log=lines.append)
  assert "8 runs done, 0 to go" in lines[0]
  grown = frontier.Grid(gammas={"decoupled": (1.0, 3.0), "coupled": (0.003,)},
                        modes=("l1-fullrow",), amplitudes=("ada",),
                        seeds=(0, 1), placements=("decoupled", "coupled"))
  lines.clear()
  frontier.run_frontier(out, digits, BASE, grown, log=lines.append)
  assert "8 runs done, 2 to go" in lines[0]

  with pytest.raises(RunDirectoryError, match="other settings"):
    frontier.run_frontier(out, digits, {**BASE, "epochs": 2}, grid)


def test_frontier_refuses_a_folder_that_is_not_a_frontier(tmp_path, digits):
  (tmp_path / "mine.txt").write_text("keep")
  with pytest.raises(RunDirectoryError, match="holds no frontier"):
    frontier.run_frontier(str(tmp_path), digits, BASE, frontier.Grid())
  assert (tmp_path / "mine.txt").read_text() == "keep"


def test_frontier_cli_checks_every_point_before_any_work(tmp_path, capsys):
  with pytest.raises(SystemExit) as info:
    main(["frontier", "--data", "digits", "--out", str(tmp_path / "f"),
          "--modes", "l9-nonsense"])
  assert info.value.code == 2
  assert "l9-nonsense" in capsys.readouterr().err
  assert not (tmp_path / "f").exists()


def test_an_every_grid_names_its_points_and_keeps_every_one_names():
  grid = frontier.Grid(gammas={"decoupled": (1.0,)}, modes=("l1-fullrow",),
                       amplitudes=("ada",), placements=("decoupled",),
                       bort_everys=(1, 4))
  names = [frontier.point_name(p) for p in grid.points()]
  # every=1 keeps the name of a run saved before bort_every existed, so an
  # older frontier folder resumes without retraining it.
  assert names == ["adamw", "bort-adamw_l1-fullrow_ada_g1",
                   "bort-adamw_l1-fullrow_ada_g1_every4"]
  assert [p.get("bort_every") for p in grid.points()] == [None, 1, 4]
  for point in grid.points():  # each point is a valid config
    TrainConfig(**BASE, **{k: v for k, v in point.items()
                           if k != "placement"})


def test_lever_axes_vary_their_fields_and_name_their_points():
  grid = frontier.Grid(
      gammas={"decoupled": (1.0,)}, modes=("l1-fullrow",),
      placements=("decoupled",), amplitudes=("ada",),
      inits=("default", "orthogonal"), gamma_schedules=("constant", "late"),
      bort_heads=(True, False), bort_lr_scales=(1.0, 2.0), seeds=(0,))
  points = grid.points()
  baselines = [p for p in points if "gamma" not in p]
  borts = [p for p in points if "gamma" in p]
  # The init and the head apply to the baselines too (a baseline starts
  # and is measured on its Bort point's kernels); the Bort-only levers not.
  assert [(p["init"], p["bort_head"]) for p in baselines] == [
      ("default", True), ("default", False), ("orthogonal", True),
      ("orthogonal", False)]
  assert all("gamma_schedule" not in p for p in baselines)
  assert len(borts) == 16
  names = {frontier.point_name(p) for p in borts}
  assert len(names) == 16
  assert ("bort-adamw_l1-fullrow_ada_g1_initorthogonal_schedlate_headno"
          "_lrscale2") in names
  # Left alone, an axis adds nothing: the field keeps its shared value.
  plain = frontier.Grid(gammas={"decoupled": (1.0,)}, placements=("decoupled",),
                        modes=("l1-fullrow",), amplitudes=("ada",), seeds=(0,))
  assert [frontier.point_name(p) for p in plain.points()] == [
      "adamw", "bort-adamw_l1-fullrow_ada_g1"]
  assert all("init" not in p for p in plain.points())


def test_the_lagged_axis_names_its_points_and_reaches_the_config():
  args = cli.build_parser().parse_args(
      ["frontier", "--out", "x", "--placements", "decoupled",
       "--modes", "huber-fullrow", "--amplitudes", "ada",
       "--gammas-decoupled", "1", "--bort-everys", "4",
       "--bort-laggeds", "false,true", "--seeds", "0"])
  grid = frontier.grid_from_args(args)
  assert grid.bort_laggeds == (False, True)
  borts = [p for p in grid.points() if "gamma" in p]
  assert [frontier.point_name(p) for p in borts] == [
      "bort-adamw_huber-fullrow_ada_g1_every4_laggedno",
      "bort-adamw_huber-fullrow_ada_g1_every4_laggedyes"]
  assert [TrainConfig(**BASE, **{k: v for k, v in p.items()
                                 if k != "placement"}).bort_lagged
          for p in borts] == [False, True]


def test_the_switch_axis_adds_an_anneal_arm_beside_a_constant_sweep():
  """--gamma-switches names its points and reaches gamma_switch; a constant
  schedule with a switch is refused (a setting is never silently ignored),
  and the baseline, without Bort, keeps its name (a second command into the
  same folder adds the anneal arm without retraining it)."""
  args = cli.build_parser().parse_args(
      ["frontier", "--out", "x", "--placements", "coupled",
       "--modes", "l1-fullrow", "--amplitudes", "ada",
       "--gammas-coupled", "0.003", "--gamma-schedules", "anneal",
       "--gamma-switches", "0.5", "--seeds", "0"])
  grid = frontier.grid_from_args(args)
  assert [frontier.point_name(p) for p in grid.points()] == [
      "sgd", "bort-sgd_l1-fullrow_ada_g0.003_schedanneal_switch0.5"]
  anneal = frontier.point_config(BASE, grid.points()[1], 0)
  assert (anneal.gamma_schedule, anneal.gamma_switch) == ("anneal", 0.5)
  constant = frontier.Grid(
      gammas={"coupled": (0.003,)}, placements=("coupled",),
      modes=("l1-fullrow",), amplitudes=("ada",),
      gamma_schedules=("constant",), gamma_switches=(0.5,), seeds=(0,))
  with pytest.raises(ConfigError, match="--gamma-switches applies to no "):
    frontier.check_settings(BASE, constant)


def test_the_tau_axis_names_its_points_and_reaches_the_config():
  args = cli.build_parser().parse_args(
      ["frontier", "--out", "x", "--placements", "coupled",
       "--modes", "huber-fullrow", "--amplitudes", "ada",
       "--gammas-coupled", "0.003", "--taus", "0.01,0.003,step",
       "--seeds", "0"])
  borts = [p for p in frontier.grid_from_args(args).points() if "gamma" in p]
  assert [frontier.point_name(p) for p in borts] == [
      "bort-sgd_huber-fullrow_ada_g0.003_tau0.01",
      "bort-sgd_huber-fullrow_ada_g0.003_tau0.003",
      "bort-sgd_huber-fullrow_ada_g0.003_taustep"]
  assert [frontier.point_config(BASE, p, 0).tau for p in borts] == [
      0.01, 0.003, "step"]


@pytest.mark.parametrize("shared, grid_flags, message", [
    ({"tau": 0.05}, ["--modes", "huber-fullrow", "--taus", "step"],
     "--tau and --taus both set tau; give one of them."),
    ({"init": "orthogonal"}, ["--inits", "default"],
     "--init and --inits both set init; give one of them."),
    ({"learning_rate": 0.01}, ["--lrs-coupled", "0.1"],
     "--lr and --lrs-coupled both set learning_rate; give one of them (--lr "
     "is the default of a placement without --lrs-*)."),
])
def test_a_shared_flag_and_its_grid_axis_are_refused(shared, grid_flags,
                                                      message):
  """The grid's values won and the shared one was dropped (yet saved in
  settings.json, so a rerun without it was refused)."""
  args = cli.build_parser().parse_args(
      ["frontier", "--out", "x", "--placements", "coupled", "--seeds", "0",
       *grid_flags])
  grid = frontier.grid_from_args(args)
  frontier.check_settings(BASE, grid)  # the grid alone is fine
  with pytest.raises(ConfigError) as info:
    frontier.check_settings({**BASE, **shared}, grid)
  assert str(info.value) == message


def test_flags_the_sweep_would_ignore_are_refused(capsys):
  """Each was accepted and dropped: a per-placement flag of a placement
  the sweep leaves out, an empty item in a list, a DBort power without a
  DBort term."""
  parse = lambda *flags: cli.build_parser().parse_args(
      ["frontier", "--out", "x", "--placements", "decoupled", *flags])
  with pytest.raises(ConfigError, match="--gammas-coupled applies to the "
                     "coupled placement, which --placements leaves out"):
    frontier.grid_from_args(parse("--gammas-coupled", "0.01"))
  with pytest.raises(SystemExit):
    parse("--seeds", "0,,1")
  assert "an empty item in the list '0,,1'" in capsys.readouterr().err
  grid = frontier.grid_from_args(parse())
  with pytest.raises(ConfigError, match="--dbort-power applies with a DBort "
                     "term only"):
    frontier.check_settings({**BASE, "dbort_power": 0.3}, grid)
  frontier.check_settings({**BASE, "dbort_power": 0.3, "dbort_weight": 1e-3},
                          grid)


def test_the_shared_momentum_reaches_the_sgd_points_only():
  """The config refuses momentum for AdamW: a frontier over both placements
  with --momentum must still run (its AdamW points keep their own)."""
  args = cli.build_parser().parse_args(
      ["frontier", "--out", "x", "--seeds", "0"])
  grid = frontier.grid_from_args(args)
  base = {**BASE, "momentum": 0.8}
  frontier.check_settings(base, grid)
  momenta = {p["optimizer"]: frontier.point_config(base, p, 0).momentum
             for p in grid.points()}
  assert momenta["sgd"] == momenta["bort-sgd"] == 0.8
  assert momenta["adamw"] == momenta["bort-adamw"] == TrainConfig.momentum


def test_lever_flags_are_parsed_and_the_shared_flags_stay():
  parser = cli.build_parser()
  args = parser.parse_args(
      ["frontier", "--out", "x", "--init", "orthogonal", "--bort-heads",
       "true,false", "--gamma-schedules", "constant,anneal"])
  grid = frontier.grid_from_args(args)
  assert grid.bort_heads == (True, False)
  assert grid.gamma_schedules == ("constant", "anneal")
  assert grid.inits == (None,) and args.init == "orthogonal"
  with pytest.raises(SystemExit):
    parser.parse_args(["frontier", "--out", "x", "--bort-heads", "maybe"])


@pytest.mark.parametrize("flags,recorded", [
    ([], None),  # each placement's recommended start, recorded as such
    (["--no-bort-start-on-constraint"], False),
    (["--bort-starts", "false,true"], "absent")])
def test_the_settings_record_the_start_so_older_folders_are_refused(
    monkeypatch, tmp_path, flags, recorded):
  """A folder begun before the decoupled start became the default saved a
  base without it: any base that holds it differs, so the folder is
  refused, not continued under the new default."""
  seen = {}

  def stop(out, dataset, base, grid, **kwargs):
    seen["base"] = base
    raise KeyboardInterrupt  # the command line's stop: exit 130

  monkeypatch.setattr(frontier, "run_frontier", stop)
  with pytest.raises(SystemExit):
    main(["frontier", "--data", "digits", "--offline", "--out",
          str(tmp_path / "f"), *flags])
  if recorded == "absent":  # the grid varies it: the point names say it
    assert "bort_start_on_constraint" not in seen["base"]
  else:
    assert seen["base"]["bort_start_on_constraint"] is recorded


def test_a_gated_lever_crosses_its_gate_and_applies_where_it_means_something():
  grid = frontier.Grid(gammas={"decoupled": (1.0,)},
                       modes=("l1-fullrow", "huber-fullrow"),
                       amplitudes=("ada",), placements=("decoupled",),
                       bort_everys=(1, 8), bort_laggeds=(False, True),
                       taus=(0.01, 0.02))
  names = [frontier.point_name(p) for p in grid.points()]
  # τ only with the Huber mode, lagging only every 8: each run once.
  assert names == [
      "adamw",
      "bort-adamw_l1-fullrow_ada_g1",
      "bort-adamw_l1-fullrow_ada_g1_every8_laggedno",
      "bort-adamw_l1-fullrow_ada_g1_every8_laggedyes",
      "bort-adamw_huber-fullrow_ada_g1_tau0.01",
      "bort-adamw_huber-fullrow_ada_g1_tau0.02",
      "bort-adamw_huber-fullrow_ada_g1_every8_tau0.01_laggedno",
      "bort-adamw_huber-fullrow_ada_g1_every8_tau0.01_laggedyes",
      "bort-adamw_huber-fullrow_ada_g1_every8_tau0.02_laggedno",
      "bort-adamw_huber-fullrow_ada_g1_every8_tau0.02_laggedyes"]
  for point in grid.points():  # each point is a valid config
    frontier.point_config({"data": "digits"}, point, 0)


@pytest.mark.parametrize("field, values, message", [
    ("taus", (0.01,), "--taus applies to no point"),
    ("bort_laggeds", (True,), "--bort-laggeds applies to no point"),
    ("gamma_switches", (0.5,), "--gamma-switches applies to no point"),
])
def test_a_gated_lever_that_applies_to_no_point_is_refused(field, values,
                                                           message):
  grid = frontier.Grid(gammas={"decoupled": (1.0,)}, modes=("l1-fullrow",),
                       amplitudes=("ada",), placements=("decoupled",),
                       gamma_schedules=("constant",), **{field: values})
  with pytest.raises(frontier.ConfigError, match=message):
    grid.points()


def test_a_gated_lever_whose_gate_is_a_shared_flag_is_left_to_the_config():
  grid = frontier.Grid(gammas={"decoupled": (1.0,)}, modes=("l1-fullrow",),
                       amplitudes=("ada",), placements=("decoupled",),
                       gamma_switches=(0.3, 0.5))
  points = grid.points()
  assert [p.get("gamma_switch") for p in points] == [None, 0.3, 0.5]
  config = frontier.point_config({"data": "digits", "gamma_schedule": "late"},
                                 points[1], 0)
  assert config.gamma_switch == 0.3
