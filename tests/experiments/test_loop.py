"""The training loop: learning, metrics files, checkpoints, exact resume."""

import csv
import dataclasses
import json
import os
import signal

import jax
import numpy as np
import pytest
from flax import nnx

from bort_jax.experiments import data as data_lib
from bort_jax.experiments import loop
from bort_jax.experiments import train_folder
from bort_jax.experiments.config import TrainConfig
from bort_jax.experiments.loop import train
from bort_jax.experiments.workdir import RunDirectoryError

# 1347 digits / 128 = 10 steps per epoch, 30 in all.
CONFIG = TrainConfig(data="digits", model="mlp", width=32, epochs=3,
                     batch_size=128, learning_rate=1e-2, warmup=0.5,
                     optimizer="bort-adamw", mode="l1-fullrow",
                     amplitude="ada", gamma=0.1)


@pytest.fixture(scope="module")
def digits():
  return data_lib.load_splits("digits")


@pytest.fixture(scope="module")
def straight(digits, tmp_path_factory):
  """An uninterrupted run, the reference for the resume tests."""
  run_dir = str(tmp_path_factory.mktemp("runs") / "straight")
  return train(CONFIG, run_dir, dataset=digits)


def _leaves(result):
  return (jax.tree.leaves(nnx.state(result.model))
          + jax.tree.leaves(nnx.state(result.optimizer)))


def _assert_same_state(a, b):
  leaves_a, leaves_b = _leaves(a), _leaves(b)
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _without_times(history):
  times = ("step_time_ms", "epoch_time_s", "wall_time_s")
  return [{k: v for k, v in r.items() if k not in times} for r in history]


@pytest.mark.slow
def test_train_learns_and_writes_metrics_and_checkpoints(straight):
  history = straight.history
  assert [r["epoch"] for r in history] == [0, 1, 2, 3]
  assert straight.finished and straight.step == 30
  assert history[0]["test_accuracy"] < 0.3  # before training
  assert history[-1]["test_accuracy"] > 0.75
  assert history[-1]["train_loss"] < history[1]["train_loss"]
  for r in history[1:]:
    assert r["step_time_ms"] > 0 and 0 <= r["constraint_error"] < 10
  run_dir = straight.run_dir
  with open(os.path.join(run_dir, "metrics.json")) as f:
    metrics = json.load(f)
  assert metrics["config"]["optimizer"] == "bort-adamw"
  assert len(metrics["history"]) == 4
  assert set(metrics["summary"]["orthogonality"]) == {
      "hidden/0/kernel", "hidden/1/kernel", "head/kernel"}
  with open(os.path.join(run_dir, "metrics.csv")) as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 4 and rows[0]["train_loss"] == ""
  assert float(rows[-1]["test_accuracy"]) == history[-1]["test_accuracy"]
  assert train_folder.load_config(run_dir) == CONFIG
  steps = sorted(os.listdir(os.path.join(run_dir, "checkpoints")))
  assert steps[-1] == "30"


@pytest.mark.slow
def test_crash_and_resume_equals_straight_run(straight, digits, tmp_path):
  run_dir = str(tmp_path / "crashed")

  def crash(step):
    if step == 17:  # after the checkpoint at step 15 (every 5 steps)
      raise RuntimeError("simulated crash")

  crashing = dataclasses.replace(CONFIG, checkpoint_every=5)
  with pytest.raises(RuntimeError, match="simulated crash"):
    train(crashing, run_dir, dataset=digits, on_step=crash)
  assert max(map(int, os.listdir(os.path.join(run_dir, "checkpoints")))) == 15
  resumed_steps = []
  resumed = train(crashing, run_dir, dataset=digits, resume=True,
                  on_step=resumed_steps.append)
  assert resumed_steps[0] == 16  # continued from the saved step 15
  assert resumed.finished and resumed.step == 30
  _assert_same_state(resumed, straight)
  assert _without_times(resumed.history) == _without_times(straight.history)


