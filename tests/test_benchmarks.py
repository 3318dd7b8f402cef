"""The benchmarks run on the CPU (tiny workloads): what gpu.sh calls works."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_train  # noqa: E402
import train_step  # noqa: E402


def test_train_step_times_the_amortised_correction(tmp_path, capsys):
  out = tmp_path / "steps.json"
  train_step.main(["--models", "mlp", "--optimizers", "adamw", "--configs",
                   "l2-full c=1", "--every", "2", "--steps", "2",
                   "--repeats", "1", "--width", "mlp=16", "--json", str(out)])
  rows = json.loads(out.read_text())["rows"]
  assert [r["config"] for r in rows] == ["l2-full c=1", "l2-full c=1 every=2"]
  assert all(r["finite"] and r["ratio"] > 0 for r in rows)
  assert "| mlp | 16 |" in capsys.readouterr().out
  with pytest.raises(SystemExit, match="multiple of every"):
    train_step.main(["--models", "mlp", "--every", "4", "--steps", "2"])


@pytest.mark.slow
def test_gpu_train_runs_the_authors_recipe_and_the_defaults(tmp_path, capsys):
  out = tmp_path / "train.json"
  gpu_train.main(["--quick", "--models", "simple-cnn,vit",
                  "--budget-seconds", "20", "--out", str(out)])
  rows = json.loads(out.read_text())["rows"]
  assert [(r["model"], r["optimizer"]) for r in rows] == [
      ("simple-cnn", "sgd"), ("simple-cnn", "bort-sgd+dbort"),
      ("vit", "adamw"), ("vit", "bort-adamw")]
  by_name = {(r["model"], r["optimizer"]): r for r in rows}
  # Bort constrains: its kernels are closer to orthogonal than the baseline's.
  for model, base, bort in (("simple-cnn", "sgd", "bort-sgd+dbort"),
                            ("vit", "adamw", "bort-adamw")):
    assert (by_name[model, bort]["constraint_error"]
            < by_name[model, base]["constraint_error"])
  assert "bort-sgd+dbort" in capsys.readouterr().out


def test_compare_points_pairs_bort_points_by_seed(capsys, tmp_path):
  import compare_points  # pylint: disable=g-import-not-at-top
  ref = {"optimizer": "bort-adamw", "mode": "l1-fullrow", "amplitude": "ada",
         "gamma": 1.0, "placement": "decoupled"}
  other = {**ref, "mode": "huber-fullrow", "bort_every": 8}
  runs = []
  for seed, (va, vb, ea, eb) in enumerate([(0.96, 0.95, 0.02, 0.01),
                                           (0.97, 0.95, 0.04, 0.02),
                                           (0.98, 0.95, 0.06, 0.03)]):
    runs.append({"point": ref, "seed": seed, "val_accuracy": va,
                 "test_accuracy": va, "constraint_error": ea})
    runs.append({"point": other, "seed": seed, "val_accuracy": vb,
                 "test_accuracy": vb, "constraint_error": eb})
  [row] = compare_points.compare(runs, "bort-adamw_l1-fullrow_ada_g1")
  assert row["name"] == "bort-adamw_huber-fullrow_ada_g1_every8"
  # Differences −1, −2, −3 pp: mean −2, std 1, interval −2 ± 4.303/√3.
  assert row["val"]["mean_pp"] == pytest.approx(-2.0)
  assert row["val"]["ci_pp"] == pytest.approx([-2 - 2.4843, -2 + 2.4843],
                                              abs=1e-3)
  assert row["constraint"]["mean"] == pytest.approx(-0.02)  # error units
  assert row["constraint_ratio"] == pytest.approx(0.5)
  path = tmp_path / "runs.json"
  path.write_text(json.dumps(runs))
  assert compare_points.main([str(path), "--reference", "nope"]) == 2
  assert "is not a point" in capsys.readouterr().err
  # A diverged seed is left out and counted; a point with no other seed has
  # no statistics, and the table says so.
  burst = {**ref, "bort_every": 16}
  runs[1] = {**runs[1], "diverged": "loss became nan",
             "val_accuracy": None, "test_accuracy": None,
             "constraint_error": None}
  runs += [{"point": burst, "seed": s, "diverged": "nan",
            "val_accuracy": None, "test_accuracy": None,
            "constraint_error": None} for s in range(3)]
  rows = {r["name"]: r for r in compare_points.compare(
      runs, "bort-adamw_l1-fullrow_ada_g1")}
  row = rows["bort-adamw_huber-fullrow_ada_g1_every8"]
  assert row["seeds"] == [1, 2] and row["diverged"] == [0]
  assert row["val"]["d_pp"] == pytest.approx([-2.0, -3.0])
  gone = rows["bort-adamw_l1-fullrow_ada_g1_every16"]
  assert gone["diverged"] == [0, 1, 2] and gone["val"] is None
  path.write_text(json.dumps(runs))
  assert compare_points.main([str(path), "--reference",
                              "bort-adamw_l1-fullrow_ada_g1"]) == 0
  out = capsys.readouterr().out
  assert "| 0 | n/a | n/a | n/a | n/a | n/a | n/a | 3, 0 |" in out
  assert "| -2.50 [-8.85, +3.85] | includes 0 |" in out
  # A point whose every common seed the reference lost keeps its row, and
  # the reference's diverged seeds are counted.
  rows = {r["name"]: r for r in compare_points.compare(
      runs, "bort-adamw_huber-fullrow_ada_g1_every8")}
  assert rows["bort-adamw_l1-fullrow_ada_g1_every16"]["reference_diverged"] \
      == [] and rows["bort-adamw_l1-fullrow_ada_g1"]["reference_diverged"] \
      == [0]
  # A (point, seed) recorded twice counts once, the first, as the frontier
  # reads it, and is named.
  repeats = []
  twice = runs + [{**runs[0], "val_accuracy": 0.5}]
  [row] = [r for r in compare_points.compare(
      twice, "bort-adamw_huber-fullrow_ada_g1_every8", repeats=repeats)
           if r["name"] == "bort-adamw_l1-fullrow_ada_g1"]
  assert repeats == ["bort-adamw_l1-fullrow_ada_g1 seed 0"]
  assert row["val"]["d_pp"] == pytest.approx([2.0, 3.0])


def test_compare_points_before_names_settings_that_differ(capsys, tmp_path):
  import compare_points  # pylint: disable=g-import-not-at-top
  point = {"optimizer": "sgd", "placement": "coupled"}
  record = lambda seed, acc, epochs: {
      "point": point, "seed": seed, "val_accuracy": acc,
      "test_accuracy": acc, "constraint_error": 0.5,
      "config": {"epochs": epochs, "seed": seed, "data": "digits"}}
  now, then = tmp_path / "now.json", tmp_path / "then.json"
  now.write_text(json.dumps([record(s, 0.9, 3) for s in (0, 1)]))
  then.write_text(json.dumps([record(s, 0.8, 2) for s in (0, 1)]))
  assert compare_points.main([str(now), "--before", str(then)]) == 0
  err = capsys.readouterr().err
  assert "differ from --before's in more than their points: epochs: 2 → 3" \
      in err and "seed" not in err, err
  assert compare_points.main([str(now), "--before", str(now)]) == 0
  assert "warning" not in capsys.readouterr().err


def test_compare_points_reads_the_side_of_zero_unrounded():
  # An upper bound of −0.0007 prints as -0.00, which reads as 0: the
  # interval lies below 0, which is what a pre-registered rule reads.
  import compare_points  # pylint: disable=g-import-not-at-top
  assert compare_points.side_of_zero({"ci_pp": [-0.30, -0.0007]}) == "below 0"
  assert compare_points.side_of_zero({"ci_pp": [-0.30, 0.0]}) == "includes 0"
  assert compare_points.side_of_zero({"ci_pp": [0.0007, 0.3]}) == "above 0"
  assert compare_points.side_of_zero({"ci_pp": None}) == "n/a"
  assert compare_points.side_of_zero(None) == "n/a"


def test_compare_points_before_pairs_each_point_with_itself_elsewhere(
    capsys, tmp_path):
  import compare_points  # pylint: disable=g-import-not-at-top
  bort = {"optimizer": "bort-adamw", "mode": "l1-fullrow", "amplitude": "ada",
          "gamma": 1.0, "placement": "decoupled"}
  base = {"optimizer": "adamw", "placement": "decoupled"}
  run = lambda point, seed, acc, error, **more: {
      "point": point, "seed": seed, "val_accuracy": acc,
      "test_accuracy": acc, "constraint_error": error, **more}
  before = [run(base, s, 0.9, 1.0) for s in range(3)] + [
      run(bort, s, 0.8, 0.5) for s in range(3)]
  after = [run(base, s, 0.9, 1.0) for s in range(3)] + [
      run(bort, 0, 0.81, 0.1), run(bort, 1, 0.82, 0.1),
      run(bort, 2, 0.83, 0.1)]
  before[5] = {**before[5], "diverged": "nan", "constraint_error": None}
  rows = {r["name"]: r for r in compare_points.compare(after, before=before)}
  # The baseline, which no Bort change touches, is the control: zero.
  assert rows["adamw"]["test"]["mean_pp"] == pytest.approx(0.0)
  assert rows["adamw"]["constraint_ratio"] == pytest.approx(1.0)
  # Seed 2 diverged before: left out of the pairs, not counted as after's.
  row = rows["bort-adamw_l1-fullrow_ada_g1"]
  assert row["seeds"] == [0, 1] and row["diverged"] == []
  assert row["test"]["d_pp"] == pytest.approx([1.0, 2.0])
  assert row["constraint_ratio"] == pytest.approx(0.2)
  (tmp_path / "after.json").write_text(json.dumps(after))
  (tmp_path / "other.json").write_text(json.dumps(
      [run({"optimizer": "sgd"}, 0, 0.9, 1.0)]))
  assert compare_points.main([str(tmp_path / "after.json"), "--before",
                              str(tmp_path / "other.json")]) == 2
  assert "shares no point" in capsys.readouterr().err


def test_epoch_curves_average_each_epoch_over_seeds(tmp_path, capsys):
  import epoch_curves  # pylint: disable=g-import-not-at-top
  point = {"optimizer": "sgd", "learning_rate": 0.05}
  name = "sgd_lr0.05"
  runs = [{"point": point, "seed": s} for s in (0, 1)]
  runs.append({"point": {**point, "learning_rate": 0.1}, "seed": 0,
               "diverged": "loss became nan"})
  (tmp_path / "runs.json").write_text(json.dumps(runs))
  for seed, accs in ((0, (0.1, 0.8, 0.9)), (1, (0.1, 0.6, 0.7))):
    # In a frontier run the history's test split is the validation split and
    # its holdout the test set.
    run = tmp_path / "points" / f"{name}_seed{seed}"
    run.mkdir(parents=True)
    history = [{"epoch": e, "test_accuracy": a, "holdout_accuracy": a / 2,
                "constraint_error": 0.1 * e} for e, a in enumerate(accs)]
    (run / "metrics.json").write_text(json.dumps({"history": history}))
  result = epoch_curves.curves(tmp_path)
  assert list(result) == [name]  # the diverged point has no folder to read
  assert result[name]["seeds"] == [0, 1]
  assert result[name]["val"] == pytest.approx([10.0, 70.0, 80.0])
  assert result[name]["test"] == pytest.approx([5.0, 35.0, 40.0])
  assert result[name]["constraint"] == pytest.approx([0.0, 0.1, 0.2])
  assert epoch_curves.main([str(tmp_path)]) == 0
  out = capsys.readouterr().out
  assert "| 2 | 80.00 |" in out and "| 2 | 40.00 |" in out
  # A run measured without --test-each-epoch has no curve to draw.
  (run / "metrics.json").write_text(json.dumps({"history": [
      {"epoch": 1, "test_accuracy": 0.5, "holdout_accuracy": None,
       "constraint_error": 0.1}]}))
  assert epoch_curves.main([str(tmp_path)]) == 2
  assert "--test-each-epoch" in capsys.readouterr().err


def test_gpu_sh_keeps_a_users_files_and_fails_when_a_stage_does(tmp_path):
  # It removed every *.json in $OUT (a frontier.json among them) and
  # exited 0 with every stage skipped.
  out = tmp_path / "out"
  out.mkdir()
  (out / "frontier.json").write_text('{"mine": 1}')
  env = dict(os.environ, OUT=str(out), GPU_SH_BUDGET="10", GPU_SH_QUICK="1",
             PYTHON=sys.executable)
  done = subprocess.run(["bash", "benchmarks/gpu.sh"], env=env, cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 1, done.stdout + done.stderr
  assert "skipped: the budget" in done.stdout
  assert (out / "frontier.json").read_text() == '{"mine": 1}'


def test_compare_points_names_a_file_that_is_not_json(capsys, tmp_path):
  import compare_points  # pylint: disable=g-import-not-at-top
  path = tmp_path / "notes.txt"
  path.write_text("not json")
  assert compare_points.main([str(path), "--reference", "adamw"]) == 2
  err = capsys.readouterr().err
  assert err.startswith(f"compare_points: error: {path} is not a runs.json")
  # JSON, but the frontier.json beside runs.json: a TypeError traceback.
  path.write_text(json.dumps({"points": [], "baselines": {}}))
  assert compare_points.main([str(path), "--reference", "adamw"]) == 2
  assert capsys.readouterr().err.splitlines() == [
      f"compare_points: error: {path} is not a runs.json: not a list of run "
      "records (a frontier's runs.json, not its frontier.json)"]


@pytest.mark.slow
def test_explain_eager_compiles_a_model_once_and_a_closure_every_call(capsys):
  import explain_eager
  explain_eager.main(["--tools", "backtrack_saliency,pgd_l2", "--repeats",
                      "2"])
  rows = [line.split() for line in capsys.readouterr().out.splitlines()
          if line.startswith(("backtrack_saliency", "pgd_l2"))]
  # name, first, ms, next, ms, compiles, plain next, ms, compiles, ratio
  assert [r[0] for r in rows] == ["backtrack_saliency", "pgd_l2"]
  assert all(r[5] == "0" and int(r[8]) >= 2 for r in rows), rows
  for wrong in (["--tools", "saliency"], ["--repeats", "0"]):
    with pytest.raises(SystemExit):
      explain_eager.main(wrong)
