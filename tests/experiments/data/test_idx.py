"""bort_jax.experiments.data.idx: the IDX reader and the SHA-256 table."""

import gzip
import re

import numpy as np
import pytest

from bort_jax.experiments import data
from bort_jax.experiments.data import idx
from bort_jax.experiments.errors import ExperimentError
from tests.experiments.data.fakes import idx_bytes


@pytest.mark.parametrize("dtype", ["u1", "i1", ">i2", ">i4", ">f4", ">f8"])
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trip(tmp_path, dtype, gz):
  array = (np.arange(2 * 3 * 4) - 7).reshape(2, 3, 4).astype(dtype)
  blob = idx_bytes(array)
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
  np.testing.assert_array_equal(data.read_idx(idx_bytes(labels)), labels)


_GOOD = idx_bytes(np.arange(6, dtype=np.uint8).reshape(2, 3))


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
  # The same failure is the application's one-line error, not a raw one.
  with pytest.raises(data.DataFileError) as info:
    data.read_idx(blob)
  assert isinstance(info.value, ExperimentError)
  assert "\n" not in str(info.value)


def test_read_idx_names_the_file(tmp_path):
  path = tmp_path / "broken-idx3-ubyte"
  path.write_bytes(_GOOD[:-2])
  with pytest.raises(ValueError, match="broken-idx3-ubyte: payload"):
    data.read_idx(path)


def test_read_idx_unreadable_path_is_a_data_file_error(tmp_path):
  # Before: a raw IsADirectoryError / FileNotFoundError traceback.
  for path in (tmp_path, tmp_path / "missing-idx3-ubyte"):
    message = re.escape(f"{path}: cannot read")
    with pytest.raises(data.DataFileError, match=message):
      data.read_idx(path)


def test_hash_table_covers_every_idx_file():
  for name in ("mnist", "fashion_mnist"):
    assert set(idx.SHA256[name]) == set(idx.IDX_NAMES)
    assert all(len(h) == 64 for h in idx.SHA256[name].values())


def test_check_sha256_accepts_the_original_only(monkeypatch):
  import hashlib

  blob = b"some idx bytes"
  table = dict(idx.SHA256["mnist"])
  table["t10k-labels-idx1-ubyte"] = hashlib.sha256(blob).hexdigest()
  monkeypatch.setitem(idx.SHA256, "mnist", table)
  idx.check_sha256("mnist", "t10k-labels-idx1-ubyte", blob, "w")
  with pytest.raises(data.ChecksumError, match="^w: SHA-256 .* Do this.$"):
    idx.check_sha256("mnist", "t10k-labels-idx1-ubyte", blob + b"!", "w",
                     "Do this.")
