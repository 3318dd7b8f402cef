"""The bort-jax command line: argument checks, train/resume, the demo."""

import json
import os
import re

import pytest

from bort_jax.experiments import cli


def _fails(capsys, argv, message):
  """Asserts that argv exits with status 2 and prints ``message``."""
  with pytest.raises(SystemExit) as exit_info:
    cli.main(argv)
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert message in err, err
  return err


@pytest.mark.parametrize("extra, message", [
    (["--optimizer", "bort-nonsense"], "Unknown optimizer 'nonsense'"),
    (["--optimizer", "rmsprop-ish"], "Unknown optimizer"),
    (["--gamma", "-0.1"], "must be >= 0"),
    (["--gamma", "lots"], "expected a number"),
    (["--mode", "l3-full"], "invalid choice: 'l3-full'"),
    (["--amplitude", "-1"], "positive number or 'ada'"),
    (["--model", "alexnet"], "invalid choice: 'alexnet'"),
    (["--epochs", "0"], "positive integer"),
    (["--lr", "0"], "must be > 0"),
    (["--data", "imagenet"], "invalid choice: 'imagenet'"),
    (["--resume", "--overwrite"], "not allowed with argument"),
    (["--optimizer", "bort-adamw", "--placement", "coupled"],
     "placement applies to bort-<optax optimizer> only"),
    (["--dbort-power", "0.1"], "--dbort-power applies with a DBort term only"),
    (["--dbort-on", "layers"], "--dbort-on applies with a DBort term only"),
])
def test_train_rejects_bad_arguments(capsys, tmp_path, extra, message):
  _fails(capsys, ["train", "--out", str(tmp_path / "run"), *extra], message)


def test_an_unknown_flag_is_named_by_its_subcommand(capsys, tmp_path):
  err = _fails(capsys, ["train", "--out", str(tmp_path / "run"), "--bogus",
                        "1"], "unrecognized arguments: --bogus 1")
  assert err.startswith("bort-jax train: error:") and err.count("\n") == 1
  assert not (tmp_path / "run").exists()


def test_usage_errors(capsys, tmp_path):
  _fails(capsys, [], "required")
  _fails(capsys, ["train"], "--out")
  _fails(capsys, ["train", "--out", str(tmp_path / "none"), "--resume"],
         "Nothing to resume")


@pytest.mark.slow
def test_train_resume_and_overwrite_refusal(capsys, tmp_path):
  out = str(tmp_path / "run")
  argv = ["train", "--data", "digits", "--model", "mlp", "--width", "16",
          "--optimizer", "bort-sgd", "--mode", "l2-full", "--amplitude", "1",
          "--gamma", "0.01", "--lr", "0.05", "--epochs", "2",
          "--batch-size", "256", "--warmup", "0.5", "--seed", "1",
          "--out", out, "--no-progress"]
  assert cli.main(argv) == 0
  captured = capsys.readouterr()
  assert "epoch 2/2" in captured.out and "Done: test accuracy" in captured.out
  for name in ("config.json", "metrics.json", "metrics.csv", "checkpoints"):
    assert os.path.exists(os.path.join(out, name)), name
  with open(os.path.join(out, "config.json")) as f:
    assert json.load(f)["optimizer"] == "bort-sgd"
  # The same command again refuses to touch the run.
  _fails(capsys, argv, "already exists")
  # Resuming a finished run trains nothing more and succeeds.
  assert cli.main(["train", "--out", out, "--resume", "--no-progress"]) == 0
  with open(os.path.join(out, "metrics.json")) as f:
    assert len(json.load(f)["history"]) == 3
  capsys.readouterr()
  # Explicit arguments that contradict the saved run are refused.
  err = _fails(capsys, ["train", "--out", out, "--resume", "--gamma", "0.5"],
               "gamma 0.01 vs 0.5")
  assert "a resume may change only --eval-batch-size, --checkpoint-every" in err
  # The fields that change no step of the run are accepted; the run is
  # finished, so nothing runs with them and config.json keeps what ran
  # (test_loop: an unfinished run takes them).
  assert cli.main(["train", "--out", out, "--resume", "--no-progress",
                   "--eval-batch-size", "7", "--checkpoint-every", "3"]) == 0
  assert "The run is finished" in capsys.readouterr().out
  with open(os.path.join(out, "config.json")) as f:
    saved = json.load(f)
  assert (saved["eval_batch_size"], saved["checkpoint_every"]) != (7, 3)
  assert saved["gamma"] == 0.01


