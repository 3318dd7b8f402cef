"""The frontier sweep is safe with signals, grids and its own files.

One test (or two) per finding of the red team's second pass on the
frontier: N1 (a signal during a point), N5 (repeated and near-duplicate grid
values), M1 (a bad ``--validation``, a damaged ``runs.json``). Each fails on
the frontier as it was before the fixes.
"""

import json
import os
import signal

import pytest

from bort_jax.experiments import cli
from bort_jax.experiments import config as config_lib
from bort_jax.experiments import data as data_lib
from bort_jax.experiments import frontier
from bort_jax.experiments import loop
from bort_jax.experiments import workdir
from bort_jax.experiments import signals
from bort_jax.experiments.config import ConfigError
from bort_jax.experiments.workdir import RunDirectoryError

# 1347 digits, 10 % held out: 1212 to train on, 4 steps of 256 per epoch.
BASE = {"data": "digits", "model": "mlp", "width": 8, "epochs": 1,
        "batch_size": 256, "learning_rate": 1e-2}
FLAGS = ["--data", "digits", "--model", "mlp", "--width", "8", "--epochs", "1",
         "--batch-size", "256", "--lr", "0.01", "--offline", "--no-progress"]
# Two points (AdamW and one Bort-AdamW), one seed.
GRID = frontier.Grid(gammas={"decoupled": (1.0,)}, modes=("l1-fullrow",),
                     amplitudes=("ada",), placements=("decoupled",),
                     seeds=(0,))
GRID_FLAGS = ["--placements", "decoupled", "--gammas-decoupled", "1",
              "--modes", "l1-fullrow", "--amplitudes", "ada", "--seeds", "0"]


@pytest.fixture(scope="module")
def digits():
  return data_lib.load_splits("digits")


def _signal_at(monkeypatch, signum, step=2):
  """Makes the first training run of the sweep receive ``signum``."""
  real, calls = loop.train, []

  def train(*args, **kwargs):
    calls.append(kwargs.get("resume"))
    if len(calls) == 1:
      def send(s):
        if s == step:
          signal.raise_signal(signum)
      kwargs["on_step"] = send
    return real(*args, **kwargs)

  monkeypatch.setattr(loop, "train", train)
  return calls


def _recorded(out):
  path = os.path.join(out, "runs.json")
  return json.load(open(path)) if os.path.exists(path) else []


def _one_line_error(capsys, argv, message, status=2):
  with pytest.raises(SystemExit) as info:
    cli.main(argv)
  assert info.value.code == status
  err = capsys.readouterr().err
  assert message in err, err
  assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
  return err


def _fake_run(base, point, seed, dataset, *, validation, run_dir=None,
              **kwargs):
  """A run's record without training (for the folder's rules)."""
  return {"point": point, "seed": seed, "val_accuracy": 0.9,
          "test_accuracy": 0.9, "constraint_error": 0.01, "max_cosine": 0.1,
          "reconstruction_psnr": None, "step_time_ms": 1.0, "history": []}


# N1 -------------------------------------------------------------------------


@pytest.mark.slow
def test_n1_sigint_during_frontier_point_is_not_recorded_as_finished(
    digits, tmp_path, monkeypatch):
  out = str(tmp_path / "f")
  calls = _signal_at(monkeypatch, signal.SIGINT)
  with pytest.raises(signals.Interrupted) as info:
    frontier.run_frontier(out, digits, BASE, GRID, log=lambda line: None)
  assert info.value.exit_status == 130 and info.value.stopped_by == "SIGINT"
  assert "adamw seed 0 was interrupted by SIGINT at step 2" in str(info.value)
  assert "Run the same frontier again" in str(info.value)
  assert _recorded(out) == [] and calls == [False]  # the second never began
  assert not os.path.exists(os.path.join(out, "frontier.json"))
  assert os.listdir(os.path.join(out, "points", "adamw_seed0", "checkpoints"))

  lines = []  # the rerun resumes the interrupted run, then does the rest
  result = frontier.run_frontier(out, digits, BASE, GRID, log=lines.append)
  assert "0 runs done, 2 to go" in lines[0]
  assert "adamw seed 0: resuming it from" in lines[1]
  assert calls == [False, True, False]
  runs = _recorded(out)
  assert [(r["point"]["optimizer"], len(r["history"])) for r in runs] == [
      ("adamw", 2), ("bort-adamw", 2)]  # epoch 0 and the whole epoch 1
  assert [p["summary"]["seeds"] for p in result["points"]] == [[0], [0]]


