"""The npz cache ``<cache>/<name>/<name>.npz``, its hash checked on every load.

Every npz this module writes holds, next to the four arrays, a JSON record
(member ``bort_jax_record``) of each array's dtype and shape, the number of
examples per split, and the SHA-256 of the arrays' names, dtypes, shapes and
bytes. :func:`read` recomputes that hash on every load (about 0.1 s for
MNIST), so an edited or truncated cache is detected, named, and rebuilt from
the source by the loader. An npz without a record is a file the user put
there (Keras' layout): its dtypes, shapes and labels are checked, and it is
never overwritten.

Writes are all-or-nothing: each file goes to a fresh temporary name (created
with ``O_EXCL``, never through a symlink) and is renamed into place; if any
file fails, the ones already written in that call are removed again, so
"nothing was saved" is true when :func:`save` says so.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import BinaryIO, Callable, Mapping

import numpy as np

from bort_jax.experiments.data.arrays import ARRAY_KEYS
from bort_jax.experiments.data.arrays import Arrays
from bort_jax.experiments.data.arrays import check_arrays
from bort_jax.experiments.data.errors import CacheDamagedError
from bort_jax.experiments.data.errors import DataFileError

RECORD_KEY = "bort_jax_record"
RECORD_FORMAT = "bort_jax.data.cache/1"

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


def record(arrays: Mapping[str, np.ndarray]) -> dict:
  """The hash record stored with the arrays (see the module docstring)."""
  return {
      "format": RECORD_FORMAT,
      "arrays": {
          k: {"dtype": arrays[k].dtype.str, "shape": list(arrays[k].shape)}
          for k in ARRAY_KEYS
      },
      "examples": {s: len(arrays[f"y_{s}"]) for s in ("train", "test")},
      "sha256": arrays_sha256(arrays),
  }


def npz_contents(arrays: Arrays) -> Callable[[BinaryIO], None]:
  """A writer of the arrays and their hash record as one npz, for save."""
  text = json.dumps(record(arrays), sort_keys=True)

  def write(f: BinaryIO) -> None:
    np.savez(f, **{k: arrays[k] for k in ARRAY_KEYS}, **{RECORD_KEY: text})

  return write


def _problem(text: str, arrays: Arrays, missing: list[str]) -> str | None:
  """Why ``arrays`` do not match the record ``text``, or None if they do."""
  try:
    saved = json.loads(text)
    declared, expected = saved["arrays"], saved["sha256"]
  except (ValueError, TypeError, KeyError):
    return "its hash record is unreadable"
  if saved.get("format") != RECORD_FORMAT:
    return f"its hash record has the unknown format {saved.get('format')!r}"
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


def read(name: str, path: Path) -> Arrays:
  """Loads and verifies a cached ``<name>.npz``.

  Args:
    name: the dataset, for the shape checks.
    path: the npz file.

  Returns:
    The checked arrays (see
    :func:`~bort_jax.experiments.data.arrays.check_arrays`).

  Raises:
    CacheDamagedError: the file cannot be read as an npz, or its arrays do
      not match its hash record (the loader then rebuilds it if it can).
    DataFileError: an npz without a record (the user's own file) holds the
      wrong arrays; it is the user's, so it is reported, never replaced.
  """
  where = os.fspath(path)
  try:
    # Our own handle: np.load leaks its own when a damaged zip makes it fail.
    with open(path, "rb") as f, np.load(f, allow_pickle=False) as npz:
      text = str(npz[RECORD_KEY][()]) if RECORD_KEY in npz.files else None
      missing = [k for k in ARRAY_KEYS if k not in npz.files]
      arrays = {k: npz[k] for k in ARRAY_KEYS if k in npz.files}
  except Exception as e:  # zipfile, zlib, numpy: any failure means damage
    raise CacheDamagedError(
        f"{where}: unreadable cache ({type(e).__name__}: {e})"
    ) from None
  if text is None:
    if missing:
      raise DataFileError(
          f"{where} is not a valid {name} cache: it lacks"
          f" {', '.join(missing)}; delete it to rebuild it"
      )
    return check_arrays(name, arrays, where)
  problem = _problem(text, arrays, missing)
  if problem:
    raise CacheDamagedError(f"{where}: damaged cache: {problem}")
  return check_arrays(name, arrays, where)


def write_new(path: Path, data: Contents, *, replace: bool = False) -> bool:
  """Writes ``path`` atomically; returns False if it exists and is kept.

  Args:
    path: the file to write; its folder is created if needed.
    data: the bytes, or a function writing them to a binary file.
    replace: replace an existing file (only a cache file we wrote).

  Returns:
    Whether the file was written.

  Raises:
    OSError: the file could not be written; no temporary file is left.
  """
  if path.exists() and not replace:  # never replace a file we did not create
    return False
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
  try:
    # os.open, not mkstemp, so the file gets the umask's usual permissions.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(tmp, flags, 0o666)
    with os.fdopen(fd, "wb") as f:
      if callable(data):
        data(f)
      else:
        f.write(data)
    os.replace(tmp, path)
  finally:
    with contextlib.suppress(OSError):  # gone already after os.replace
      tmp.unlink()
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
