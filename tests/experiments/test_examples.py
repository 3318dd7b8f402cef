"""The examples run through the application's guard and train step."""

import importlib.util
import json
import math
import pathlib

import numpy as np
import pytest

from bort_jax.experiments import data as data_lib

EXAMPLES = pathlib.Path(__file__).parents[2] / "examples"


def _load(name):
  spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _fake_mnist(*args, **kwargs):
  rng = np.random.default_rng(0)

  def split(n):
    labels = rng.integers(0, 10, n).astype(np.int32)
    images = rng.random((n, 28, 28, 1), dtype=np.float32)
    images[:, :4, :4] += labels[:, None, None, None] / 10
    return data_lib.Split(np.clip(images, 0, 1), labels)

  return data_lib.Dataset(split(512), split(128))


@pytest.mark.slow
def test_dbort_pca_writes_through_the_guard(tmp_path, monkeypatch, capsys):
  example = _load("dbort_pca_mnist")
  monkeypatch.setattr(example.data_lib, "load_splits", _fake_mnist)
  out = tmp_path / "pca"
  example.main(["--out", str(out), "--k", "2", "--steps", "20"])
  assert sorted(p.name for p in out.iterdir()) == sorted(
      example.OUT_FILES + (".bort-jax-output.json",))
  assert json.loads((out / "metrics.json").read_text())["k"] == 2
  (out / "mine.txt").write_text("keep")
  with pytest.raises(SystemExit, match="--overwrite"):
    example.main(["--out", str(out), "--k", "2", "--steps", "20"])
  # k = d, every direction: the eigengap has no λ_k+1 (it raised
  # IndexError after the fit's folder was made).
  every = tmp_path / "every"
  example.main(["--out", str(every), "--k", "784", "--steps", "2"])
  assert json.loads((every / "metrics.json").read_text())[
      "relative_eigengap"] is None
  assert "n/a (k = d)" in capsys.readouterr().out


@pytest.mark.parametrize("flag, value", [
    ("--k", "785"), ("--k", "0"), ("--steps", "0"), ("--momentum", "1.5"),
    ("--learning-rate", "-1"), ("--published-steps", "-5")])
def test_dbort_pca_refuses_bad_flags_before_loading(tmp_path, capsys, flag,
                                                    value):
  # They failed with a traceback after MNIST and its PCA (or, for
  # --published-steps, were ignored), leaving the folder behind.
  example = _load("dbort_pca_mnist")
  with pytest.raises(SystemExit):
    example.main(["--out", str(tmp_path / "pca"), flag, value])
  assert f"argument {flag}:" in capsys.readouterr().err
  assert not (tmp_path / "pca").exists()


@pytest.mark.slow
def test_accuracy_study_runs_and_refuses_a_foreign_folder(tmp_path,
                                                          monkeypatch):
  example = _load("accuracy_study")
  monkeypatch.setattr(example.data_lib, "load_splits", _fake_mnist)
  out = tmp_path / "study"
  argv = ["--part", "gamma", "--seeds", "1", "--epochs", "1",
          "--train-limit", "256", "--gammas", "0.1",
          "--gamma-optimizers", "bort-adamw", "--out", str(out)]
  assert example.main(argv) == 0
  results = json.loads((out / "results.json").read_text())
  assert results["finished"] and len(results["runs"]) == 1
  assert (out / "tables.md").read_text().startswith("Date:")
  # A part with baselines (no γ): their progress line raised TypeError.
  assert example.main(["--part", "main", "--seeds", "1", "--epochs", "1",
                       "--cnn-epochs", "1", "--train-limit", "128",
                       "--cnn-train-limit", "128",
                       "--out", str(tmp_path / "main")]) == 0
  foreign = tmp_path / "foreign"
  foreign.mkdir()
  (foreign / "results.json").write_text("{}")
  with pytest.raises(SystemExit, match="holds no earlier accuracy_study"):
    example.main(argv[:-1] + [str(foreign), "--overwrite"])
  assert (foreign / "results.json").read_text() == "{}"


