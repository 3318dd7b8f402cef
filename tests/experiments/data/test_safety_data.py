"""Red-team findings on the data files: identity, counts, overflow and bombs.

N7: an npz cache rewritten without its record, or another dataset's npz, must
not load silently. M4: a CIFAR label too large for NumPy is one line. M5: a
file declaring gigabytes is refused on its declaration, before it is read.
No test writes a large file: the sizes are only declared.
"""

import gzip
import io
import json
import pickle
import tarfile
import warnings
import zipfile

import numpy as np
import pytest

from bort_jax.experiments import data
from bort_jax.experiments.data import cache
from bort_jax.experiments.data import sources
from bort_jax.experiments.errors import ExperimentError
from tests.experiments.data import fakes

_KEYS = ("x_train", "y_train", "x_test", "y_test")


def _cached_mnist(monkeypatch, root, keep_sources=True):
  """Fake MNIST loaded once from trusted IDX files, so mnist.npz exists."""
  arrays, files = fakes.fake_mnist()
  fakes.write_files(root / "mnist", files)
  fakes.trust(monkeypatch, "mnist", files)
  data.load_splits("mnist", cache_dir=root)
  if not keep_sources:
    for f in files:
      (root / "mnist" / f"{f}.gz").unlink()
  return arrays, root / "mnist" / "mnist.npz"


def _members(path):
  with np.load(path, allow_pickle=False) as npz:
    return {k: npz[k] for k in npz.files}


def _rewrite_without_record_labels_shifted(path):
  """What the red team did: drop the record, shift every label by one."""
  members = _members(path)
  del members[cache.RECORD_KEY]
  members["y_train"] = (members["y_train"] + 1) % 10
  np.savez(path, **members)


def _one_line(error):
  message = str(error)
  assert "\n" not in message and isinstance(error, ExperimentError)
  return message


# --- N7: the npz cache names its dataset, counts and shapes -------------------


def test_n7_recordless_npz_with_shifted_labels_is_rebuilt_from_verified_idx(
    monkeypatch, tmp_path
):
  arrays, path = _cached_mnist(monkeypatch, tmp_path)
  _rewrite_without_record_labels_shifted(path)
  theirs = path.read_bytes()
  with pytest.warns(UserWarning) as record:
    ds = data.load_splits("mnist", cache_dir=tmp_path)
  fakes.assert_matches(ds, arrays)  # the originals' labels, not shifted ones
  [warning] = record
  message = str(warning.message)
  assert message.startswith(f"bort_jax: {path}: not the original mnist: its")
  assert "y_train, written as train-labels-idx1-ubyte" in message
  assert message.endswith(
      f"; moved it to mnist.unverified.npz and rebuilt it from {path.parent}"
  )
  assert "\n" not in message
  # The user's file is kept under a new name, never overwritten.
  assert (path.parent / "mnist.unverified.npz").read_bytes() == theirs
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    fakes.assert_matches(data.load_splits("mnist", cache_dir=tmp_path), arrays)


def test_n7_recordless_npz_with_shifted_labels_without_sources_is_refused(
    monkeypatch, tmp_path
):
  _, path = _cached_mnist(monkeypatch, tmp_path, keep_sources=False)
  _rewrite_without_record_labels_shifted(path)
  before = path.read_bytes()
  with pytest.raises(data.ChecksumError) as info:
    data.load_splits("mnist", cache_dir=tmp_path, download=False)
  message = _one_line(info.value)
  assert message.startswith(f"{path}: not the original mnist: its y_train")
  assert message.endswith(
      "; replace it with the original, or put mnist's original files beside"
      " it to rebuild it from them"
  )
  assert path.read_bytes() == before  # reported, not replaced
  assert sorted(p.name for p in path.parent.iterdir()) == ["mnist.npz"]


@pytest.mark.parametrize("with_record", [True, False], ids=["ours", "keras"])
def test_n7_mnist_npz_copied_as_fashion_mnist_is_refused(
    monkeypatch, tmp_path, with_record
):
  _, path = _cached_mnist(monkeypatch, tmp_path, keep_sources=False)
  _, fashion_files = fakes.fake_mnist(seed=3)
  fakes.trust(monkeypatch, "fashion_mnist", fashion_files)
  copy = tmp_path / "fashion_mnist" / "fashion_mnist.npz"
  copy.parent.mkdir()
  members = _members(path)
  if not with_record:
    del members[cache.RECORD_KEY]
  np.savez(copy, **members)
  error = data.CacheDamagedError if with_record else data.ChecksumError
  with pytest.raises(error) as info:
    data.load_splits("fashion_mnist", cache_dir=tmp_path)
  message = _one_line(info.value)
  assert message.startswith(f"{copy}: ")
  if with_record:
    assert "it is the cache of 'mnist', not of 'fashion_mnist'" in message
    assert "delete it to rebuild it" in message
  else:
    assert "not the original fashion_mnist: its x_train" in message


