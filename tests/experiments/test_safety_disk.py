"""A disk that fills mid-run is one line (red team v2, issue 15: M3).

The real case mounts a small tmpfs, so that the first checkpoint fits and a
later one does not (root only; skipped where mounting is not allowed). The
message itself is also checked without a mount, by making orbax's save fail
the way it does on a full disk.
"""

import os
import shutil
import subprocess
import sys
import uuid

import pytest

from bort_jax.experiments import checkpoints


def _mount_tmpfs(path, size):
  os.makedirs(path, exist_ok=True)
  if not shutil.which("mount") or os.geteuid() != 0:
    return False
  done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}",
                         "tmpfs", str(path)], capture_output=True)
  return done.returncode == 0


@pytest.mark.slow
def test_m3_disk_full_mid_run_is_one_line(tmp_path):
  disk = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
  if not _mount_tmpfs(disk, "6m"):
    pytest.skip("cannot mount a small tmpfs here (needs root)")
  try:
    # ~3 MB per checkpoint (model and Adam state): the first fits, the
    # second fills the 6 MB disk.
    done = subprocess.run(
        [sys.executable, "-m", "bort_jax.experiments.cli", "train", "--data",
         "digits", "--model", "mlp", "--width", "512", "--epochs", "6",
         "--out", str(disk / "run"), "--offline", "--no-progress"],
        capture_output=True, text=True, timeout=600)
  finally:
    subprocess.run(["umount", str(disk)], capture_output=True)
  assert done.returncode == 2, done.stderr
  lines = done.stderr.splitlines()
  assert len(lines) == 1, done.stderr
  assert "no space left on the device" in lines[0]
  assert "continue with --resume" in lines[0]


class _FullDisk:
  """An orbax manager whose every save fails as on a full disk."""

  def __init__(self, steps):
    self._steps = steps

  def save(self, *args, **kwargs):
    raise ValueError(
        'RESOURCE_EXHAUSTED: Error writing "x" in OCDBT database: Failed to '
        "write 316181 bytes to file 18: No space left on device "
        "[os_error_code='28']")

  def all_steps(self):
    return self._steps


def test_m3_a_full_disk_names_the_intact_checkpoint(tmp_path):
  ckpt = checkpoints.Checkpoints.__new__(checkpoints.Checkpoints)
  ckpt.directory = str(tmp_path)
  ckpt._manager = _FullDisk([0, 10])
  with pytest.raises(checkpoints.CheckpointError) as info:
    ckpt.save(20, {}, {})
  message = str(info.value)
  assert "\n" not in message
  assert message == (
      f"Cannot save checkpoint 20 in {str(tmp_path)!r}: no space left on the "
      "device; free some space (checkpoint 10 is intact, so continue with "
      "--resume) or choose another --out.")


def test_m3_a_checkpoint_larger_than_the_free_space_is_refused_before_writing(
    tmp_path, monkeypatch):
  import numpy as np  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(checkpoints, "_free_bytes", lambda directory: 2 << 20)
  ckpt = checkpoints.Checkpoints.__new__(checkpoints.Checkpoints)
  ckpt.directory = str(tmp_path)
  ckpt._manager = _FullDisk([0, 10])  # its save would raise: never reached
  with pytest.raises(checkpoints.CheckpointError) as info:
    ckpt.save(20, {"w": np.zeros(1 << 20, np.float32)}, {})
  assert str(info.value) == (
      f"Cannot save checkpoint 20 in {str(tmp_path)!r}: no space left on the "
      "device (it needs about 5.0 MiB, 2.0 MiB are free); free some space "
      "(checkpoint 10 is intact, so continue with --resume) or choose "
      "another --out.")
