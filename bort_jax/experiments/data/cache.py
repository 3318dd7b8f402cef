"""The npz cache ``<cache>/<name>/<name>.npz``, checked on every load.

Every npz this module writes holds, next to the four arrays, a JSON record
(member ``bort_jax_record``) naming the dataset, its example counts and image
shape, each array's dtype and shape, and the SHA-256 of the arrays' names,
dtypes, shapes and bytes. :func:`read` checks all of it on every load (about
0.1 s for MNIST), so an edited, truncated or renamed cache is detected, named,
and rebuilt from the source by the loader. MNIST's and Fashion-MNIST's arrays
are moreover written back as IDX files and matched with the originals'
SHA-256, so that no record, forged or missing, can pass another dataset off
as them.

An npz without a record is a file the user put there (Keras' layout): its
dtypes, shapes, counts and labels are checked, MNIST's and Fashion-MNIST's
against the originals' hashes, and it is never overwritten. A cache of the
previous version (record format 1, which does not name its dataset) is read
the same way: its hash is checked, then the dataset's identity as for a
record-less file.

Nothing is read before its size is known: each npy member's header is
checked against what the dataset can hold (:func:`~bort_jax.experiments.data
.arrays.declared_problem`), and then exactly the bytes it declares are read,
so a small zip that inflates to gigabytes is refused before any of them.

Writes are all-or-nothing: each file goes to a fresh temporary name (created
with ``O_EXCL``, never through a symlink) and is renamed into place; if any
file fails, the ones already written in that call are removed again, so
"nothing was saved" is true when :func:`save` says so.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import BinaryIO, Callable, Mapping
import zipfile

import numpy as np

from bort_jax.experiments import workdir
from bort_jax.experiments.data import idx
from bort_jax.experiments.data.arrays import ARRAY_KEYS
from bort_jax.experiments.data.arrays import Arrays
from bort_jax.experiments.data.arrays import ArraysProblem
from bort_jax.experiments.data.arrays import check_arrays
from bort_jax.experiments.data.arrays import declared_problem
from bort_jax.experiments.data.arrays import normalized
from bort_jax.experiments.data.arrays import size_of
from bort_jax.experiments.data.errors import CacheDamagedError
from bort_jax.experiments.data.errors import ChecksumError
from bort_jax.experiments.data.errors import DataFileError

RECORD_KEY = "bort_jax_record"
RECORD_FORMAT = "bort_jax.data.cache/2"
# Written by the previous version: no dataset name, no expected sizes.
OLD_RECORD_FORMATS = ("bort_jax.data.cache/1",)
_RECORD_MAX_BYTES = 1 << 20  # the record is a few hundred bytes of JSON

Contents = bytes | Callable[[BinaryIO], None]


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


def arrays_sha256(arrays: Mapping[str, np.ndarray]) -> str:
  """SHA-256 over each array's name, dtype, shape and C-order bytes.

  Examples:
    >>> import numpy as np
    >>> a = {k: np.zeros(2, np.uint8) for k in ARRAY_KEYS}
    >>> b = dict(a, y_test=np.array([0, 1], np.uint8))
    >>> arrays_sha256(a) == arrays_sha256(dict(a))
    True
    >>> arrays_sha256(a) == arrays_sha256(b)
    False
  """
  digest = hashlib.sha256()
  for key in ARRAY_KEYS:
    array = np.ascontiguousarray(arrays[key])
    digest.update(f"{key} {array.dtype.str} {array.shape}\n".encode())
    digest.update(array.reshape(-1).view(np.uint8))
  return digest.hexdigest()


def record(name: str, arrays: Mapping[str, np.ndarray]) -> dict:
  """The hash record stored with the arrays (see the module docstring)."""
  size = size_of(name)
  return {
      "format": RECORD_FORMAT,
      "dataset": name,
      "examples": {s: len(arrays[f"y_{s}"]) for s in ("train", "test")},
      "image_shape": list(size.image_shape),
      "arrays": {
          k: {"dtype": arrays[k].dtype.str, "shape": list(arrays[k].shape)}
          for k in ARRAY_KEYS
      },
      "sha256": arrays_sha256(arrays),
  }


def npz_contents(name: str, arrays: Arrays) -> Callable[[BinaryIO], None]:
  """A writer of ``name``'s arrays and their hash record as one npz."""
  text = json.dumps(record(name, arrays), sort_keys=True)

  def write(f: BinaryIO) -> None:
    np.savez(f, **{k: arrays[k] for k in ARRAY_KEYS}, **{RECORD_KEY: text})

  return write