def test_n7_example_counts_are_checked(tmp_path):
  # Real sizes: a record-less MNIST npz of 12 + 5 examples is not MNIST.
  arrays, _ = fakes.fake_mnist()
  path = tmp_path / "mnist" / "mnist.npz"
  path.parent.mkdir()
  np.savez(path, **arrays)
  with pytest.raises(data.DataFileError) as info:
    data.load_splits("mnist", cache_dir=tmp_path)
  assert _one_line(info.value) == (
      f"{path}: the mnist train split has 12 examples, but the original has"
      " 60000; replace it with the original files of the dataset"
  )


def test_n7_cifar_npz_with_a_missing_example_is_refused(monkeypatch, tmp_path):
  # No hash is known for CIFAR-10's arrays: its counts are checked.
  fakes.expect_sizes(monkeypatch, "cifar10", 15, 4)
  rng = np.random.default_rng(0)
  path = tmp_path / "cifar10" / "cifar10.npz"
  path.parent.mkdir()
  np.savez(path, x_train=rng.integers(0, 256, (14, 32, 32, 3), np.uint8),
           y_train=np.zeros(14, np.uint8),
           x_test=rng.integers(0, 256, (4, 32, 32, 3), np.uint8),
           y_test=np.zeros(4, np.uint8))
  with pytest.raises(data.DataFileError, match="the cifar10 train split has 14"
                     " examples, but the original has 15"):
    data.load_splits("cifar10", cache_dir=tmp_path)


def test_n7_record_names_the_dataset_and_its_sizes(monkeypatch, tmp_path):
  _, path = _cached_mnist(monkeypatch, tmp_path)
  saved = json.loads(str(_members(path)[cache.RECORD_KEY]))
  assert saved["format"] == "bort_jax.data.cache/2"
  assert saved["dataset"] == "mnist"
  assert saved["examples"] == {"train": 12, "test": 5}
  assert saved["image_shape"] == [28, 28, 1]


def _as_previous_version(path):
  """The npz as the previous version wrote it: format 1, no dataset name."""
  members = _members(path)
  saved = json.loads(str(members[cache.RECORD_KEY]))
  old = {"format": "bort_jax.data.cache/1", "arrays": saved["arrays"],
         "examples": saved["examples"], "sha256": saved["sha256"]}
  members[cache.RECORD_KEY] = np.array(json.dumps(old))
  np.savez(path, **members)
  return members


def test_n7_cache_of_the_previous_version_is_verified_by_its_dataset(
    monkeypatch, tmp_path
):
  arrays, path = _cached_mnist(monkeypatch, tmp_path, keep_sources=False)
  members = _as_previous_version(path)
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # the genuine old cache loads silently
    fakes.assert_matches(data.load_splits("mnist", cache_dir=tmp_path), arrays)
  # Copied as Fashion-MNIST, its record cannot tell: the originals' hashes do.
  _, fashion_files = fakes.fake_mnist(seed=3)
  fakes.trust(monkeypatch, "fashion_mnist", fashion_files)
  copy = tmp_path / "fashion_mnist" / "fashion_mnist.npz"
  copy.parent.mkdir()
  np.savez(copy, **members)
  with pytest.raises(data.CacheDamagedError) as info:
    data.load_splits("fashion_mnist", cache_dir=tmp_path)
  message = _one_line(info.value)
  assert message.startswith(f"{copy}: damaged cache: its x_train, written as")
  assert "no local file can rebuild it: delete it to rebuild it" in message
  # Next to the original files, it is rebuilt from them instead.
  fashion_arrays, _ = fakes.fake_mnist(seed=3)
  fakes.write_files(copy.parent, fashion_files)
  with pytest.warns(UserWarning, match=f"rebuilt it from {copy.parent}$"):
    ds = data.load_splits("fashion_mnist", cache_dir=tmp_path)
  fakes.assert_matches(ds, fashion_arrays)
  assert json.loads(str(_members(copy)[cache.RECORD_KEY]))["dataset"] == (
      "fashion_mnist"
  )


# --- M4: a CIFAR label past int64 --------------------------------------------


def test_m4_cifar_label_of_2_to_the_100_is_one_line_naming_the_file(tmp_path):
  batches = fakes.cifar_batches(np.random.default_rng(0))
  rows = np.zeros((2, 3072), np.uint8)
  huge = pickle.dumps({b"data": rows, b"labels": [3, 2**100]})
  folder = fakes.write_cifar_dir(tmp_path / "cifar10", batches,
                                 {"data_batch_2": huge})
  with pytest.raises(data.DataFileError) as info:
    data.load_splits("cifar10", cache_dir=tmp_path)
  assert _one_line(info.value) == (
      f"{folder / 'data_batch_2'}: not a CIFAR-10 batch (ValueError: label 1"
      " is outside [0, 10)); replace it with the original from"
      f" {sources.CIFAR_URL}"
  )


