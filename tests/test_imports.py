"""How the library is put together: an optax-only core, no cycles, no reach-in.

``import bort_jax`` and every optimizer in it work without Flax; the library's
modules import each other without a cycle; and nothing outside the core
(``bort_jax/_src``) imports the core's private modules, except the public
faces that re-export it.
"""

from __future__ import annotations

import ast
import os
import pathlib
import subprocess
import sys
import textwrap

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "bort_jax"

#: Modules that re-export the core: the public faces.
PUBLIC_FACES = ("bort_jax/__init__.py", "bort_jax/dbort.py",
                "bort_jax/validation.py")

#: Application files that still reach into the core while another change
#: moves them to public names; empty now, and nothing outside
#: bort_jax/experiments may be added here.
APPLICATION_TO_FIX_NEXT = ()

#: A benchmark outside this change's files, to be fixed next the same way as
#: benchmarks/param_sets.py (bort_jax.flax_dimension_numbers and
#: param_sets.matrix_shape instead of _src.dimension_numbers.resolve_views).
BENCHMARK_TO_FIX_NEXT = ()

def _run(code: str) -> subprocess.CompletedProcess:
  return subprocess.run(
      [sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT,
      capture_output=True, text=True, timeout=120, check=False,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))


def test_import_bort_jax_and_an_optimizer_import_no_flax():
  # The evidence issue 18 asks for, as a user would run it.
  result = _run("""
      import sys, bort_jax
      tx = bort_jax.bort_adamw(1e-3)
      print(any(m.startswith('flax') for m in sys.modules))
  """)
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == "False"


def test_the_top_level_loads_every_public_name_from_its_home():
  """``bort_jax`` loads its names on first use (so ``import bort_jax``
  imports no JAX): every name of ``__all__`` has a home in ``_EXPORTS``, the
  type checkers' imports list the same homes, and each name is the object
  defined there."""
  import importlib

  import bort_jax
  assert set(bort_jax.__all__) == set(bort_jax._EXPORTS)
  tree = ast.parse((PACKAGE / "__init__.py").read_text())
  checked = {alias.name: node.module for node in ast.walk(tree)
             if isinstance(node, ast.ImportFrom)
             and node.module.startswith("bort_jax._src.")
             and node.module != "bort_jax._src.lazy"
             for alias in node.names}
  assert checked == bort_jax._EXPORTS
  for name, home in bort_jax._EXPORTS.items():
    assert getattr(bort_jax, name) is getattr(importlib.import_module(home),
                                              name), name
  result = _run("import sys, bort_jax; print('jax' in sys.modules)")
  assert result.stdout.strip() == "False", result.stderr


def test_the_optimizers_work_where_flax_cannot_be_imported():
  # sys.modules['flax'] = None makes `import flax` raise ImportError, as in a
  # virtual environment without Flax.
  result = _run("""
      import sys
      sys.modules['flax'] = None
      import warnings
      import jax, jax.numpy as jnp, optax
      import bort_jax
      dims = bort_jax.BortDimensionNumbers.out_in()  # Equinox's (out, in)
      params = {'linear': {'weight': jax.random.normal(jax.random.key(0),
                                                       (3, 5)),
                           'bias': jnp.zeros(3)}}
      grads = jax.tree.map(jnp.ones_like, params)
      for tx in (bort_jax.bort_adamw(1e-3, dimension_numbers=dims),
                 bort_jax.bort_sgd(1e-2, dimension_numbers=dims),
                 bort_jax.with_bort(optax.adam(1e-3), dimension_numbers=dims)):
        state = tx.init(params)
        updates, state = jax.jit(tx.update)(grads, state, params)
        new = optax.apply_updates(params, updates)
        assert bool(jnp.all(jnp.isfinite(new['linear']['weight'])))
      error = bort_jax.orthogonality_error(params, dimension_numbers=dims)
      projected = bort_jax.project_to_constraint(params,
                                                 dimension_numbers=dims)
      after = bort_jax.orthogonality_error(projected, dimension_numbers=dims)
      assert float(after['linear/weight'].constraint_error) < 1e-5, after
      assert float(error['linear/weight'].constraint_error) > 1e-3, error
      started = bort_jax.orthogonality_error(new, dimension_numbers=dims)
      assert float(started['linear/weight'].constraint_error) < 1e-5
      try:
        import flax
      except ImportError:
        print('flax is not importable')
      print(sorted(m for m, module in sys.modules.items()
                   if m.startswith('flax') and module is not None))
  """)
  assert result.returncode == 0, result.stderr
  assert result.stdout.split("\n")[:2] == ["flax is not importable", "[]"]


def _python_files(*folders: str):
  for folder in folders:
    yield from sorted((ROOT / folder).rglob("*.py"))


