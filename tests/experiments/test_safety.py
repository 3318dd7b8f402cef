"""The application is safe with the user's files: one test per red-team item.

Items 1-5, 8-13 and 15 of issue 8 (items 6, 7, 14 are the data loader's).
Each test fails on the application as it was before the split.
"""

import dataclasses
import errno
import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from bort_jax.experiments import cli
from bort_jax.experiments import data as data_lib
from bort_jax.experiments import loop
from bort_jax.experiments import workdir
from bort_jax.experiments.checkpoints import CheckpointError
from bort_jax.experiments.config import ConfigError
from bort_jax.experiments.config import TrainConfig
from bort_jax.experiments.loop import DataError
from bort_jax.experiments.loop import DivergedError
from bort_jax.experiments.loop import train
from bort_jax.experiments.workdir import RunDirectoryError
from bort_jax.experiments.workdir import RunFolder

# 1347 digits / 256 = 5 steps per epoch, 10 in all: a second or two.
TINY = TrainConfig(data="digits", model="mlp", width=8, epochs=2,
                   batch_size=256, learning_rate=1e-2)


@pytest.fixture(scope="module")
def digits():
  return data_lib.load_splits("digits")


@pytest.fixture(scope="module")
def straight(digits, tmp_path_factory):
  return train(TINY, str(tmp_path_factory.mktemp("ref") / "run"),
               dataset=digits)