@pytest.mark.slow
def test_n1_sigterm_during_frontier_point_exits_143_and_records_nothing(
    tmp_path, monkeypatch, capsys):
  out = str(tmp_path / "f")
  _signal_at(monkeypatch, signal.SIGTERM)
  assert cli.main(["frontier", *FLAGS, *GRID_FLAGS, "--out", out]) == 143
  err = capsys.readouterr().err
  assert "adamw seed 0 was interrupted by SIGTERM at step 2" in err, err
  assert "Traceback" not in err and "same --out" in err
  assert _recorded(out) == []


@pytest.mark.slow
def test_n1_sigterm_stops_train_with_status_143(tmp_path, monkeypatch,
                                                capsys):
  out = str(tmp_path / "run")
  _signal_at(monkeypatch, signal.SIGTERM)
  assert cli.main(["train", *FLAGS, "--out", out]) == 143
  assert "Stopped by SIGTERM at step 2" in capsys.readouterr().err


def test_n1_a_signal_between_two_runs_stops_the_sweep_after_recording(
    digits, tmp_path, monkeypatch):
  def run_then_signal(*args, **kwargs):
    signal.raise_signal(signal.SIGTERM)  # e.g. while the test set is scored
    return _fake_run(*args, **kwargs)

  monkeypatch.setattr(frontier, "run_point", run_then_signal)
  out = str(tmp_path / "f")
  with pytest.raises(signals.Interrupted, match="after adamw seed 0") as info:
    frontier.run_frontier(out, digits, BASE, GRID, log=lambda line: None)
  assert info.value.exit_status == 143
  assert [r["point"]["optimizer"] for r in _recorded(out)] == ["adamw"]


def test_n1_a_run_nested_in_a_sweep_shares_its_signal():
  with signals.StopRequest() as sweep:
    with signals.StopRequest() as run:
      signal.raise_signal(signal.SIGINT)
    assert run.requested == "SIGINT" and sweep.requested == "SIGINT"
    with signals.StopRequest() as next_run:  # stops at its first step
      assert next_run.stopping
  assert signals.exit_status("SIGINT") == 130
  assert signals.exit_status("SIGTERM") == 143


# N5 -------------------------------------------------------------------------


@pytest.mark.parametrize("field, values, flag, shown", [
    ("seeds", (0, 0), "--seeds", "0"),
    ("modes", ("l2-full", "l2-full"), "--modes", "'l2-full'"),
    ("amplitudes", ("ada", 1.0, 1), "--amplitudes", "1"),
    ("gamma_warmups", (0.0, 0.5, 0.5), "--gamma-warmups", "0.5"),
    ("bort_everys", (1, 1), "--bort-everys", "1"),
    ("placements", ("coupled", "coupled"), "--placements", "'coupled'"),
])
def test_n5_a_grid_with_repeats_is_refused_naming_the_flag(
    field, values, flag, shown):
  with pytest.raises(ConfigError, match=f"^{flag} repeats {shown}[;.]"):
    frontier.Grid(**{field: values})
  with pytest.raises(ConfigError, match="^--gammas-decoupled repeats 0.1;"):
    frontier.Grid(gammas={"decoupled": (0.1, 0.1), "coupled": (0.01,)})


@pytest.fixture
def no_sweep(monkeypatch):
  """Fails the test if the command gets as far as running the sweep."""
  def never(*args, **kwargs):
    raise AssertionError("the sweep ran")

  monkeypatch.setattr(frontier, "run_frontier", never)


def test_n5_the_cli_refuses_repeats_before_anything_is_written(
    tmp_path, capsys, no_sweep):
  out = tmp_path / "f"
  _one_line_error(capsys, ["frontier", *FLAGS, "--out", str(out),
                           "--gammas-decoupled", "0.1,0.1"],
                  "--gammas-decoupled repeats 0.1")
  _one_line_error(capsys, ["frontier", *FLAGS, "--out", str(out),
                           "--seeds", "0,0"], "--seeds repeats 0")
  assert not out.exists()