def _private_imports(tree: ast.AST) -> list[tuple[int, str]]:
  """``bort_jax._src``, ``from .._src`` and ``from bort_jax import _src``."""
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found += [(node.lineno, a.name) for a in node.names
                if a.name == "bort_jax._src"
                or a.name.startswith("bort_jax._src.")]
    elif isinstance(node, ast.ImportFrom):
      module = node.module or ""
      names = [a.name for a in node.names]
      if (module == "bort_jax._src" or module.startswith("bort_jax._src.")
          or (node.level and (module == "_src" or module.startswith("_src.")))
          or (module in ("bort_jax", "") and "_src" in names)):
        found.append((node.lineno, "." * node.level + module))
  return found


def _string_imports(text: str) -> bool:
  """Doctests import too: ``>>> from bort_jax._src ...`` in a docstring."""
  return "bort_jax._src" in text


def test_no_private_imports_outside_the_core():
  offenders = []
  for path in _python_files("bort_jax", "examples", "benchmarks"):
    rel = path.relative_to(ROOT).as_posix()
    if rel.startswith("bort_jax/_src/") or rel in PUBLIC_FACES:
      continue
    if rel in APPLICATION_TO_FIX_NEXT + BENCHMARK_TO_FIX_NEXT:
      continue
    text = path.read_text()
    found = _private_imports(ast.parse(text))
    if not found and _string_imports(text):
      found = [(0, "bort_jax._src (in a docstring or string)")]
    offenders += [f"{rel}:{line}: {name}" for line, name in found]
  assert not offenders, "\n".join(offenders)


def test_the_allow_list_names_only_application_files_that_still_need_it():
  for rel in APPLICATION_TO_FIX_NEXT + BENCHMARK_TO_FIX_NEXT:
    assert rel.startswith(("bort_jax/experiments/", "benchmarks/")), rel
    assert _private_imports(ast.parse((ROOT / rel).read_text())) or (
        _string_imports((ROOT / rel).read_text())), (
            f"{rel} no longer imports the core's private modules: take it "
            "off APPLICATION_TO_FIX_NEXT")


def _module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(ROOT).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts.pop()
  return ".".join(parts)


def _module_level_imports(path: pathlib.Path, name: str,
                          known: set[str]) -> set[str]:
  """The bort_jax modules ``name`` imports when it is imported.

  Statements at module level count, including those under ``if``/``try``;
  imports inside functions and classes run later and do not. ``from a import
  b`` counts ``a.b`` when that is a module, else ``a``; ``bort_jax/__init__``
  is not counted as a dependency of its submodules (every import of a
  submodule runs it first, whatever the submodule imports).
  """
  is_package = path.name == "__init__.py"
  package = name if is_package else name.rpartition(".")[0]
  edges = set()

  def visit(statements):
    for node in statements:
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef,
                           ast.ClassDef)):
        continue
      if isinstance(node, ast.Import):
        edges.update(a.name for a in node.names)
      elif isinstance(node, ast.ImportFrom):
        if node.level:
          base = package.split(".")
          base = base[:len(base) - node.level + 1]
          module = ".".join(base + ([node.module] if node.module else []))
        else:
          module = node.module or ""
        for alias in node.names:
          full = f"{module}.{alias.name}"
          edges.add(full if full in known else module)
      for field in ("body", "orelse", "finalbody", "handlers"):
        inner = getattr(node, field, None)
        if isinstance(inner, list):
          visit(inner)

  visit(ast.parse(path.read_text()).body)
  return {e for e in edges if e in known and e != name and e != "bort_jax"}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """One cycle per strongly connected component with more than one module."""
  index, low, stack, on_stack, out = {}, {}, [], set(), []

  def connect(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph[v]):
      if w not in index:
        connect(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      connect(v)
  return out


def _import_graph() -> dict[str, set[str]]:
  paths = {_module_name(p): p for p in _python_files("bort_jax")}
  known = set(paths)
  return {name: _module_level_imports(path, name, known)
          for name, path in paths.items()}


def test_no_import_cycle_among_bort_jax_modules():
  graph = _import_graph()
  assert "bort_jax._src.dimension_numbers" in graph  # the walk found the core
  assert not _cycles(graph), _cycles(graph)


def test_no_cycle_hidden_by_a_function_level_import():
  # A cycle hidden by an import inside a function is a cycle too, in the
  # library and in the application alike.
  paths = {_module_name(p): p for p in _python_files("bort_jax")}
  known = set(paths)
  graph = _import_graph()
  for name, path in paths.items():
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.ImportFrom) and node.module and not node.level:
        for alias in node.names:
          full = f"{node.module}.{alias.name}"
          graph[name].add(full if full in known else node.module)
      elif isinstance(node, ast.Import):
        graph[name].update(a.name for a in node.names if a.name in known)
    graph[name] = {m for m in graph[name] if m in known} - {name, "bort_jax"}
  assert ("bort_jax.experiments.frontier_report"  # the graph sees the app
          in graph["bort_jax.experiments.frontier"])
  assert not _cycles(graph), _cycles(graph)


def test_the_cycle_finder_finds_a_cycle():
  assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
  assert not _cycles({"a": {"b"}, "b": set()})
