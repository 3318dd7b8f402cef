"""bort_jax.experiments.data.pickles: CIFAR-10 batches without running code."""

import builtins
import os
import pickle
import struct
import subprocess
import time

import numpy as np
import pytest

from bort_jax.experiments import data
from bort_jax.experiments.data import pickles
from bort_jax.experiments.errors import ExperimentError
from tests.experiments.data import fakes


class _Calls:
  """Pickles as a call of ``fn(*args)``: what a crafted file would do."""

  def __init__(self, fn, *args):
    self.fn, self.args = fn, args

  def __reduce__(self):
    return self.fn, self.args


def _py2_batch(rows, labels, shape=None):
  """A batch as Python 2's cPickle wrote CIFAR-10 (protocol 2, str = bytes).

  Hand-assembled opcodes, as NumPy 1.x wrote an ndarray under Python 2:
  ``numpy.core.multiarray._reconstruct``, ``numpy.dtype('u1')`` and the raw
  bytes as a BINSTRING.
  """
  def s(text):
    text = text.encode() if isinstance(text, str) else text
    return b"U" + bytes([len(text)]) + text  # SHORT_BINSTRING

  def ints(values):
    return b"".join(b"J" + struct.pack("<i", v) for v in values)  # BININT

  raw = rows.tobytes()
  out = b"\x80\x02}(" + s("batch_label") + s("training batch 1 of 5")
  out += s("labels") + b"](" + ints(labels) + b"e"  # EMPTY_LIST MARK … APPENDS
  out += s("data") + b"cnumpy.core.multiarray\n_reconstruct\n"
  out += b"cnumpy\nndarray\n" + ints([0]) + b"\x85" + s("b") + b"\x87R"
  out += b"(" + ints([1]) + ints(shape or rows.shape) + b"\x86"
  out += b"cnumpy\ndtype\n" + s("u1") + ints([0, 1]) + b"\x87R"
  out += b"(" + ints([3]) + s("|") + b"NNN" + ints([-1, -1, 0]) + b"tb"
  out += b"\x89T" + struct.pack("<I", len(raw)) + raw + b"tb"
  return out + b"u."


def test_python2_cifar_batch_is_read_like_numpy_reads_it():
  rows = np.random.default_rng(0).integers(0, 256, (3, 3072), dtype=np.uint8)
  blob = _py2_batch(rows, [5, 0, 9])
  trusted = pickle.loads(blob, encoding="bytes")  # we built it: safe here
  batch = pickles.load_cifar_pickle(blob, "data_batch_1")
  assert set(batch) == set(trusted) == {b"batch_label", b"labels", b"data"}
  np.testing.assert_array_equal(batch[b"data"], trusted[b"data"])
  assert batch[b"data"].dtype == np.uint8 and batch[b"labels"] == [5, 0, 9]
  assert batch[b"batch_label"] == b"training batch 1 of 5"


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
@pytest.mark.parametrize("dtype", ["u1", "<i4", ">f8", "?"])
def test_python3_pickles_of_plain_arrays_are_read(protocol, dtype):
  array = (np.arange(12) % 3).reshape(3, 4).astype(dtype)
  value = {b"data": array, b"fortran": np.asfortranarray(array),
           "labels": [1, 2], b"name": b"x", "n": 2.5, "t": (None, "s")}
  out = pickles.load_cifar_pickle(pickle.dumps(value, protocol=protocol), "f")
  for key in (b"data", b"fortran"):
    np.testing.assert_array_equal(out[key], array)
    assert out[key].dtype == array.dtype
  assert out["labels"] == [1, 2] and out[b"name"] == b"x"
  assert out["n"] == 2.5 and out["t"] == (None, "s")


