"""The training loop: learning, metrics files, checkpoints, exact resume."""

import csv
import dataclasses
import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import bort_jax
from bort_jax.experiments import train as train_lib
from bort_jax.experiments.train import RunDirectoryError
from bort_jax.experiments.train import TrainConfig
from bort_jax.experiments.train import train

# 1347 digits / 128 = 10 steps per epoch, 30 in all.
CONFIG = TrainConfig(data="digits", model="mlp", width=32, epochs=3,
                     batch_size=128, learning_rate=1e-2, warmup=0.5,
                     optimizer="bort-adamw", mode="l1-fullrow",
                     amplitude="ada", gamma=0.1)


@pytest.fixture(scope="module")
def digits():
  return train_lib.load_dataset("digits")


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
  assert train_lib.load_config(run_dir) == CONFIG
  steps = sorted(os.listdir(os.path.join(run_dir, "checkpoints")))
  assert steps[-1] == "30"


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


def test_max_steps_then_resume(straight, digits, tmp_path):
  run_dir = str(tmp_path / "paused")
  paused = train(CONFIG, run_dir, dataset=digits, max_steps=20)
  assert paused.step == 20 and not paused.finished
  assert [r["epoch"] for r in paused.history] == [0, 1, 2]
  resumed = train(CONFIG, run_dir, dataset=digits, resume=True)
  _assert_same_state(resumed, straight)


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
  # removes only the run's files.
  user_dir = tmp_path / "mine"
  user_dir.mkdir()
  (user_dir / "notes.txt").write_text("keep me")
  with pytest.raises(RunDirectoryError, match="--overwrite"):
    train_lib.check_run_dir(str(user_dir), resume=False, overwrite=False)
  (user_dir / "metrics.json").write_text("{}")
  (user_dir / "checkpoints").mkdir()
  train_lib.prepare_run_dir(str(user_dir), resume=False, overwrite=True)
  assert sorted(os.listdir(user_dir)) == ["notes.txt"]
  assert (user_dir / "notes.txt").read_text() == "keep me"


def test_make_optimizer_names():
  params = {"dense": {"kernel": jnp.ones((4, 3)) + jnp.eye(4, 3),
                      "bias": jnp.ones(3)}}
  grads = jax.tree.map(lambda p: 0.1 * p, params)

  def update(tx):  # jitted: one compilation instead of many eager ones
    return jax.jit(lambda g, p: tx.update(g, tx.init(p), p)[0])(grads, params)

  for name in ("sgd", "adamw", "bort-sgd", "bort-adamw", "bort-lion",
               "bort-lamb"):
    updates = update(train_lib.make_optimizer(name, 1e-2))
    assert updates["dense"]["kernel"].shape == (4, 3), name
  # gamma = 0: each Bort optimizer is its base optimizer.
  for bort, base in (("bort-adamw", optax.adamw(1e-2, weight_decay=1e-4)),
                     ("bort-lion", optax.lion(1e-2))):
    a = update(train_lib.make_optimizer(bort, 1e-2, gamma=0.0))
    b = update(base)
    jax.tree.map(np.testing.assert_allclose, a, b)
  # bort-sgd, coupled: one step is -lr (g + γ Δ(W)) for the kernel.
  got = update(train_lib.make_optimizer("bort-sgd", 0.5, gamma=0.2,
                                        mode="l2-full", amplitude=1.0))
  w = params["dense"]["kernel"]
  delta = bort_jax.bort_correction(w.T, "l2-full", 1.0).T
  np.testing.assert_allclose(got["dense"]["kernel"],
                             -0.5 * (grads["dense"]["kernel"] + 0.2 * delta),
                             rtol=1e-5)
  np.testing.assert_allclose(got["dense"]["bias"], -0.5 * grads["dense"]["bias"])
  with pytest.raises(ValueError, match="Unknown optimizer 'nope'"):
    train_lib.make_optimizer("bort-nope", 1e-3)
  with pytest.raises(ValueError, match="placement applies"):
    train_lib.make_optimizer("bort-adamw", 1e-3, placement="coupled")
  with pytest.raises(ValueError):
    train_lib.make_optimizer("bort-adamw", 1e-3, gamma=-1.0)


def test_schedule_and_config_checks():
  schedule = train_lib.make_schedule(
      TrainConfig(learning_rate=0.1, epochs=4, warmup=1.0), 10)
  assert float(schedule(0)) == 0.0
  assert float(schedule(10)) == pytest.approx(0.1)
  assert float(schedule(25)) == pytest.approx(0.05, rel=1e-5)  # cosine half
  assert float(schedule(40)) == pytest.approx(0.0, abs=1e-9)
  for bad in ({"gamma": -0.1}, {"mode": "l3"}, {"amplitude": "big"},
              {"amplitude": 0.0}, {"epochs": 0}, {"optimizer": "bort-xyz"},
              {"model": "alexnet"}, {"learning_rate": 0.0}):
    with pytest.raises(ValueError):
      TrainConfig(**bad)
