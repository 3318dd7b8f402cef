"""The distribution is what the ecosystem expects: typed, described, installable.

These tests read pyproject.toml and MANIFEST.in; they build nothing (a build
would need setuptools>=77 and `build` from the network). The tarballs were
checked by hand with `python -m build` (see the CHANGELOG's Packaging entry).
"""

import fnmatch
from pathlib import Path
import re
import tomllib

import pytest
import setuptools

ROOT = Path(__file__).resolve().parents[1]

# The lowest set that installs together and passes `pytest -m "not slow"
# tests/core` in a fresh venv: the command and its result are in CHANGELOG.md
# under "Unreleased", "Packaging". Raise a floor here only after rerunning it.
VERIFIED_FLOORS = {
  "jax": "0.8.1",
  "optax": "0.2.4",
  "flax": "0.12.6",
  "numpy": "2.0",
}
# jax 0.8.1 and flax 0.12.6 declare Requires-Python >=3.11.
VERIFIED_PYTHON = "3.11"


@pytest.fixture(scope="module")
def project():
  with open(ROOT / "pyproject.toml", "rb") as f:
    return tomllib.load(f)


def _manifest_rules():
  """MANIFEST.in as (directive, arguments) pairs, comments dropped."""
  rules = []
  for line in (ROOT / "MANIFEST.in").read_text().splitlines():
    line = line.split("#", 1)[0].strip()
    if line:
      directive, *args = line.split()
      rules.append((directive, args))
  return rules


def _in_sdist(path, rules):
  """Whether setuptools' sdist takes `path` (relative, posix) under `rules`.

  Only the directives MANIFEST.in uses are understood; any other one fails
  the test rather than being guessed at. Later rules win, as in setuptools.
  """
  shipped = False
  for directive, args in rules:
    if directive == "include":
      if any(fnmatch.fnmatchcase(path, a) for a in args):
        shipped = True
    elif directive == "graft":
      if any(path == a or path.startswith(a.rstrip("/") + "/") for a in args):
        shipped = True
    elif directive == "prune":
      if any(path == a or path.startswith(a.rstrip("/") + "/") for a in args):
        shipped = False
    elif directive == "global-exclude":
      parts = path.split("/")
      if any(fnmatch.fnmatchcase(p, a) for p in parts for a in args):
        shipped = False
    else:
      raise AssertionError(f"MANIFEST.in directive {directive!r} not modelled")
  return shipped


def _readme_paths():
  """The repository paths the README names (docs/..., examples/..., ...)."""
  text = (ROOT / "README.md").read_text()
  found = re.findall(r"\b(?:docs|examples|benchmarks|tests)/[\w./-]*", text)
  return sorted({p.rstrip(".") for p in found})


def test_py_typed_ships_in_the_wheel_so_mypy_reads_the_package(project):
  # Without the PEP 561 marker mypy reports "missing library stubs or
  # py.typed marker" and types every bort_jax name as Any.
  assert (ROOT / "bort_jax" / "py.typed").is_file()
  package_data = project["tool"]["setuptools"]["package-data"]
  assert "py.typed" in package_data["bort_jax"]
  assert "Typing :: Typed" in project["project"]["classifiers"]
  # The wheel is the library alone: no tests/, benchmarks/ or examples/.
  find = project["tool"]["setuptools"]["packages"]["find"]
  packages = setuptools.find_packages(where=str(ROOT), **find)
  assert "bort_jax" in packages and "bort_jax.experiments" in packages
  assert all(p == "bort_jax" or p.startswith("bort_jax.") for p in packages)


def test_classifiers_and_keywords_are_declared(project):
  meta = project["project"]
  classifiers = meta["classifiers"]
  for expected in [
    "Development Status :: 4 - Beta",
    "Intended Audience :: Science/Research",
    "Programming Language :: Python :: 3.11",
    "Programming Language :: Python :: 3.12",
    "Topic :: Scientific/Engineering :: Artificial Intelligence",
    "Typing :: Typed",
  ]:
    assert expected in classifiers
  # setuptools>=77 refuses a License classifier beside the SPDX expression.
  assert meta["license"] == "Apache-2.0"
  assert not [c for c in classifiers if c.startswith("License ::")]
  assert set(meta["keywords"]) >= {
    "jax", "optax", "flax", "orthogonality", "explainability", "optimizer"}
  assert meta["authors"]


def test_classified_pythons_are_ones_the_floors_install_on(project):
  meta = project["project"]
  assert meta["requires-python"] == f">={VERIFIED_PYTHON}"
  floor = tuple(int(x) for x in VERIFIED_PYTHON.split("."))
  versions = [
    tuple(int(x) for x in c.rsplit(" :: ", 1)[1].split("."))
    for c in meta["classifiers"]
    if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
  ]
  assert versions and min(versions) == floor


def test_jax_floor_installs_with_the_flax_floor(project):
  # jax>=0.6 could not be installed beside flax 0.12.6, which needs
  # jax>=0.8.1; jax 0.8.1 in turn needs numpy>=2.0.
  floors = {}
  for requirement in project["project"]["dependencies"]:
    name, _, version = requirement.partition(">=")
    floors[name.strip()] = version.strip()
  assert floors == VERIFIED_FLOORS


def test_sdist_carries_the_docs_and_examples_the_readme_links():
  rules = _manifest_rules()
  paths = _readme_paths()
  assert "docs/RESULTS.md" in paths and "examples/explain_mnist.py" in paths
  for path in paths:
    assert (ROOT / path).exists(), f"README names {path}, which does not exist"
    assert _in_sdist(path, rules), f"README names {path}, not in the sdist"
  for path in ["LICENSE", "CHANGELOG.md", "README.md"]:
    assert _in_sdist(path, rules)
  figures = sorted((ROOT / "docs" / "figures").glob("*.png"))
  assert figures
  for figure in figures:
    assert _in_sdist(figure.relative_to(ROOT).as_posix(), rules)


def test_sdist_ships_the_tests_whole_and_no_build_outputs():
  # setuptools' default took two of the top-level tests/test*.py and none of
  # the rest: a stray, partial suite. The sdist carries the whole suite (and
  # benchmarks/, which tests/test_benchmarks.py runs) or it would not run.
  rules = _manifest_rules()
  for test_file in sorted((ROOT / "tests").rglob("*.py")):
    assert _in_sdist(test_file.relative_to(ROOT).as_posix(), rules)
  assert _in_sdist("benchmarks/timing.py", rules)
  for path in [
    ".ci/run",
    ".gitignore",
    "docs/_build/html/index.html",
    "docs/api/bort_jax.rst",
    "tests/__pycache__/conftest.cpython-311.pyc",
  ]:
    assert not _in_sdist(path, rules), path