@pytest.mark.slow
def test_interrupt_saves_and_resumes_exactly(straight, digits, tmp_path):
  run_dir = str(tmp_path / "interrupted")

  def interrupt(step):
    if step == 13:  # mid-epoch: the running metric sums are saved too
      signal.raise_signal(signal.SIGINT)

  first = train(CONFIG, run_dir, dataset=digits, on_step=interrupt)
  assert not first.finished and first.step == 13
  assert sorted(map(int, os.listdir(os.path.join(run_dir,
                                                 "checkpoints"))))[-1] == 13
  resumed = train(CONFIG, run_dir, dataset=digits, resume=True)
  assert resumed.finished
  _assert_same_state(resumed, straight)
  assert _without_times(resumed.history) == _without_times(straight.history)


@pytest.mark.slow
def test_interrupt_on_a_checkpoint_step_stops_cleanly(digits, tmp_path):
  """The stop's own save found the step's periodic checkpoint there and
  failed (StepAlreadyExistsError: exit 2 instead of 130)."""
  run_dir = str(tmp_path / "interrupted")
  config = dataclasses.replace(CONFIG, checkpoint_every=5)

  def interrupt(step):
    if step == 15:
      signal.raise_signal(signal.SIGINT)

  first = train(config, run_dir, dataset=digits, on_step=interrupt)
  assert not first.finished and first.step == 15
  assert first.stopped_by == "SIGINT"
  steps = sorted(map(int, os.listdir(os.path.join(run_dir, "checkpoints"))))
  assert steps[-1] == 15


@pytest.mark.slow
def test_max_steps_then_resume(straight, digits, tmp_path):
  run_dir = str(tmp_path / "paused")
  paused = train(CONFIG, run_dir, dataset=digits, max_steps=20)
  assert paused.step == 20 and not paused.finished
  assert [r["epoch"] for r in paused.history] == [0, 1, 2]
  resumed = train(CONFIG, run_dir, dataset=digits, resume=True)
  _assert_same_state(resumed, straight)


@pytest.mark.slow
def test_run_directory_rules(straight, digits, tmp_path):
  run_dir = straight.run_dir
  with pytest.raises(RunDirectoryError, match="already exists"):
    train(CONFIG, run_dir, dataset=digits)
  with pytest.raises(RunDirectoryError, match="either"):
    train(CONFIG, run_dir, dataset=digits, resume=True, overwrite=True)
  with pytest.raises(ValueError, match="different configuration"):
    other = dataclasses.replace(CONFIG, gamma=0.5)
    train(other, run_dir, dataset=digits, resume=True)
  with pytest.raises(RunDirectoryError, match="Nothing to resume"):
    train(CONFIG, str(tmp_path / "empty"), dataset=digits, resume=True)
  # A directory of the user's own files is refused too, and overwriting
  # removes only the run's files, and only from a bort run.
  user_dir = tmp_path / "mine"
  user_dir.mkdir()
  (user_dir / "notes.txt").write_text("keep me")
  # Refused without sending the user to --resume or --overwrite, which
  # refuse such a folder too.
  with pytest.raises(RunDirectoryError, match=(
      r"is not a bort-jax training run \(it has no config.json\), so "
      r"nothing in it is changed; choose another --out\.$")):
    train_folder.open_run(str(user_dir), CONFIG, resume=False, overwrite=False)
  (user_dir / "metrics.json").write_text("{}")
  (user_dir / "checkpoints").mkdir()
  # A folder of the user's with a number for a name is not a step of ours
  # (every all-digit name went).
  (user_dir / "checkpoints" / "2024").mkdir()
  (user_dir / "checkpoints" / "2024" / "notes.txt").write_text("keep me")
  with pytest.raises(RunDirectoryError, match="not a bort-jax training run"):
    train_folder.open_run(str(user_dir), CONFIG, resume=False, overwrite=True)
  (user_dir / "config.json").write_text(CONFIG.to_json())
  folder, restore = train_folder.open_run(str(user_dir), CONFIG,
                                          resume=False, overwrite=True)
  folder.close()
  assert not restore
  assert sorted(os.listdir(user_dir)) == ["checkpoints", "notes.txt"]
  assert (user_dir / "notes.txt").read_text() == "keep me"
  assert os.listdir(user_dir / "checkpoints") == ["2024"]
  assert (user_dir / "checkpoints" / "2024" / "notes.txt").exists()


