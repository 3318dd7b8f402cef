"""Run folders and checkpoints: red-team v2 findings N2, N13, M6 and M8.

N3 (the lock under churn, across processes) is tests/experiments/
test_lock_stress.py. Each test fails on the application before the fix.
"""

import glob
import os
import shutil

import jax
import numpy as np
import pytest
from flax import nnx

from bort_jax.experiments import cli
from bort_jax.experiments import data as data_lib
from bort_jax.experiments import workdir
from bort_jax.experiments import train_folder
from bort_jax.experiments.checkpoints import Checkpoints
from bort_jax.experiments.config import TrainConfig
from bort_jax.experiments.loop import train
from bort_jax.experiments.workdir import RunDirectoryError
from bort_jax.experiments.workdir import RunFolder

# 1347 digits / 256 = 5 steps per epoch, 10 in all: a second or two.
TINY = TrainConfig(data="digits", model="mlp", width=8, epochs=2,
                   batch_size=256, learning_rate=1e-2)


def _cli_fails(capsys, argv, message):
  with pytest.raises(SystemExit) as info:
    cli.main(argv)
  assert info.value.code == 2
  err = capsys.readouterr().err
  assert message in err, err
  assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
  return err


@pytest.fixture(scope="module")
def digits():
  return data_lib.load_splits("digits")


@pytest.fixture(scope="module")
def finished_run(digits, tmp_path_factory):
  """A run trained to the end in one go; it keeps checkpoints 5 and 10."""
  path = tmp_path_factory.mktemp("finished") / "run"
  result = train(TINY, str(path), dataset=digits)
  assert sorted(os.listdir(path / "checkpoints")) == ["10", "5"]
  return path, result


def _truncate_a_data_file(step):
  # The largest file holds the arrays' bytes (the others are index nodes).
  files = glob.glob(str(step / "state" / "ocdbt.process_0" / "d" / "*"))
  os.truncate(max(files, key=os.path.getsize), 3)


def _garbage_meta(step):
  (step / "meta" / "metadata").write_text("{garbage")


def _remove_metadata(step):
  (step / "state" / "_METADATA").unlink()


def _empty_the_folder(step):
  shutil.rmtree(step)
  step.mkdir()