def _record_problem(
    name: str, text: str, arrays: Arrays, missing: list[str]
) -> str | None:
  """Why ``arrays`` do not match the record ``text``, or None if they do."""
  try:
    saved = json.loads(text)
    declared, expected = saved["arrays"], saved["sha256"]
    fmt = saved.get("format")
  except (ValueError, TypeError, KeyError, AttributeError):
    return "its hash record is unreadable"
  if fmt not in (RECORD_FORMAT, *OLD_RECORD_FORMATS):
    return f"its hash record has the unknown format {fmt!r}"
  if fmt == RECORD_FORMAT:
    if saved.get("dataset") != name:
      return (
          f"it is the cache of {saved.get('dataset')!r}, not of {name!r} (a"
          " renamed or copied file)"
      )
    size = size_of(name)
    sizes = {"train": size.train, "test": size.test}
    if saved.get("examples") != sizes or saved.get("image_shape") != list(
        size.image_shape
    ):
      return (
          f"its record says {saved.get('examples')} examples of"
          f" {saved.get('image_shape')}, but {name} has {sizes} of"
          f" {list(size.image_shape)}"
      )
  if missing:
    return f"it lacks {', '.join(missing)}"
  for key in ARRAY_KEYS:
    array = arrays[key]
    actual = {"dtype": array.dtype.str, "shape": list(array.shape)}
    if declared.get(key) != actual:
      return f"{key} is {actual}, but its record says {declared.get(key)}"
  actual = arrays_sha256(arrays)
  if actual != expected:
    return (
        f"its arrays hash to {actual[:16]}…, but its record says"
        f" {str(expected)[:16]}… (the file was edited or damaged)"
    )
  return None


def _read_member(
    npz: zipfile.ZipFile, info: zipfile.ZipInfo,
    check: Callable[[tuple[int, ...], np.dtype], str | None],
) -> np.ndarray:
  """One npy member, its header checked by ``check`` before any data is read.

  Raises:
    ArraysProblem: ``check`` refused the header.
    ValueError: (and zipfile/zlib errors) the member is not a complete npy.
  """
  with npz.open(info) as f:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
      shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
      shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:
      raise ValueError(f"npy format version {version}")
    if dtype.hasobject:
      raise ArraysProblem(f"{info.filename} is an object array")
    problem = check(shape, dtype)
    if problem:
      raise ArraysProblem(problem)
    # Exactly the declared bytes, which check has bounded: never the rest.
    flat = np.empty(math.prod(shape), dtype)
    view = flat.view(np.uint8)
    if f.readinto(view) != view.size:
      raise ValueError(f"{info.filename} is truncated")
  return flat.reshape(shape, order="F" if fortran else "C")


def _record_check(shape: tuple[int, ...], dtype: np.dtype) -> str | None:
  if shape != () or dtype.kind != "U" or dtype.itemsize > _RECORD_MAX_BYTES:
    return f"its hash record is {dtype} of shape {shape}, not a short text"
  return None


def _read_arrays(
    name: str, npz: zipfile.ZipFile, infos: dict[str, zipfile.ZipInfo]
) -> Arrays:
  """The arrays of :data:`ARRAY_KEYS` present in ``npz``, each bounded."""
  arrays = {}
  for key in ARRAY_KEYS:
    if f"{key}.npy" in infos:
      check = lambda s, d, key=key: declared_problem(name, key, s, d)
      arrays[key] = _read_member(npz, infos[f"{key}.npy"], check)
  return arrays