def test_n5_near_duplicate_values_get_their_own_names():
  point = {"placement": "decoupled", "optimizer": "bort-adamw",
           "mode": "l1-fullrow", "amplitude": 1.0, "gamma": 0.1,
           "gamma_warmup": 0.5, "bort_every": 1}
  near = [{**point, "gamma": 0.1000001}, {**point, "amplitude": 1.0000001},
          {**point, "gamma_warmup": 0.5000001}]
  names = [frontier.point_name(p) for p in [point, *near]]
  assert len(set(names)) == 4, names
  assert names[1] == "bort-adamw_l1-fullrow_c1_g0.1000001_ramp0.5"
  # Every number reads back exactly, so no two values share a name.
  for gamma in (1 / 3, 2e-7, 0.30000000000000004, 123456789.5):
    name = frontier.point_name({**point, "gamma": gamma})
    assert float(name.split("_g")[1].split("_")[0]) == gamma
  # The names older frontiers wrote are unchanged, so they still resume.
  assert names[0] == "bort-adamw_l1-fullrow_c1_g0.1_ramp0.5"
  # A near-duplicate is its own point; a run recorded twice is one seed.
  run = lambda p, seed: {**_fake_run(None, p, seed, None, validation=0.1)}
  points = frontier.aggregate([run(point, 0), run(point, 0), run(near[0], 0)])
  assert [(p["point"]["gamma"], p["summary"]["seeds"]) for p in points] == [
      (0.1, [0]), (0.1000001, [0])]


# M1 -------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "1", "-0.5", "nan", "inf", "1.5"])
def test_m1_a_bad_validation_is_one_line_before_anything_is_written(
    value, tmp_path, capsys):
  out = tmp_path / "f"
  err = _one_line_error(capsys, ["frontier", *FLAGS, *GRID_FLAGS, "--out",
                                 str(out), "--validation", value],
                        "--validation must be a finite number strictly "
                        "between 0 and 1")
  assert value in err
  assert not out.exists()


def test_m1_a_validation_that_leaves_no_example_is_refused_before_writing(
    digits, tmp_path):
  out = tmp_path / "f"
  for value in (1e-6, 0.9999):  # 0 held out; nothing left to train on
    with pytest.raises(ConfigError, match="^--validation .* of the 1347 "):
      frontier.run_frontier(str(out), digits, BASE, GRID, validation=value)
  assert not out.exists()


def _frontier_folder(path, settings, runs_text=None):
  path.mkdir()
  (path / workdir.MARKER_NAME).write_text('{"kind": "frontier"}')
  (path / "settings.json").write_text(json.dumps(settings))
  if runs_text is not None:
    (path / "runs.json").write_text(runs_text)


def test_m1_a_folder_a_refused_sweep_left_accepts_the_corrected_settings(
    digits, tmp_path, monkeypatch):
  # What a sweep with --validation 0 left before the fix: settings, no run.
  out = tmp_path / "f"
  _frontier_folder(out, {"base": BASE, "validation": 0.0})
  monkeypatch.setattr(frontier, "run_point", _fake_run)
  lines = []
  frontier.run_frontier(str(out), digits, BASE, GRID, log=lines.append)
  assert any("settings are replaced" in line for line in lines)
  assert json.loads((out / "settings.json").read_text())["validation"] == 0.1
  # Once a run is recorded, other settings are refused, each named.
  with pytest.raises(RunDirectoryError, match=r"other settings \(saved vs "
                     r"given: validation 0.1 vs 0.2\)"):
    frontier.run_frontier(str(out), digits, BASE, GRID, validation=0.2)
  with pytest.raises(RunDirectoryError, match=r"given: base.width 8 vs 16\)"):
    frontier.run_frontier(str(out), digits, {**BASE, "width": 16}, GRID)
  # What a training run's resume may change, a frontier's rerun may too.
  lines.clear()
  frontier.run_frontier(str(out), digits, {**BASE, "eval_batch_size": 7},
                        GRID, log=lines.append)
  assert any("settings are updated" in line for line in lines), lines
  saved = json.loads((out / "settings.json").read_text())
  assert saved["base"]["eval_batch_size"] == 7