@pytest.mark.slow
def test_demo_epochs_zero_and_resume_with_a_recipe_are_one_line(capsys,
                                                                tmp_path):
  """`demo --epochs 0` ran the default 3 epochs; `train --resume --recipe`
  resumed the saved run and dropped the recipe without a word."""
  out = str(tmp_path / "demo")
  _fails(capsys, ["demo", "--quick", "--data", "digits", "--epochs", "0",
                  "--out", out, "--no-progress", "--offline"],
         "epochs must be")
  assert not os.path.exists(out)
  run = str(tmp_path / "run")
  _fails(capsys, ["train", "--out", run, "--resume", "--recipe",
                  "authors-mnist", "--offline"],
         "--recipe starts a new run and --resume continues the saved one")


def test_demo_quick_on_digits(capsys, tmp_path):
  out = str(tmp_path / "demo")
  assert cli.main(["demo", "--quick", "--data", "digits", "--epochs", "1",
                   "--out", out, "--no-progress"]) == 0
  printed = capsys.readouterr().out
  assert "AdamW" in printed and "Bort-AdamW" in printed
  assert "constraint err" in printed and "recon MSE" in printed
  with open(os.path.join(out, "results.json")) as f:
    results = json.load(f)
  assert [r["name"] for r in results["runs"]] == ["AdamW", "Bort-AdamW"]
  assert results["data"] == "digits"
  for run in results["runs"]:
    assert 0 <= run["test_accuracy"] <= 1
    assert run["constraint_error"] >= 0
    # Both runs start from the same orthogonal weights.
    assert run["config"]["init"] == "orthogonal"
    assert run["constraint_error_start"] < 1e-4
    assert run["reconstruction_mse"] >= 0
  assert "constraint err step 0" in printed
  for name in results["figures"].values():
    assert os.path.getsize(os.path.join(out, name)) > 0
  assert {"accuracy", "gram", "reconstructions"} <= set(results["figures"])
  # A second demo into the same directory needs --overwrite.
  (tmp_path / "demo" / "mine.txt").write_text("keep")
  _fails(capsys, ["demo", "--quick", "--data", "digits", "--out", out],
         "--overwrite")


@pytest.mark.slow
def test_a_library_warning_is_one_line_on_stdout(capsys, tmp_path):
  # A full column mode cannot hold the digits MLP's head (10 units on 256
  # features), nor, with the published "ada", its first layer (256 units on
  # 64 pixels): the library warns at init, a line each.
  assert cli.main(["train", "--data", "digits", "--mode", "l1-fullcol",
                   "--epochs", "1", "--train-limit", "256", "--no-progress",
                   "--offline", "--out", str(tmp_path / "run")]) == 0
  out, err = capsys.readouterr()
  assert err == ""
  assert [line for line in out.splitlines() if ": warning: " in line] == [
      "bort-jax train: warning: Bort's mode 'l1-fullcol' asks Wᵀ W = cI of "
      "'head/kernel' (10 units, fan-in 256), which no matrix with fewer "
      "units than fan-in satisfies: the correction takes them off W Wᵀ = cI, "
      "where the start lands them. Use a row or "
      "full mode on the units (e.g. 'l1-fullrow', which constrains the "
      "feasible side), or leave these weights out with bort_mask.",
      "bort-jax train: warning: Bort's mode 'l1-fullcol' with "
      "amplitude='ada' pulls 'hidden/0/kernel' (256 units, fan-in 64) "
      "toward zero: with more units than fan-in, ada's c (the units' squared "
      "mean norm) lies below the columns' squared norms. Pass a fixed "
      "amplitude (e.g. amplitude=1.0), use a row or full mode on the units "
      "(e.g. 'l1-fullrow', which constrains the feasible side), or leave "
      "these weights out with bort_mask."]
  assert "UserWarning" not in out


def test_a_strong_correction_is_one_warning_line_and_overflow_one_error(
    capsys, tmp_path):
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["train", "--data", "digits", "--optimizer", "bort-sgd",
              "--gamma", "0.14", "--lr", "0.5", "--epochs", "1",
              "--no-progress", "--out", str(tmp_path / "run")])
  assert exit_info.value.code == 2
  out, err = capsys.readouterr()
  # stderr: the error's one line; the warnings are notes on stdout.
  assert err.strip().splitlines() == [err.strip()]
  assert re.match(r"bort-jax train: error: The (test loss|constraint error) "
                  r"became (nan|inf) by step 10 \(epoch 1\): the run "
                  "diverged", err)
  # The library's UserWarning (with its file and source line) is not shown:
  # the strength report says the same, with the flags to change.
  assert [l for l in out.splitlines() if "warning: a per-step" in l] == [
      "bort-jax train: warning: a per-step l1 correction of 0.7 is above "
      "0.01, where the MNIST frontier collapses or diverges; lower --gamma "
      "(see docs/RESULTS.md)."]
  assert "UserWarning" not in out + err
