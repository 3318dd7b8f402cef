"""Collecting the outputs of chosen layers of an NNX model, for DBort.

:func:`dbort_outputs` runs a model under ``nnx.capture`` with
``method_outputs``, which records what every submodule's ``__call__``
returns, and keeps the chosen layers' outputs: the DBort loss
(:func:`bort_jax.dbort.dbort_loss`) of models whose layers cannot be wrapped
in :class:`bort_jax.dbort.DBort`.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from flax import nnx
import jax
import jax.numpy as jnp

Array = jax.Array

LayerSpec = (
    Sequence[nnx.Module | str | tuple[Any, ...]]
    | Callable[[tuple[Any, ...], nnx.Module], bool]
    | None
)


def _path_string(path: tuple[Any, ...]) -> str:
  return "/".join(str(name) for name in path)


def _has_bort_kernel(module: nnx.Module) -> bool:
  kernel = getattr(module, "kernel", None)
  return isinstance(kernel, nnx.Param) and jnp.ndim(kernel[...]) >= 2


def _chosen_paths(model: nnx.Module, layers: LayerSpec) -> list[tuple]:
  """The module paths selected by ``layers``, in the model's order."""
  modules = list(nnx.iter_modules(model))
  if layers is None:
    return [path for path, m in modules if _has_bort_kernel(m)]
  if callable(layers) and not isinstance(layers, nnx.Module):
    return [path for path, m in modules if layers(path, m)]
  paths = [path for path, _ in modules]
  if isinstance(layers, (str, nnx.Module)) or (
      isinstance(layers, tuple) and layers in paths):
    layers = [layers]  # one layer, or one path tuple
  by_string = {_path_string(path): path for path, _ in modules}
  chosen = []
  for layer in layers:
    if isinstance(layer, nnx.Module):
      found = [path for path, m in modules if m is layer]
    elif isinstance(layer, str):
      found = [by_string[layer]] if layer in by_string else []
    elif isinstance(layer, (tuple, list)):
      found = [path for path in paths if path == tuple(layer)]
    else:
      raise TypeError(
          f"dbort_outputs: layers holds {layer!r}, which is neither a "
          "submodule, a path string nor a path tuple; a single path tuple "
          "goes in a list: layers=[('blocks', 0, 'mlp')].")
    if not found:
      raise ValueError(
          f"dbort_outputs: layer {layer!r} is not a submodule of the model "
          "(inside nnx.jit/nnx.grad, name layers by path or take them from "
          "the traced model). Submodule paths: "
          + ", ".join(repr(s) for s in by_string)
      )
    chosen.append(found[0])
  return chosen


def run_captured(forward: Callable[..., Any], model: Any, *args: Any,
                 **kwargs: Any) -> Any:
  """``forward(model, *args, **kwargs)``, an ``nnx.capture``d call, with its
  record taken off the model when the call raises.

  ``nnx.capture`` closes its context (and takes its record off the model's
  state) only when the call returns. A second, empty capture that does
  return closes it, through Flax's public API alone.
  """
  try:
    return forward(model, *args, **kwargs)
  except BaseException:
    nnx.capture(lambda m: None)(model)
    raise


def dbort_outputs(
    model: nnx.Module,
    *args: Any,
    layers: LayerSpec = None,
    method: str = "__call__",
    **kwargs: Any,
) -> tuple[Any, dict[str, tuple[Array, ...]]]:
  """Runs an NNX model and returns the outputs of the chosen layers.

  The forward pass ``getattr(model, method)(*args, **kwargs)`` runs under
  ``nnx.capture(..., nnx.Intermediate, method_outputs=nnx.Intermediate)``,
  which records what every submodule's ``__call__`` returns; the outputs of
  the chosen layers are kept. Nothing is stored on the model, so the function
  is pure in ``model`` and composes with ``nnx.jit``, ``nnx.grad``,
  ``nnx.value_and_grad`` and (through ``nnx.split``/``nnx.merge``) with
  ``jax.jit`` and ``jax.grad``. Hand the outputs to
  :func:`bort_jax.dbort.dbort_loss`.

  Args:
    model: an ``nnx.Module``.
    *args: positional arguments of the forward pass.
    layers: which layers: ``None`` for every submodule holding a ``kernel``
      parameter with two or more axes (the layers Bort constrains by default:
      ``nnx.Linear``, ``nnx.Conv``, ``nnx.LinearGeneral``, …, the model itself
      included); a sequence of submodules, path strings (``"blocks/0/mlp"``)
      or path tuples (``("blocks", 0, "mlp")``), or one of them alone
      (a tuple that is a path of the model is that path); or a predicate
      ``(path, module) -> bool``. Modules must be the ones the call sees: in a
      transformed function, name layers by path.
    method: the name of the model's method to run.
    **kwargs: keyword arguments of the forward pass.

  Returns:
    ``(result, outputs)``: the method's result, and a dict from each chosen
    layer's path (``"a/b"``; ``""`` for the model itself) to the tuple of its
    outputs, one per call during the forward pass. A layer named explicitly
    that was not called raises ``ValueError``; with ``layers=None`` or a
    predicate, layers that were not called are left out. Two cases where
    :func:`dbort_loss` of these outputs differs from the :class:`DBort`
    wrapper on the same layers: a stack of layers run by ``nnx.scan``
    returns one output with the stack's axis first, one term whose mean
    runs over the stack (the wrapper makes one term per layer: pass
    ``list(output)`` for that), and a layer whose output is a pytree gives
    one term per array (the wrapper, one for all of them).

  Examples:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from bort_jax.dbort import dbort_loss
    >>> class Autoencoder(nnx.Module):
    ...   def __init__(self, rngs):
    ...     self.encoder = nnx.Linear(4, 2, rngs=rngs)
    ...     self.decoder = nnx.Linear(2, 4, rngs=rngs)
    ...   def __call__(self, x):
    ...     return self.decoder(nnx.relu(self.encoder(x)))
    >>> model = Autoencoder(nnx.Rngs(0))
    >>> x = jnp.ones((8, 4))
    >>> reconstruction, outputs = dbort_outputs(model, x, layers=["encoder"])
    >>> {name: [y.shape for y in ys] for name, ys in outputs.items()}
    {'encoder': [(8, 2)]}
    >>> def loss_fn(model, x):
    ...   prediction, outputs = dbort_outputs(model, x)  # both Linear layers
    ...   return jnp.mean((prediction - x) ** 2) + dbort_loss(outputs)
    >>> grads = nnx.jit(nnx.grad(loss_fn))(model, x)
    >>> grads["encoder"]["kernel"].shape
    (4, 2)
  """
  chosen = _chosen_paths(model, layers)
  explicit = layers is not None and not (
      callable(layers) and not isinstance(layers, nnx.Module)
  )
  forward = nnx.capture(
      lambda m, *a, **kw: getattr(m, method)(*a, **kw),
      nnx.Intermediate,
      method_outputs=nnx.Intermediate,
  )
  result, intermediates = run_captured(forward, model, *args, **kwargs)
  outputs = {}
  for path in chosen:
    node = intermediates
    try:
      for name in path:
        node = node[name]
      values = node["__call__"]
    except KeyError:
      if explicit:
        raise ValueError(
            f"dbort_outputs: layer {_path_string(path)!r} was not called by "
            f"the model's {method}."
        ) from None
      continue
    value = values.get_value() if isinstance(values, nnx.Variable) else values
    outputs[_path_string(path)] = tuple(value)
  return result, outputs




