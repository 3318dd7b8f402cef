"""A restricted unpickler for the CIFAR-10 python batches.

A pickle is a program: unpickling looks up any importable name the file asks
for and calls it, so a crafted "data_batch_1" could run ``os.system``. The
official batches (Python 2 pickles of a dict) hold only dicts, lists,
bytes/str, ints and one uint8 NumPy array each. This unpickler admits exactly
that: every name a pickle asks for is refused with :class:`UnsafePickleError`
except three NumPy reconstructors (``_reconstruct``/``ndarray``, ``dtype``,
``_frombuffer``) and ``_codecs.encode`` with the latin-1 codec, which
Python 3 uses for bytes in protocol 2. Even those are not NumPy's own: they
are stand-ins that accept only plain numeric dtypes (never ``object``) and a
byte string of the exact size, and build the array with ``np.frombuffer``.
No NumPy code runs on the pickle's own state.
"""

from __future__ import annotations

import io
import pickle
import re
from typing import Any

import numpy as np

from bort_jax.experiments.data.errors import DataFileError
from bort_jax.experiments.data.errors import UnsafePickleError

# Plain numeric dtypes only: bool, signed/unsigned ints, floats.
_DTYPE = re.compile(r"[?b]1?|[iu][1248]|f[248]")


def _text(value: Any, what: str) -> str:
  """A pickled str (Python 3) or bytes (Python 2 under encoding='bytes')."""
  if isinstance(value, bytes):
    return value.decode("ascii", "replace")
  if isinstance(value, str):
    return value
  raise UnsafePickleError(f"{what} is {type(value).__name__}, not text")


class _Dtype:
  """Stand-in for ``numpy.dtype(spec, align, copy)`` plus its ``BUILD``."""

  def __init__(self, spec: Any, align: Any = False, copy: Any = False):
    del align, copy
    spec = _text(spec, "a dtype")
    if not _DTYPE.fullmatch(spec):
      raise UnsafePickleError(f"dtype {spec!r} is not a plain numeric dtype")
    self.spec, self.order = spec, "|"

  def __setstate__(self, state: Any) -> None:
    # (version, byte order, subarray, names, fields, elsize, alignment, flags)
    if not isinstance(state, tuple) or len(state) < 5 or any(
        s is not None for s in state[2:5]
    ):
      raise UnsafePickleError("a dtype with fields or a subarray")
    order = _text(state[1], "a byte order")
    if order not in ("<", ">", "|", "="):
      raise UnsafePickleError(f"byte order {order!r}")
    self.order = order

  def numpy(self) -> np.dtype:
    dtype = np.dtype(self.spec)
    return dtype.newbyteorder(self.order) if self.order in "<>" else dtype


def _array(data: Any, dtype: Any, shape: Any, fortran: bool) -> np.ndarray:
  if not isinstance(dtype, _Dtype):
    raise UnsafePickleError("an array without a plain dtype")
  if isinstance(data, str):  # Python 2 str under encoding='latin1'
    data = data.encode("latin1")
  if not isinstance(data, (bytes, bytearray)):
    raise UnsafePickleError(f"array data of type {type(data).__name__}")
  if not isinstance(shape, tuple) or not all(
      isinstance(d, int) and d >= 0 for d in shape
  ):
    raise UnsafePickleError(f"array shape {shape!r}")
  dt = dtype.numpy()
  if len(data) != int(np.prod(shape, dtype=np.int64)) * dt.itemsize:
    raise DataFileError(f"array data of {len(data)} bytes for shape {shape}")
  return np.frombuffer(data, dt).reshape(shape, order="F" if fortran else "C")


class _NdarrayClass:
  """Stand-in for ``numpy.ndarray``; only ``_reconstruct`` takes it."""

  __slots__ = ()  # no __dict__ that a pickle's BUILD could write into

  def __call__(self, *args, **kwargs):
    raise UnsafePickleError("a direct call of numpy.ndarray")


_NDARRAY = _NdarrayClass()


class _Array:
  """Stand-in for ``_reconstruct(ndarray, (0,), b)`` and its ``BUILD`` state."""

  def __init__(self, cls: Any, shape: Any = (0,), typecode: Any = b"b"):
    del shape, typecode
    if cls is not _NDARRAY:
      raise UnsafePickleError("_reconstruct of a class other than ndarray")
    self.value: np.ndarray | None = None

  def __setstate__(self, state: Any) -> None:
    if not isinstance(state, tuple) or len(state) not in (4, 5):
      raise UnsafePickleError("an array state that NumPy does not write")
    shape, dtype, fortran, data = state[-4:]
    self.value = _array(data, dtype, shape, bool(fortran))