@pytest.mark.slow
def test_authors_protocol_resumes_its_folder_and_refuses_a_foreign_one(
    tmp_path, monkeypatch, capsys):
  example = _load("authors_protocol")
  monkeypatch.setattr(example.data_lib, "load_splits", _fake_mnist)
  calls = []
  train = example.loop.train
  monkeypatch.setattr(example.loop, "train",
                      lambda *a, **k: calls.append(a[1]) or train(*a, **k))
  out = tmp_path / "authors"
  argv = ["--out", str(out), "--width", "1", "--epochs", "2", "--seeds", "0",
          "--arms", "bort-sgd,sgd"]
  assert example.main(argv) == 0
  results = json.loads((out / "results.json").read_text())
  for key in ("bort-sgd/seed0", "sgd/seed0"):
    row = results["done"][key]
    assert [e["epoch"] for e in row["epochs"]] == [1, 2]
    best = max(row["epochs"], key=lambda e: e["test_accuracy"])
    assert row["authors_protocol"] == best["test_accuracy"]
  assert "| bort-sgd |" in (out / "tables.md").read_text()
  assert len(calls) == 2
  assert example.main(argv) == 0  # its own folder: the runs are read back
  assert len(calls) == 2
  # Other settings: refused, where the old runs were reported as theirs.
  before = (out / "results.json").read_text()
  assert example.main(argv[:5] + ["3"] + argv[6:]) == 2  # --epochs 3
  assert "holds runs of other settings" in capsys.readouterr().err
  assert len(calls) == 2
  assert (out / "results.json").read_text() == before
  foreign = tmp_path / "foreign"
  foreign.mkdir()
  (foreign / "results.json").write_text("{}")
  with pytest.raises(SystemExit, match="holds no authors_protocol"):
    example.main(["--out", str(foreign), "--arms", "sgd", "--seeds", "0"])
  assert sorted(p.name for p in foreign.iterdir()) == ["results.json"]
  assert (foreign / "results.json").read_text() == "{}"


@pytest.mark.slow
def test_ada_overcomplete_shows_what_it_describes(capsys):
  example = _load("ada_overcomplete")
  lines = example.main(["--steps", "1000", "--modes",
                        "l1-fullrow,l1-fullcol,l1-row"])
  assert lines == capsys.readouterr().out.strip().splitlines()
  norms = {line.split(" | ")[0].strip("| "): [
      float(cell.split(",")[0].split()[1]) for cell in line.split(" | ")[1:]]
      for line in lines[3:]}
  start = float(lines[0].split("norm ")[1].split(",")[0])
  # The full mode holds the feasible side's scale with "ada"; the column
  # mode's published "ada" shrinks it, where a fixed c holds it.
  assert min(norms["l1-fullrow"]) > 0.7 * start
  ada, fixed = norms["l1-fullcol"]
  assert ada < 0.5 * start < fixed
  assert norms["l1-row"][0] > 0.8 * start  # the row modes keep ada's scale


@pytest.mark.slow
def test_step_strength_limit_measures_the_strength_per_application(capsys):
  # The measurement behind bort_jax.MAX_STEP_STRENGTH.
  module = _load("step_strength_limit")
  table = module.main(["--steps", "60", "--strengths", "1e-3,0.2",
                       "--everys", "1,8", "--seeds", "0",
                       "--placements", "decoupled"])
  printed = capsys.readouterr().out
  assert "| decoupled | 8 | 0.2 | 0.025 |" in printed
  assert set(table) == {("decoupled", k, b) for k in (1, 8)
                        for b in (1e-3, 0.2)}
  for every in (1, 8):
    small, large = table["decoupled", every, 1e-3], table["decoupled", every,
                                                          0.2]
    assert small[0] > 0.8 and small[1] < 0.5
    # 20x the limit per application: collapsed, or diverged (nan).
    assert math.isnan(large[0]) or large[0] < 0.5


@pytest.mark.parametrize("name, argv, message", [
    # -5 evaluated x_test[:-5] (445 digits images), silently; 0 failed
    # after both trainings.
    ("explain_mnist", ["--eval-images", "-5"],
     "--eval-images: must be a positive integer, got -5"),
    ("explain_mnist", ["--steps", "0"], "--steps"),
    ("explain_mnist", ["--channels", "8", "0"], "--channels"),
    ("explain_mnist", ["--amplitude", "foo"], "--amplitude: expected a "
     "number or 'ada'"),
    ("saliency_simple_cnn", ["--images", "-5"], "--images"),
    ("saliency_simple_cnn", ["--border", "-1"], "--border"),
])
def test_the_explain_examples_refuse_bad_numbers_in_one_line(
    tmp_path, capsys, name, argv, message):
  example = _load(name)
  with pytest.raises(SystemExit) as info:
    example.main(["--out", str(tmp_path / "out"), *argv])
  assert info.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert message in err[-1], err
  assert not (tmp_path / "out").exists()


def test_explain_mnist_refuses_a_batch_larger_than_the_training_set(
    tmp_path):
  # No batch fitted, so no step was ever counted: it looped forever.
  example = _load("explain_mnist")
  with pytest.raises(SystemExit, match="explain_mnist: error: --batch-size "
                     "2000 is above the 1347 training images of digits"):
    example.main(["--out", str(tmp_path / "out"), "--data", "digits",
                  "--batch-size", "2000"])