def _same_state(a, b):
  leaves = lambda r: (jax.tree.leaves(nnx.state(r.model))
                      + jax.tree.leaves(nnx.state(r.optimizer)))
  for x, y in zip(leaves(a), leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.slow
@pytest.mark.parametrize("damage", [
    _truncate_a_data_file, _garbage_meta, _remove_metadata, _empty_the_folder,
], ids=lambda f: f.__name__.strip("_"))
def test_n2_a_damaged_newest_checkpoint_is_moved_aside_and_the_run_finishes(
    digits, finished_run, tmp_path, damage):
  source, straight = finished_run
  path = tmp_path / "run"
  shutil.copytree(source, path)
  damage(path / "checkpoints" / "10")
  lines = []
  resumed = train(TINY, str(path), dataset=digits, resume=True,
                  log=lines.append)
  aside = str(path / "checkpoints" / "10.damaged-1")
  moved = [l for l in lines if "Checkpoint 10" in l]
  assert len(moved) == 1 and "damaged" in moved[0], lines
  assert f"moved it aside to {aside!r}" in moved[0]
  assert "Resuming from checkpoint 5" in moved[0]
  assert "\n" not in moved[0]
  assert resumed.finished and resumed.step == 10
  _same_state(resumed, straight)  # epoch 2 retrained exactly
  assert sorted(os.listdir(path / "checkpoints")) == [
      "10", "10.damaged-1", "5"]
  # A second --resume finds the new checkpoint 10 and completes.
  lines = []
  again = train(TINY, str(path), dataset=digits, resume=True,
                log=lines.append)
  assert again.finished and again.step == 10
  assert not any("damaged" in l for l in lines), lines
  _same_state(again, straight)


def test_n13_an_out_folder_named_like_a_url_scheme_is_refused_before_writing(
    digits, tmp_path, capsys, monkeypatch):
  for name in ("gs:", "s3:", "file:"):
    with pytest.raises(RunDirectoryError, match=f"folder named '{name}'"):
      train(TINY, str(tmp_path / name / "run"), dataset=digits)
  assert os.listdir(tmp_path) == []
  loads = []
  monkeypatch.setattr(data_lib, "load_splits",
                      lambda *a, **k: loads.append(a) or None)
  err = _cli_fails(capsys, ["train", "--out", str(tmp_path / "gs:" / "run")],
                   "which orbax reads as a URL scheme")
  assert "choose a name without the trailing ':'" in err
  assert os.listdir(tmp_path) == [] and loads == []
  # A colon elsewhere in a name is not a scheme, and is accepted.
  assert workdir.check_path(tmp_path / "lr:0.1") == tmp_path / "lr:0.1"


def test_m6_overwrite_removes_only_our_checkpoints_and_keeps_the_users_files(
    tmp_path):
  path = tmp_path / "run"
  path.mkdir()
  (path / "config.json").write_text(TINY.to_json())
  (path / "metrics.json").write_text("{}")
  with Checkpoints(path / "checkpoints") as ckpt:
    ckpt.save(3, {"w": np.ones(2)}, {"step": 3})
  ours = ["3", "4.orbax-checkpoint-tmp", "2.damaged-1"]
  for name in ours[1:]:
    (path / "checkpoints" / name / "state").mkdir(parents=True)
  (path / "checkpoints" / "thesis.ckpt").write_text("years of work")
  (path / "checkpoints" / "notes").mkdir()
  (path / "checkpoints" / "notes" / "a.txt").write_text("mine")
  folder, restore = train_folder.open_run(path, TINY, resume=False,
                                          overwrite=True)
  folder.close()
  assert not restore
  assert sorted(os.listdir(path / "checkpoints")) == ["notes", "thesis.ckpt"]
  assert (path / "checkpoints" / "thesis.ckpt").read_text() == "years of work"
  assert (path / "checkpoints" / "notes" / "a.txt").read_text() == "mine"
  assert sorted(os.listdir(path)) == ["checkpoints"]
  # With nothing of the user's in it, checkpoints/ goes with the steps.
  (path / "config.json").write_text(TINY.to_json())
  os.remove(path / "checkpoints" / "thesis.ckpt")
  shutil.rmtree(path / "checkpoints" / "notes")
  (path / "checkpoints" / "7").mkdir()
  folder, _ = train_folder.open_run(path, TINY, resume=False, overwrite=True)
  folder.close(remove_if_empty=True)
  assert not os.path.exists(path / "checkpoints")


def test_m8_a_lock_file_that_is_not_a_regular_file_is_one_line_naming_it(
    tmp_path, capsys):
  path = tmp_path / "run"
  path.mkdir()
  lock = path / workdir.LOCK_NAME
  os.mkfifo(lock)
  with pytest.raises(RunDirectoryError,
                     match=f"lock file '{lock}' is a FIFO, not a regular "
                     "file; remove it"):
    RunFolder.open(path)
  err = _cli_fails(capsys, ["train", "--out", str(path)], "is a FIFO")
  assert str(lock) in err
  assert os.listdir(path) == [workdir.LOCK_NAME]
  os.remove(lock)
  lock.mkdir()
  with pytest.raises(RunDirectoryError, match="is a folder, not a regular"):
    RunFolder.open(path)
  lock.rmdir()
  os.symlink(tmp_path / "elsewhere", lock)
  with pytest.raises(RunDirectoryError, match="is a symbolic link"):
    RunFolder.open(path)
  assert not os.path.exists(tmp_path / "elsewhere")


def test_a_marker_that_is_not_a_regular_file_marks_nothing_and_never_blocks(
    tmp_path):
  # A FIFO at the marker's path: holds() waited on it for a writer forever.
  path = tmp_path / "out"
  path.mkdir()
  os.mkfifo(path / workdir.MARKER_NAME)
  with pytest.raises(RunDirectoryError, match="holds no demo"):
    workdir.open_output(path, kind="demo", files=(), resume=True)
  assert workdir.output_above(path / "run") is None
  assert os.listdir(path) == [workdir.MARKER_NAME]


def test_a_folder_holding_only_its_marker_is_taken_as_empty(tmp_path):
  # An example that failed before writing (dbort_pca_mnist --k 785) left
  # only its marker, and the corrected command was sent to --overwrite.
  path = tmp_path / "out"
  path.mkdir()
  (path / workdir.MARKER_NAME).write_text('{"kind": "study"}')
  with workdir.open_output(path, kind="study", files=("a.txt",)) as folder:
    folder.write_text("a.txt", "done")
  with pytest.raises(RunDirectoryError, match="already exists"):
    workdir.open_output(path, kind="study", files=("a.txt",))
  # Another kind's marker alone is still not this kind's folder.
  other = tmp_path / "other"
  other.mkdir()
  (other / workdir.MARKER_NAME).write_text('{"kind": "demo"}')
  with pytest.raises(RunDirectoryError, match="holds no study"):
    workdir.open_output(other, kind="study", files=("a.txt",))
  assert os.listdir(other) == [workdir.MARKER_NAME]
