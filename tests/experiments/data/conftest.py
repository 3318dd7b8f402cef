"""Every data test is hermetic: no tfds, pip, Debian files or user cache."""

import subprocess
import sys

import pytest

from bort_jax.experiments.data import sources


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
  monkeypatch.setenv("BORT_JAX_DATA", str(tmp_path / "default_cache"))
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tensorflow_datasets"))
  monkeypatch.setattr(sources, "DEBIAN_FASHION_DIR", tmp_path / "no_debian")

  def no_subprocess(*args, **kwargs):
    raise AssertionError(f"a test tried to run a subprocess: {args}")

  monkeypatch.setattr(subprocess, "run", no_subprocess)
