"""Names a module exports but loads on first access (PEP 562).

``import bort_jax`` then costs no JAX import until a name is used, and the
application's parser, built from the defaults, answers ``--help`` at once.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping


def lazy_exports(namespace: dict[str, Any], exports: Mapping[str, str]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
  """A module's ``__getattr__`` and ``__dir__`` for names defined elsewhere.

  Args:
    namespace: the module's ``globals()``; a name, once loaded, is stored
      there, so later lookups do not come back.
    exports: each name and the module that defines it.

  Returns:
    ``(__getattr__, __dir__)``; ``__getattr__`` raises ``AttributeError``
    for any other name.

  Examples:
    >>> namespace = {"__name__": "demo"}
    >>> getattr_, dir_ = lazy_exports(namespace, {"sqrt": "math"})
    >>> getattr_("sqrt")(4.0), "sqrt" in namespace
    (2.0, True)
  """
  def __getattr__(name: str) -> Any:
    if name not in exports:
      raise AttributeError(
          f"module {namespace['__name__']!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(exports[name]), name)
    namespace[name] = value
    return value

  def __dir__() -> list[str]:
    return sorted({*namespace, *exports})

  return __getattr__, __dir__
