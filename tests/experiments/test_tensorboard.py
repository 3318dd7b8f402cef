"""The per-epoch metrics as TensorBoard event files in ``<out>/tensorboard``."""

import os
import struct

import pytest
from tensorboardX.proto import event_pb2

from bort_jax.experiments import data as data_lib
from bort_jax.experiments import loop
from bort_jax.experiments import train_folder
from bort_jax.experiments.config import TrainConfig


@pytest.fixture(scope="module")
def digits():
  return data_lib.load_splits("digits")


def read_scalars(folder):
  """``{tag: {step: value}}`` from every event file, oldest file first.

  The records are TFRecords (length, its CRC, the data, its CRC) holding
  ``Event`` protos; a later file's value at a step replaces an earlier one,
  as TensorBoard's purge does after a restart.
  """
  scalars = {}
  for name in sorted(os.listdir(folder),
                     key=lambda n: os.path.getmtime(os.path.join(folder, n))):
    if not name.startswith(train_folder.EVENT_FILE_PREFIX):
      continue
    with open(os.path.join(folder, name), "rb") as f:
      data = f.read()
    offset = 0
    while offset < len(data):
      (length,) = struct.unpack("<Q", data[offset:offset + 8])
      record = data[offset + 12:offset + 12 + length]
      offset += 12 + length + 4
      event = event_pb2.Event.FromString(record)
      for value in event.summary.value:
        scalars.setdefault(value.tag, {})[event.step] = value.simple_value
  return scalars


def _config(**kwargs):
  return TrainConfig(**{**dict(data="digits", model="mlp", width=16, epochs=1,
                               batch_size=256), **kwargs})


@pytest.mark.slow
def test_one_epoch_run_writes_test_accuracy_per_epoch(tmp_path, digits):
  out = tmp_path / "run"
  result = loop.train(_config(), str(out), dataset=digits)
  events = out / train_folder.TENSORBOARD_DIR
  names = [n for n in os.listdir(events)
           if n.startswith(train_folder.EVENT_FILE_PREFIX)]
  assert len(names) == 1, names
  scalars = read_scalars(events)
  assert scalars["test_accuracy"] == pytest.approx(
      {r["epoch"]: r["test_accuracy"] for r in result.history})
  assert set(scalars["constraint_error"]) == {0, 1}
  assert set(scalars["train_loss"]) == {1}  # epoch 0 has no training loss


@pytest.mark.slow
def test_resume_appends_and_overwrite_removes_only_event_files(tmp_path,
                                                               digits):
  out = tmp_path / "run"
  events = out / train_folder.TENSORBOARD_DIR
  config = _config(epochs=3)  # 5 steps per epoch
  stopped = loop.train(config, str(out), dataset=digits, max_steps=7)
  assert not stopped.finished
  assert set(read_scalars(events)["test_accuracy"]) == {0, 1}
  result = loop.train(config, str(out), dataset=digits, resume=True)
  assert result.finished
  files = [n for n in os.listdir(events)
           if n.startswith(train_folder.EVENT_FILE_PREFIX)]
  assert len(files) == 2, files  # one per start: resume appends
  assert read_scalars(events)["test_accuracy"] == pytest.approx(
      {r["epoch"]: r["test_accuracy"] for r in result.history})
  # --overwrite: our event files go; a file of the user's stays, and so
  # does another tool's event file (every events.out.tfevents.* went).
  (events / "notes.txt").write_text("mine")
  foreign = train_folder.EVENT_FILE_PREFIX + "1700000000.host.from-my-job"
  (events / foreign).write_text("theirs")
  loop.train(_config(), str(out), dataset=digits, overwrite=True)
  left = sorted(os.listdir(events))
  assert {"notes.txt", foreign} <= set(left) and not set(files) & set(left)
  (events / foreign).unlink()  # not a TFRecord file
  assert set(read_scalars(events)["test_accuracy"]) == {0, 1}


def test_a_tensorboard_link_is_refused_before_anything_is_written(tmp_path,
                                                                  digits):
  out = tmp_path / "run"
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  loop.train(_config(), str(out), dataset=digits)
  events = out / train_folder.TENSORBOARD_DIR
  for name in os.listdir(events):
    os.unlink(events / name)
  events.rmdir()
  events.symlink_to(elsewhere)
  before = sorted(os.listdir(out))
  with pytest.raises(loop.RunDirectoryError, match="not a folder"):
    loop.train(_config(), str(out), dataset=digits, overwrite=True)
  assert sorted(os.listdir(out)) == before and not os.listdir(elsewhere)