def test_the_data_errors_of_a_run_are_the_data_package_s_one_data_error(
    digits):
  # One DataError: `except data.DataError` catches what train() raises.
  from bort_jax.experiments import loop
  assert loop.DataError is data_lib.DataError
  with pytest.raises(data_lib.DataError, match="fewer than one batch"):
    train(dataclasses.replace(CONFIG, batch_size=2000), dataset=digits)


@pytest.mark.slow
def test_a_resume_may_change_only_what_changes_no_step(digits, tmp_path):
  # eval_batch_size and checkpoint_every change no training step: a resume
  # with new values continues the run to the same weights as a straight
  # run; any other field still differs from the checkpointed run.
  from bort_jax.experiments import config as config_lib
  assert config_lib.RESUMABLE == ("eval_batch_size", "checkpoint_every")
  path = str(tmp_path / "run")
  straight = train(CONFIG, dataset=digits)
  train(CONFIG, path, dataset=digits, max_steps=12)
  changed = dataclasses.replace(CONFIG, eval_batch_size=100,
                                checkpoint_every=5)
  resumed = train(changed, path, dataset=digits, resume=True)
  assert resumed.finished and resumed.step == straight.step
  for a, b in zip(jax.tree.leaves(nnx.state(resumed.model, nnx.Param)),
                  jax.tree.leaves(nnx.state(straight.model, nnx.Param))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with open(os.path.join(path, "config.json")) as f:
    assert json.load(f)["eval_batch_size"] == 100
  # The run is finished: a new value measures nothing, and is not recorded
  # (it was, in config.json and metrics.json).
  files = {name: open(os.path.join(path, name)).read()
           for name in ("config.json", "metrics.json", "metrics.csv")}
  lines = []
  again = train(dataclasses.replace(changed, eval_batch_size=7), path,
                dataset=digits, resume=True, log=lines.append)
  assert again.finished and again.history == resumed.history
  assert {name: open(os.path.join(path, name)).read()
          for name in files} == files
  assert any("The run is finished" in line for line in lines), lines
  with pytest.raises(config_lib.ConfigError, match="gamma 0.1 vs 0.2"):
    train(dataclasses.replace(changed, gamma=0.2), path, dataset=digits,
          resume=True)


@pytest.mark.slow
def test_weights_that_overflow_stop_the_run_though_the_loss_is_finite(
    digits, tmp_path):
  # lr 0.5 with γ 0.14 is a per-step l1 correction of 0.7, seventy times
  # the stable limit: after one epoch the weights have overflowed float32
  # (the test loss is nan, here) while the epoch's training loss is still
  # finite. (Where a run overflows is chaotic in γ: 0.1 now ends, 0.15
  # overflows in the training loss first.)
  config = TrainConfig(data="digits", model="mlp", optimizer="bort-sgd",
                       gamma=0.14, learning_rate=0.5, epochs=2)
  path = tmp_path / "run"
  with pytest.raises(loop.DivergedError,
                     match=r"^The (test loss|constraint error) became "
                     r"(nan|inf) by step 10 \(epoch 1\): the run diverged"):
    train(config, str(path), dataset=digits)
  with open(path / "metrics.json") as f:
    history = json.load(f)["history"]
  assert [r["epoch"] for r in history] == [0, 1]
  # strict JSON: nan and inf are null
  assert None in (history[1]["test_loss"], history[1]["constraint_error"])
  assert np.isfinite(history[1]["train_loss"])
  assert train_folder.checkpoints_lib.latest_step(
      str(path / "checkpoints")) == 0  # the overflowed state is not saved