def read(name: str, path: Path) -> Arrays:
  """Loads and verifies a cached ``<name>.npz``.

  Args:
    name: the dataset, for the shape, count and identity checks.
    path: the npz file.

  Returns:
    The checked arrays (see
    :func:`~bort_jax.experiments.data.arrays.check_arrays`).

  Raises:
    CacheDamagedError: the file cannot be read as an npz, or it has a record
      and its arrays do not match it, or are not ``name``'s (the loader then
      rebuilds it if it can).
    DataFileError: an npz without a record (the user's own file) is not
      ``name``'s original data (:class:`ChecksumError` when its arrays differ
      from the originals' hashes); it is reported, never replaced.
  """
  where = os.fspath(path)
  text, refused = None, None
  try:
    # Our own handle: zipfile leaks nothing then when a damaged zip fails.
    with open(path, "rb") as f, zipfile.ZipFile(f) as npz:
      infos = {i.filename: i for i in npz.infolist()}
      if f"{RECORD_KEY}.npy" in infos:
        record_member = infos[f"{RECORD_KEY}.npy"]
        text = str(_read_member(npz, record_member, _record_check))
      try:
        arrays = _read_arrays(name, npz, infos)
      except ArraysProblem as problem:  # its owner decides, below
        refused = problem
  except ArraysProblem as problem:  # the record itself is not ours
    raise CacheDamagedError(f"{where}: damaged cache: {problem}") from None
  except Exception as e:  # zipfile, zlib, numpy: any failure means damage
    raise CacheDamagedError(
        f"{where}: unreadable cache ({type(e).__name__}: {e})"
    ) from None
  if refused is not None:
    if text is None:
      raise refused.error(where)
    raise CacheDamagedError(f"{where}: damaged cache: {refused}")
  missing = [k for k in ARRAY_KEYS if k not in arrays]
  if text is None:
    if missing:
      raise DataFileError(
          f"{where} is not a valid {name} cache: it lacks"
          f" {', '.join(missing)}; delete it to rebuild it"
      )
    checked = check_arrays(name, arrays, where)
    problem = idx.not_original(name, checked)
    if problem:
      raise ChecksumError(
          f"{where}: not the original {name}: {problem}; replace it with the"
          f" original, or put {name}'s original files beside it to rebuild it"
          " from them"
      )
    return checked
  problem = _record_problem(name, text, arrays, missing)
  if problem is None:
    try:
      checked = normalized(name, arrays)
    except ArraysProblem as e:
      problem = str(e)
    else:
      problem = idx.not_original(name, checked)
  if problem:
    raise CacheDamagedError(f"{where}: damaged cache: {problem}")
  return checked


def write_new(path: Path, data: Contents, *, replace: bool = False) -> bool:
  """Writes ``path`` atomically; returns False if it exists and is kept.

  Args:
    path: the file to write; its folder is created if needed.
    data: the bytes, or a function writing them to a binary file.
    replace: replace an existing file (only a cache file we wrote).

  Returns:
    Whether the file was written.

  Raises:
    OSError: the file could not be written; no temporary file is left
      (:func:`bort_jax.experiments.workdir.atomic_file`).
  """
  if path.exists() and not replace:  # never replace a file we did not create
    return False
  path.parent.mkdir(parents=True, exist_ok=True)
  with workdir.atomic_file(path, "wb") as f:
    if callable(data):
      data(f)
    else:
      f.write(data)
  return True


def save(
    directory: Path,
    files: Mapping[str, Contents],
    *,
    replace: frozenset[str] = frozenset(),
) -> str | None:
  """Writes ``files`` into ``directory``, all or nothing.

  Args:
    directory: the dataset's cache folder.
    files: file name -> contents, written in this order (the npz last, so
      that it is only there when its companions are).
    replace: the names that may replace an existing file (a damaged cache).

  Returns:
    None when every file is in place, else one sentence saying why nothing
    was saved (or, if a written file could not be removed again, which).

  Examples:
    >>> import pathlib, tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...   blocker = pathlib.Path(tmp) / "a_file"
    ...   _ = blocker.write_bytes(b"")
    ...   print(save(blocker / "mnist", {"x.bin": b"1"}))  # doctest: +ELLIPSIS
    could not write .../a_file/mnist/x.bin (Not a directory)
  """
  written = []
  for file, data in files.items():
    path = directory / file
    try:
      if write_new(path, data, replace=file in replace):
        written.append(path)
    except OSError as e:
      reason = f"could not write {path} ({e.strerror or e})"
      kept = []
      for done in written:
        try:
          done.unlink()
        except OSError:
          kept.append(done.name)
      if kept:
        reason += f"; {', '.join(kept)} could not be removed again"
      return reason
  return None