@pytest.mark.parametrize("text, why", [
    ('[{"point": {"optimizer": "adamw"', "not JSON"),
    ('{"runs": []}', "a JSON dict, not a list of runs"),
    ('[{"seed": 0}]', "entry 0 is not a run"),
    ('[1]', "entry 0 is not a run"),
])
def test_m1_a_damaged_runs_json_is_one_line_and_kept(
    text, why, digits, tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(frontier, "run_point", _fake_run)
  out = tmp_path / "f"
  _frontier_folder(out, {"base": BASE, "validation": 0.1}, text)
  with pytest.raises(RunDirectoryError, match=why) as info:
    frontier.run_frontier(str(out), digits, BASE, GRID)
  assert "runs.json" in str(info.value) and "Move it aside" in str(info.value)
  _one_line_error(capsys, ["frontier", *FLAGS, *GRID_FLAGS, "--out",
                           str(out)], "runs.json' is damaged")
  assert (out / "runs.json").read_text() == text
  assert sorted(os.listdir(out)) == sorted(
      [workdir.MARKER_NAME, "settings.json", "runs.json"])


def test_n8_frontier_refuses_a_bad_seed_before_anything_is_written(
    tmp_path, capsys, no_sweep):
  out = tmp_path / "f"
  _one_line_error(capsys, ["frontier", *FLAGS, "--out", str(out),
                           "--seeds", "0,-1"], "seed must be in 0..4294967295")
  assert not out.exists()


def test_a_training_run_into_a_frontier_s_point_is_refused(
    digits, tmp_path, capsys):
  # The sweep records each point's figures in runs.json: `train
  # --overwrite` (or `--resume` with more epochs) into a point's folder
  # would leave that record describing a run that is gone.
  out = str(tmp_path / "sweep")
  assert cli.main(["frontier", *FLAGS, *GRID_FLAGS, "--out", out]) == 0
  capsys.readouterr()
  recorded = _recorded(out)
  points = sorted(os.listdir(os.path.join(out, "points")))
  point = os.path.join(out, "points", points[0])
  before = {f: os.path.getmtime(os.path.join(point, f))
            for f in os.listdir(point)}
  for flag in ("--overwrite", "--resume"):
    _one_line_error(capsys, ["train", *FLAGS, "--out", point, flag],
                    f"lies inside {os.path.abspath(out)!r}, a frontier output")
  # Through a symlink to the point, or to its points/ folder, as well.
  os.symlink(point, tmp_path / "to_point")
  os.symlink(os.path.join(out, "points"), tmp_path / "to_points")
  for where in ("to_point", os.path.join("to_points", "extra")):
    _one_line_error(capsys, ["train", *FLAGS, "--overwrite", "--out",
                             str(tmp_path / where)],
                    "a frontier output")
  assert sorted(os.listdir(os.path.join(out, "points"))) == points
  assert _recorded(out) == recorded
  assert {f: os.path.getmtime(os.path.join(point, f))
          for f in os.listdir(point)} == before
  # Outside it, the same command trains.
  assert cli.main(["train", *FLAGS, "--out", str(tmp_path / "alone")]) == 0


@pytest.mark.parametrize("shared, axes", [
    ({"init": "orthogonal"}, {"amplitudes": (1.0,)}),
    ({}, {"inits": ("orthogonal",), "amplitudes": ("ada", 1.0)}),
])
def test_orthogonal_starts_a_bort_point_and_its_baseline_alike_or_is_refused(
    shared, axes):
  # The orthogonal init projects a run's Bort kernels at its own numeric
  # amplitude, the baseline's at "ada", so such a pair started from other
  # weights and its difference was not Bort's alone (the epoch-0 test loss
  # differed), silently.
  grid = frontier.Grid(**{**dict(
      gammas={"decoupled": (1.0,)}, modes=("l1-fullrow",),
      placements=("decoupled",), seeds=(0,)), "amplitudes": ("ada",), **axes})
  with pytest.raises(ConfigError, match="would start from other weights "
                     "than its baseline"):
    frontier.check_settings({**BASE, **shared}, grid)


@pytest.mark.parametrize("shared, axes", [
    ({"bort_head": False}, {}),
    ({"init": "orthogonal", "bort_head": False}, {}),
    ({}, {"inits": ("orthogonal",), "bort_heads": (False,)}),
    ({"init": "orthogonal"}, {"bort_heads": (True, False)}),
])
def test_a_baseline_starts_on_its_bort_point_s_kernels(shared, axes):
  # The head setting reaches the baselines, which run at each value of
  # --bort-heads (it was refused), so a pair starts from the same weights
  # and is measured on the same kernels (a --no-bort-head baseline's error
  # counted the head, its Bort point's did not).
  grid = frontier.Grid(gammas={"decoupled": (1.0,)}, modes=("l1-fullrow",),
                       placements=("decoupled",), amplitudes=("ada",),
                       seeds=(0,), **axes)
  base = {**BASE, **shared}
  frontier.check_settings(base, grid)
  points = grid.points()
  for point in points:
    if "gamma" in point:
      baseline, = [p for p in points if "gamma" not in p
                   and frontier._shared(p) == frontier._shared(point)]
      assert config_lib.orthogonal_start(
          frontier.point_config(base, point, 0)) == config_lib.orthogonal_start(
              frontier.point_config(base, baseline, 0))


def test_a_train_limit_above_the_split_is_refused_before_writing(
    digits, tmp_path):
  # It was refused by the first run's config, after the folder, its marker
  # and settings.json were written.
  out = tmp_path / "f"
  with pytest.raises(ConfigError, match="^--train-limit 1300 is above the "
                     "1212 examples left to train on"):
    frontier.run_frontier(str(out), digits, {**BASE, "train_limit": 1300},
                          GRID)
  assert not out.exists()