def _assert_same_state(a, b):
  leaves = lambda r: (jax.tree.leaves(nnx.state(r.model))
                      + jax.tree.leaves(nnx.state(r.optimizer)))
  for x, y in zip(leaves(a), leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _cli_fails(capsys, argv, message, status=2):
  with pytest.raises(SystemExit) as info:
    cli.main(argv)
  assert info.value.code == status
  err = capsys.readouterr().err
  assert message in err, err
  assert "Traceback" not in err
  return err


def _strict_json(path):
  def refuse(token):
    raise AssertionError(f"non-standard JSON token {token}")
  with open(path) as f:
    return json.loads(f.read(), parse_constant=refuse)


def test_item01_names_orbax_cannot_take_are_refused_before_writing(
    digits, tmp_path, capsys):
  for name in ("sweep[lr=0.003]", "a\\b"):
    with pytest.raises(RunDirectoryError, match="orbax"):
      train(TINY, str(tmp_path / name), dataset=digits)
    assert os.listdir(tmp_path) == []  # nothing written, nor beside it
  _cli_fails(capsys, ["train", "--out", str(tmp_path / "s[1]")], "orbax")
  assert os.listdir(tmp_path) == []


def test_item02_overwrite_deletes_nothing_of_a_folder_not_a_bort_run(
    digits, tmp_path):
  mine = tmp_path / "mine"
  (mine / "checkpoints").mkdir(parents=True)
  (mine / "checkpoints" / "thesis.ckpt").write_text("years of work")
  (mine / "config.json").write_text('{"my": "settings"}')
  with pytest.raises(RunDirectoryError, match="not a bort-jax training run"):
    train(TINY, str(mine), dataset=digits, overwrite=True)
  assert (mine / "checkpoints" / "thesis.ckpt").read_text() == "years of work"
  assert (mine / "config.json").read_text() == '{"my": "settings"}'


@pytest.mark.slow
def test_item03_one_process_per_folder_and_a_killed_ones_lock_is_cleared(
    digits, tmp_path):
  path = tmp_path / "run"
  with RunFolder.open(path):
    with pytest.raises(RunDirectoryError, match=f"pid {os.getpid()}"):
      train(TINY, str(path), dataset=digits)
  # A process holding the lock is killed with SIGKILL.
  holder = subprocess.Popen(
      [sys.executable, "-c",
       "import fcntl, os, sys, time\n"
       f"fd = os.open({str(path / workdir.LOCK_NAME)!r}, "
       "os.O_RDWR | os.O_CREAT)\n"
       "fcntl.flock(fd, fcntl.LOCK_EX)\n"
       "os.write(fd, str(os.getpid()).encode())\n"
       "print('locked', flush=True)\n"
       "time.sleep(60)\n"], stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline().strip() == "locked"
  with pytest.raises(RunDirectoryError, match=f"pid {holder.pid}"):
    RunFolder.open(path)
  holder.kill()
  holder.wait()
  lines = []
  result = train(TINY, str(path), dataset=digits, max_steps=1,
                 log=lines.append)
  assert result.step == 1
  assert any(f"stale lock of pid {holder.pid}" in l for l in lines), lines
  assert not os.path.exists(path / workdir.LOCK_NAME)  # released


@pytest.mark.slow
def test_item04_temp_files_never_follow_planted_symlinks(
    digits, tmp_path, monkeypatch):
  path = tmp_path / "run"
  train(TINY, str(path), dataset=digits, max_steps=2)
  victims = {}
  for name in ("config.json.tmp", "metrics.json.tmp", "metrics.csv.tmp"):
    victim = tmp_path / f"victim-{name}"
    victim.write_text("outside the run")
    os.symlink(victim, path / name)
    victims[name] = victim
  train(TINY, str(path), dataset=digits, resume=True)
  for victim in victims.values():
    assert victim.read_text() == "outside the run"
  assert _strict_json(path / "metrics.json")["history"][-1]["step"] == 10
  # A link planted at the (unique, unpredictable) temp name is refused.
  monkeypatch.setattr(workdir.secrets, "token_hex", lambda n: "fixed")
  victim = tmp_path / "victim"
  victim.write_text("outside")
  with RunFolder.open(tmp_path / "other") as folder:
    os.symlink(victim, folder.path / ".a.txt.tmp-fixed.tmp")
    with pytest.raises(RunDirectoryError, match="Cannot write"):
      folder.write_text("a.txt", "data")
  assert victim.read_text() == "outside"


def _damage(step_dir):
  for root, _, files in os.walk(step_dir / "state"):
    for name in files:
      with open(os.path.join(root, name), "wb") as f:
        f.write(b"\x00garbage")


@pytest.mark.slow
def test_item05_a_damaged_newest_checkpoint_falls_back_to_the_previous(
    digits, straight, tmp_path):
  path = tmp_path / "run"
  train(TINY, str(path), dataset=digits, max_steps=7)  # keeps steps 5 and 7
  assert sorted(os.listdir(path / "checkpoints")) == ["5", "7"]
  _damage(path / "checkpoints" / "7")
  lines = []
  resumed = train(TINY, str(path), dataset=digits, resume=True,
                  log=lines.append)
  assert any("Checkpoint 7" in l and "damaged" in l for l in lines), lines
  assert any("Resuming from checkpoint 5" in l for l in lines), lines
  assert resumed.finished
  _assert_same_state(resumed, straight)
  for step in os.listdir(path / "checkpoints"):
    _damage(path / "checkpoints" / step)
  with pytest.raises(CheckpointError, match="No checkpoint .* can be read"):
    train(TINY, str(path), dataset=digits, resume=True)


@pytest.mark.slow
def test_item08_resume_checks_the_config_and_the_data(digits, tmp_path,
                                                      capsys):
  path = tmp_path / "run"
  train(TINY, str(path), dataset=digits, max_steps=3)
  saved = (path / "config.json").read_text()
  edited = json.loads(saved)
  assert edited["gamma"] != 0.7
  gamma, edited["gamma"] = edited["gamma"], 0.7
  (path / "config.json").write_text(json.dumps(edited))
  err = _cli_fails(capsys, ["train", "--out", str(path), "--resume"],
                   "differs from the checkpointed run")
  assert f"gamma {gamma!r} vs 0.7" in err
  # Also when the edit changes the arrays' shapes: it said that no
  # checkpoint could be read and to start over with --overwrite.
  kept = sorted(os.listdir(path / "checkpoints"))
  edited = json.loads(saved)
  edited["width"] = 2 * edited["width"]
  (path / "config.json").write_text(json.dumps(edited))
  err = _cli_fails(capsys, ["train", "--out", str(path), "--resume"],
                   "differs from the checkpointed run")
  assert f"width {TINY.width!r} vs {2 * TINY.width!r}" in err
  assert sorted(os.listdir(path / "checkpoints")) == kept  # none moved
  (path / "config.json").write_text(saved)
  images = digits.train.images.copy()
  images[0, 0, 0, 0] += 0.5  # the same size, other data
  other = data_lib.Dataset(data_lib.Split(images, digits.train.labels),
                           digits.test)
  with pytest.raises(DataError, match="train_images"):
    train(TINY, str(path), dataset=other, resume=True)


@pytest.mark.slow
def test_item09_sigterm_stops_checkpoints_and_resumes_exactly(
    digits, straight, tmp_path):
  path = tmp_path / "run"

  def terminate(step):
    if step == 3:
      signal.raise_signal(signal.SIGTERM)

  lines = []
  first = train(TINY, str(path), dataset=digits, on_step=terminate,
                log=lines.append)
  assert not first.finished and first.step == 3
  assert any("SIGTERM" in l for l in lines)
  assert "3" in os.listdir(path / "checkpoints")
  resumed = train(TINY, str(path), dataset=digits, resume=True)
  _assert_same_state(resumed, straight)


@pytest.mark.slow
def test_item10_a_nonfinite_loss_stops_the_run_and_json_stays_strict(
    digits, tmp_path, capsys, monkeypatch):
  images = digits.train.images.copy()
  images[:] = np.nan
  broken = data_lib.Dataset(data_lib.Split(images, digits.train.labels),
                            digits.test)
  path = tmp_path / "run"
  with pytest.raises(DivergedError, match="diverged"):
    train(TINY, str(path), dataset=broken)
  metrics = _strict_json(path / "metrics.json")
  assert metrics["history"][0]["epoch"] == 0
  monkeypatch.setattr(data_lib, "load_splits", lambda *a, **k: broken)
  _cli_fails(capsys, ["train", "--data", "digits", "--model", "mlp",
                      "--width", "8", "--epochs", "1", "--batch-size", "256",
                      "--out", str(tmp_path / "cli"), "--no-progress"],
             "diverged")
  assert not list((tmp_path / "cli" / "checkpoints").glob("5"))


def test_item11_unwritable_or_full_folders_are_one_line_before_the_data(
    tmp_path, capsys, monkeypatch):
  loads = []
  monkeypatch.setattr(data_lib, "load_splits",
                      lambda *a, **k: loads.append(a) or None)
  (tmp_path / "file").write_text("")
  _cli_fails(capsys, ["train", "--out", str(tmp_path / "file" / "run")],
             "is not a folder")

  def full(fd, data):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  with monkeypatch.context() as m:
    m.setattr(workdir.os, "write", full)
    err = _cli_fails(capsys, ["train", "--out", str(tmp_path / "run")],
                     "No space left on device")
  assert len(err.strip().splitlines()) == 1 and loads == []
  assert not os.path.exists(tmp_path / "run")

  def fsync(fd):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  with RunFolder.open(tmp_path / "out") as folder:
    monkeypatch.setattr(workdir.os, "fsync", fsync)
    with pytest.raises(RunDirectoryError, match="No space left on device"):
      folder.write_json("metrics.json", {"a": 1})
    assert folder.entries() == []  # no temp file left behind


@pytest.mark.slow
def test_item12_a_run_killed_before_its_first_checkpoint_restarts(
    digits, tmp_path):
  for resume in (False, True):
    path = tmp_path / f"killed-{resume}"
    path.mkdir()
    (path / "config.json").write_text(TINY.to_json())
    (path / workdir.LOCK_NAME).write_text("999999999\n")  # a dead pid
    result = train(TINY, str(path), dataset=digits, resume=resume,
                   max_steps=2)
    assert result.step == 2


def test_item13_interrupts_and_expected_errors_print_one_line(
    tmp_path, capsys, monkeypatch):
  argv = ["train", "--out", str(tmp_path / "run"), "--no-progress"]

  def interrupted(*args, **kwargs):
    raise KeyboardInterrupt

  monkeypatch.setattr(loop, "train", interrupted)
  err = _cli_fails(capsys, argv, "interrupted", status=130)
  assert len(err.strip().splitlines()) == 1
  with pytest.raises(KeyboardInterrupt):
    cli.main(argv + ["--debug"])

  def corrupt(*args, **kwargs):
    raise DataError("mnist.npz in /cache is corrupt\n(details)")

  monkeypatch.setattr(loop, "train", corrupt)
  err = _cli_fails(capsys, argv, "mnist.npz in /cache is corrupt")
  assert len(err.strip().splitlines()) == 1
  with pytest.raises(DataError):
    cli.main(argv + ["--debug"])
  # Without the app extra: one line naming it, before any file is touched.
  real = cli.importlib.util.find_spec
  monkeypatch.setattr(cli.importlib.util, "find_spec",
                      lambda name: None if name == "tqdm" else real(name))
  err = _cli_fails(capsys, argv, 'pip install "bort_jax[app]"')
  assert len(err.strip().splitlines()) == 1
  assert not os.path.exists(tmp_path / "run")


def test_item15_bort_flags_need_a_bort_optimizer_and_data_must_fill_a_batch(
    digits, tmp_path, capsys):
  with pytest.raises(ConfigError, match="gamma applies to Bort optimizers"):
    TrainConfig(optimizer="adamw", gamma=0.5)
  for flag, value in (("--gamma", "0.1"), ("--mode", "l2-full"),
                      ("--amplitude", "1"), ("--placement", "coupled")):
    _cli_fails(capsys, ["train", "--optimizer", "adamw", flag, value,
                        "--out", str(tmp_path / "run")],
               f"{flag} applies to Bort optimizers only")
  empty = data_lib.Dataset(
      data_lib.Split(np.zeros((0, 8, 8, 1), np.float32),
                     np.zeros(0, np.int32)), digits.test)
  with pytest.raises(DataError, match="0 examples, fewer than one batch"):
    train(TINY, dataset=empty)
  with pytest.raises(DataError, match="lower --batch-size"):
    train(dataclasses.replace(TINY, batch_size=2000), dataset=digits)