@pytest.mark.parametrize(
    "payload, asks_for",
    [
        (_Calls(os.system, "touch {marker}"), "posix.system"),
        (_Calls(builtins.exec, "open({marker!r}, 'w')"), "builtins.exec"),
        (_Calls(subprocess.call, ["touch", "{marker}"]), "subprocess.call"),
        (_Calls(np.save, "{marker}", np.zeros(1)), "numpy.save"),
        (np.array([1, "x"], dtype=object), "dtype 'O8'"),
        (np.zeros(2, [("a", "u1"), ("b", "f4")]), "dtype 'V5'"),
    ],
    ids=["os.system", "exec", "subprocess", "numpy.save", "object", "record"],
)
def test_crafted_cifar_pickle_is_refused_and_runs_nothing(
    tmp_path, payload, asks_for
):
  marker = tmp_path / "pwned"
  if isinstance(payload, _Calls):
    payload.args = tuple(
        [a.format(marker=marker) for a in arg] if isinstance(arg, list)
        else arg.format(marker=marker) if isinstance(arg, str) else arg
        for arg in payload.args
    )
  evil = pickle.dumps({b"data": payload, b"labels": [0]})
  batches = fakes.cifar_batches(np.random.default_rng(0))
  folder = fakes.write_cifar_dir(tmp_path / "cifar10", batches,
                                 {"data_batch_3": evil})
  with pytest.raises(data.UnsafePickleError) as info:
    data.load_splits("cifar10", cache_dir=tmp_path)
  message = str(info.value)
  assert message.startswith(f"{folder / 'data_batch_3'}: refused to unpickle")
  assert asks_for in message and "\n" not in message
  assert isinstance(info.value, ExperimentError)
  assert not marker.exists() and not (tmp_path / "pwned.npy").exists()
  assert not (tmp_path / "cifar10" / "cifar10.npz").exists()


def test_shared_references_are_not_expanded():
  # 2**40 paths through 40 levels of [x, x]: visited once each, not re-expanded.
  value = [1]
  for _ in range(40):
    value = [value, value]
  start = time.perf_counter()
  out = pickles.load_cifar_pickle(pickle.dumps(value), "f")
  assert time.perf_counter() - start < 1.0
  assert out[0][1] is out[1][1]


@pytest.mark.parametrize(
    "blob, message",
    [
        (pickle.dumps({b"data": np.zeros((2, 3), np.uint8)})[:-9],
         "not a readable CIFAR-10 batch"),
        (b"", "not a readable CIFAR-10 batch (EOFError"),
        (_py2_batch(np.zeros((2, 3), np.uint8), [0, 1], shape=(2, 4)),
         "array data of 6 bytes for shape (2, 4)"),
    ],
    ids=["truncated", "empty", "short-array"],
)
def test_damaged_pickle_is_one_data_file_error(blob, message):
  with pytest.raises(data.DataFileError) as info:
    pickles.load_cifar_pickle(blob, "/x/data_batch_1")
  assert not isinstance(info.value, data.UnsafePickleError)
  assert str(info.value).startswith("/x/data_batch_1: ")
  assert message in str(info.value) and "\n" not in str(info.value)


def test_damaged_cifar_batch_in_cache_names_the_file(tmp_path):
  batches = fakes.cifar_batches(np.random.default_rng(0))
  good = batches["test_batch"][2]
  folder = fakes.write_cifar_dir(tmp_path / "cifar10", batches,
                                 {"test_batch": good[: len(good) // 2]})
  with pytest.raises(data.DataFileError, match=str(folder / "test_batch")):
    data.load_splits("cifar10", cache_dir=tmp_path)


def test_batch_of_the_wrong_layout_is_a_data_file_error(tmp_path):
  batches = fakes.cifar_batches(np.random.default_rng(0))
  wrong = pickle.dumps({b"data": np.zeros((2, 5), np.uint8), b"labels": [0, 1]})
  fakes.write_cifar_dir(tmp_path / "cifar10", batches, {"data_batch_1": wrong})
  with pytest.raises(data.DataFileError, match="data_batch_1: not a CIFAR-10"):
    data.load_splits("cifar10", cache_dir=tmp_path)