# --- M5: sizes are checked on the declaration, before reading ----------------


def test_m5_tar_member_declaring_4_gib_is_refused_before_reading(tmp_path):
  member = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
  member.size = 4 * 2**30  # declared only: 1 KiB of data follows
  tar_path = tmp_path / "cifar10" / "cifar-10-python.tar.gz"
  tar_path.parent.mkdir()
  tar_path.write_bytes(gzip.compress(member.tobuf() + bytes(1024)))
  with pytest.raises(data.DataFileError) as info:
    data.load_splits("cifar10", cache_dir=tmp_path)
  assert _one_line(info.value) == (
      f"{tar_path}: cifar-10-batches-py/data_batch_1 declares 4294967296"
      f" bytes, more than the {sources.CIFAR_BATCH_MAX_BYTES} a CIFAR-10 file"
      f" can be; replace it with the original from {sources.CIFAR_URL}"
  )


def test_m5_cifar_batch_file_larger_than_a_batch_is_refused_unread(tmp_path):
  batches = fakes.cifar_batches(np.random.default_rng(0))
  folder = fakes.write_cifar_dir(tmp_path / "cifar10", batches)
  with open(folder / "test_batch", "r+b") as f:
    f.truncate(sources.CIFAR_BATCH_MAX_BYTES + 1)  # sparse: no disk used
  with pytest.raises(data.DataFileError) as info:
    data.load_splits("cifar10", cache_dir=tmp_path)
  assert _one_line(info.value).startswith(
      f"{folder / 'test_batch'}: {sources.CIFAR_BATCH_MAX_BYTES + 1} bytes,"
      f" more than the {sources.CIFAR_BATCH_MAX_BYTES} the original can be"
  )


def _npz_declaring(path, key, shape, record=None):
  """A small npz whose ``key`` member's npy header declares ``shape``."""
  arrays, _ = fakes.fake_mnist()
  with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
    for k in _KEYS:
      buf = io.BytesIO()
      if k == key:
        header = {"descr": "|u1", "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_1_0(buf, header)
        buf.write(bytes(4096))  # the rest is never there
      else:
        np.lib.format.write_array(buf, arrays[k])
      z.writestr(f"{k}.npy", buf.getvalue())
    if record is not None:
      buf = io.BytesIO()
      np.lib.format.write_array(buf, np.array(record))
      z.writestr(f"{cache.RECORD_KEY}.npy", buf.getvalue())


@pytest.mark.parametrize("with_record", [False, True], ids=["keras", "ours"])
def test_m5_npz_declaring_a_4_gib_array_is_refused_before_inflating(
    monkeypatch, tmp_path, with_record
):
  path = tmp_path / "mnist" / "mnist.npz"
  path.parent.mkdir()
  shape = (5_478_275, 28, 28, 1)  # 4 GiB of uint8
  record = json.dumps({"format": cache.RECORD_FORMAT}) if with_record else None
  _npz_declaring(path, "x_train", shape, record)
  real_empty = np.empty

  def bounded_empty(shape, *args, **kwargs):
    assert np.prod(shape, dtype=np.int64) < 2**26, "allocated the declaration"
    return real_empty(shape, *args, **kwargs)

  monkeypatch.setattr(cache.np, "empty", bounded_empty)
  error = data.CacheDamagedError if with_record else data.DataFileError
  with pytest.raises(error) as info:
    data.load_splits("mnist", cache_dir=tmp_path, download=False)
  message = _one_line(info.value)
  damaged = "damaged cache: " if with_record else ""
  assert message.startswith(
      f"{path}: {damaged}x_train declares 4294967600 bytes (shape {shape} of"
      " uint8), more than the 47040000 of the 60000 mnist train images"
  )


def test_m5_idx_gz_inflating_past_the_original_size_is_refused(
    monkeypatch, tmp_path
):
  _, files = fakes.fake_mnist()
  fakes.trust(monkeypatch, "mnist", files)
  fakes.write_files(tmp_path / "mnist", files)
  bomb = tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"
  bomb.write_bytes(gzip.compress(bytes(10**6)))  # 1 KiB inflating to 1 MB
  with pytest.raises(data.DataFileError) as info:
    data.load_splits("mnist", cache_dir=tmp_path, download=False)
  assert _one_line(info.value).startswith(
      f"{bomb}: inflates to more than 13 bytes, the size of the original"
  )