def _frombuffer(data: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
  """Stand-in for ``numpy._core.numeric._frombuffer`` (protocol 5)."""
  if isinstance(data, pickle.PickleBuffer):
    data = bytes(data)
  return _array(data, dtype, shape, _text(order, "an order") == "F")


def _latin1(text: Any, encoding: Any = "utf-8") -> bytes:
  """Stand-in for ``_codecs.encode(str, 'latin1')`` (protocol-2 bytes)."""
  if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
    raise UnsafePickleError(f"_codecs.encode with {encoding!r}")
  return text.encode("latin1")


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _Array,
    ("numpy._core.multiarray", "_reconstruct"): _Array,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _Dtype,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("_codecs", "encode"): _latin1,
}


class _Unpickler(pickle.Unpickler):

  def find_class(self, module: str, name: str) -> Any:
    try:
      return _ALLOWED[module, name]
    except KeyError:
      raise UnsafePickleError(f"it asks for {module}.{name}") from None


def _resolve(obj: Any, done: dict[int, Any]) -> Any:
  """The unpickled object with every stand-in replaced by its array."""
  if id(obj) in done:  # shared references are visited once, not re-expanded
    return done[id(obj)]
  if isinstance(obj, _Array):
    if obj.value is None:
      raise UnsafePickleError("an array without data")
    out = obj.value
  elif isinstance(obj, dict):
    out = {_resolve(k, done): _resolve(v, done) for k, v in obj.items()}
  elif isinstance(obj, (list, tuple)):
    out = type(obj)(_resolve(v, done) for v in obj)
  elif obj is None or isinstance(obj, (bytes, str, int, float, np.ndarray)):
    out = obj
  else:
    raise UnsafePickleError(f"it holds a {type(obj).__name__}")
  done[id(obj)] = out
  return out


def load_cifar_pickle(blob: bytes, where: str) -> Any:
  """Unpickles one CIFAR-10 python batch, admitting only what those hold.

  Args:
    blob: the file's bytes.
    where: the file's path, for the messages.

  Returns:
    The batch: a dict (keys are bytes for Python 2 pickles) whose values are
    NumPy arrays, lists, bytes, str and ints.

  Raises:
    UnsafePickleError: the pickle asks for any other name (``os.system``,
      ``builtins.eval``, an object dtype, …); nothing it names is called.
    DataFileError: the pickle is corrupt or truncated.

  Examples:
    >>> import os, pickle
    >>> import numpy as np
    >>> blob = pickle.dumps({b"data": np.zeros((2, 3072), np.uint8),
    ...                      b"labels": [3, 1]})
    >>> batch = load_cifar_pickle(blob, "data_batch_1")
    >>> batch[b"data"].shape, batch[b"labels"]
    ((2, 3072), [3, 1])
    >>> class Evil:
    ...   def __reduce__(self):
    ...     return os.system, ("echo pwned",)
    >>> load_cifar_pickle(pickle.dumps(Evil()), "data_batch_1")
    Traceback (most recent call last):
    ...
    bort_jax.experiments.data.errors.UnsafePickleError: data_batch_1: refused to unpickle it: it asks for posix.system, and a CIFAR-10 batch holds only dicts, lists, bytes, ints and uint8 arrays; replace it with the original from https://www.cs.toronto.edu/~kriz/cifar.html
  """
  try:
    batch = _Unpickler(io.BytesIO(blob), encoding="bytes").load()
    return _resolve(batch, {})
  except UnsafePickleError as e:
    raise UnsafePickleError(
        f"{where}: refused to unpickle it: {e}, and a CIFAR-10 batch holds only"
        " dicts, lists, bytes, ints and uint8 arrays; replace it with the"
        " original from https://www.cs.toronto.edu/~kriz/cifar.html"
    ) from None
  except Exception as e:  # any failure to parse is a damaged file
    raise DataFileError(
        f"{where}: not a readable CIFAR-10 batch ({type(e).__name__}: {e});"
        " replace it with the original from"
        " https://www.cs.toronto.edu/~kriz/cifar.html"
    ) from None
