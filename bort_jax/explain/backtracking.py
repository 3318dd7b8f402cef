"""Network backtracking: from a hidden layer back to the input, layer by layer.

A sequential model ``a_{i+1} = layer_i(a_i)`` is backtracked from the output
of ``layers[k]`` by inverting ``layers[k], …, layers[0]`` in turn
(:func:`bort_jax.explain.invert_layer`). On a Bort-trained network each step
is close to an orthogonal projection, so the result is a faithful picture, in
input space, of what the hidden representation encodes.
"""

from __future__ import annotations

import operator
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from bort_jax.explain import inverses
from bort_jax.explain import metrics
from bort_jax.explain.eval_mode import check_eval_mode
from bort_jax.models.invertible import InvertibleSequential

ForwardCache = Sequence[jax.Array]


def model_layers(model: Any) -> Sequence[Any]:
  """The layer list of a sequential model (``.layers``) or a list of layers.

  Examples:
    >>> from bort_jax.models.invertible import ReLU
    >>> len(model_layers([ReLU(), ReLU()]))
    2
  """
  check_eval_mode(model)
  layers = getattr(model, "layers", model)
  if not isinstance(layers, Sequence):
    try:
      layers = list(layers)
    except TypeError:
      raise ValueError(
          "backtracking needs a sequential model: an object with a `layers` "
          f"list (e.g. InvertibleCNN, nnx.Sequential) or a list of layers; "
          f"got {type(model).__name__}."
      ) from None
  return layers


def forward_cache(model: Any, x: jax.Array) -> tuple[jax.Array, ...]:
  """``(x, a_0, …, a_{L-1})``: every layer's input, then the model's output.

  Uses ``model.forward`` when the model has one (:class:`InvertibleSequential`),
  otherwise runs ``model.layers`` in order.

  Args:
    model: a sequential model or a list of layers.
    x: a batch of inputs.

  Returns:
    A tuple of ``len(layers) + 1`` arrays.

  Examples:
    >>> import jax.numpy as jnp
    >>> from bort_jax.models.invertible import Flatten, ReLU
    >>> [a.shape for a in forward_cache([Flatten(), ReLU()], jnp.ones((2, 3, 3)))]
    [(2, 3, 3), (2, 9), (2, 9)]
  """
  if hasattr(model, "forward"):
    check_eval_mode(model)  # model_layers checks the other models
    return tuple(model.forward(x))
  activations = [x]
  for layer in model_layers(model):
    activations.append(layer(activations[-1]))
  return tuple(activations)


def layer_index(index: int, num_layers: int) -> int:
  """Checks a layer index (negative counts from the end) and makes it >= 0.

  NumPy and concrete JAX integers are integers; a bool is not."""
  try:
    if isinstance(index, bool):
      raise TypeError
    index = operator.index(index)
  except TypeError:
    raise ValueError(
        f"layer index must be an integer known when called, got {index!r}."
    ) from None
  if not -num_layers <= index < num_layers:
    raise ValueError(
        f"layer index {index!r} is out of range for a model of {num_layers} "
        "layers."
    )
  return index % num_layers


def _layer_name(layers: Sequence[Any], i: int) -> str:
  return f"layers[{i}] ({type(layers[i]).__name__})"


def _layer_inputs(
    model: Any, features: jax.Array, stop: int, cache: ForwardCache | None
) -> Sequence[Any]:
  """Each layer's forward input up to ``stop`` (arrays or shapes)."""
  if cache is not None:
    if len(cache) < stop + 2:
      raise ValueError(
          f"forward_cache has {len(cache)} entries; backtracking from layer "
          f"{stop} needs at least {stop + 2} (the output of model.forward)."
      )
    return cache
  input_shape = getattr(model, "input_shape", None)
  if input_shape is None:
    raise ValueError(
        "backtrack needs the input shape: pass forward_cache=forward_cache("
        "model, x) or give the model an `input_shape` attribute."
    )
  x = jax.ShapeDtypeStruct((features.shape[0],) + tuple(input_shape),
                           features.dtype)
  layers = model_layers(model)

  def run(x):
    activations = [x]
    for layer in layers[:stop + 1]:
      activations.append(layer(activations[-1]))
    return tuple(activations)

  try:
    return jax.eval_shape(run, x)
  except (TypeError, ValueError) as e:
    raise ValueError(
        f"backtrack could not run the model on inputs of shape {x.shape} "
        f"(the model's input_shape): {e}"
    ) from e


def backtrack(
    model: Any,
    features: jax.Array,
    from_layer: int,
    forward_cache: ForwardCache | None = None,
    relu: str = "pass",
) -> jax.Array:
  """Maps the output of ``layers[from_layer]`` back to the input space.

  Inverts ``layers[from_layer], …, layers[0]`` in reverse order with their
  registered inverses (:func:`bort_jax.explain.invert_layer`): dense and
  convolutional layers by their scaled transposes, LeakyReLU exactly, ReLU
  passed through or guided, reshapes by reshaping.

  Args:
    model: a sequential model (``.layers``, e.g.
      :class:`bort_jax.models.invertible.InvertibleCNN`) or a list of layers.
    features: a batch ``(N, …)`` shaped like the output of
      ``layers[from_layer]``; it may be edited (it need not come from an
      input).
    from_layer: the index of the layer whose output ``features`` is
      (negative counts from the end).
    forward_cache: the forward cache of the input the features came from
      (:func:`forward_cache` / ``model.forward(x)``). Needed for
      ``relu="guided"`` and when the model has no ``input_shape``.
    relu: ``"pass"`` (ReLU passes the signal through) or ``"guided"`` (keeps
      it where the forward pre-activation was positive).

  Returns:
    ``x̂``, a batch ``(N, *input_shape)``.

  Raises:
    ValueError: naming the layer that cannot be inverted (dropout, batch
      norm, max pooling, unknown modules), or when ``features`` or the cache
      do not fit the model.

  Examples:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from bort_jax.models.invertible import InvertibleMLP
    >>> mlp = InvertibleMLP((2,), (2,), 2, rngs=nnx.Rngs(0))
    >>> mlp.layers[0].kernel[...] = jnp.array([[0.0, 1.0], [1.0, 0.0]])
    >>> x = jnp.array([[0.5, -2.0]])
    >>> cache = mlp.forward(x)
    >>> backtrack(mlp, cache[2], 1)  # undo the LeakyReLU, then the Linear
    Array([[ 0.5, -2. ]], dtype=float32)
  """
  inverses.check_relu_mode(relu)
  layers = model_layers(model)
  stop = layer_index(from_layer, len(layers))
  features = jnp.asarray(features)
  inputs = _layer_inputs(model, features, stop, forward_cache)
  expected = tuple(inputs[stop + 1].shape)
  batch_ok = forward_cache is None or features.shape[:1] == expected[:1]
  if features.shape[1:] != expected[1:] or not batch_ok:
    raise ValueError(
        f"features of shape {features.shape} do not match the output of "
        f"{_layer_name(layers, stop)}, {expected} (batch size may differ only "
        "without a forward_cache)."
    )
  x = features
  for i in range(stop, -1, -1):
    x = inverses.invert_layer(
        layers[i], x, inputs[i], relu=relu, name=_layer_name(layers, i))
  return x


def reconstruct(
    model: Any, x: jax.Array, layer: int, relu: str = "pass"
) -> jax.Array:
  """Runs ``x`` up to ``layers[layer]`` and backtracks it to the input.

  Args:
    model: a sequential model.
    x: a batch of inputs.
    layer: the layer to backtrack from.
    relu: ``"pass"`` or ``"guided"``.

  Returns:
    ``x̂`` of ``x``'s shape; compare with :func:`reconstruction_mse` /
    :func:`psnr`.

  Examples:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from bort_jax.models.invertible import InvertibleCNN
    >>> cnn = nnx.eval_shape(lambda: InvertibleCNN(  # abstract: shapes only
    ...     (8, 8, 1), (4,), (), 10, rngs=nnx.Rngs(0)))
    >>> nnx.eval_shape(lambda m, x: reconstruct(m, x, m.stage_ends[0]),
    ...                cnn, jnp.ones((3, 8, 8, 1))).shape
    (3, 8, 8, 1)
  """
  stop = layer_index(layer, len(model_layers(model)))
  x = check_inputs(model, x, "x")
  cache = forward_cache(model, x)
  return backtrack(model, cache[stop + 1], stop, cache, relu)


def check_inputs(model: Any, x: Any, name: str) -> jax.Array:
  """``x`` as a floating array of the model's ``input_shape`` per example
  (where the model has one), or a one-line error naming ``name``: integer
  pixels (0…255) would be backtracked as they are, and another shape fails
  deep inside a layer."""
  x = metrics.floating_images(x, name)
  input_shape = getattr(model, "input_shape", None)
  if input_shape is not None and tuple(x.shape[1:]) != tuple(input_shape):
    raise ValueError(
        f"{name} must be a batch (N, *{tuple(input_shape)}) of the model's "
        f"inputs, got shape {x.shape}.")
  return x


def _sequential_inverse(layer: Any, y: jax.Array, x: Any, relu: str
                        ) -> jax.Array:
  """A sequential model nested as a layer: backtracked through its layers,
  with its own forward cache of ``x`` (its shapes when only those are
  known)."""
  if isinstance(x, jax.ShapeDtypeStruct):
    cache = jax.eval_shape(lambda x: forward_cache(layer, x), x)
  else:
    cache = forward_cache(layer, x)
  return backtrack(layer, y, len(model_layers(layer)) - 1, cache, relu)


inverses.register_inverse(InvertibleSequential, _sequential_inverse)
inverses.register_inverse(nnx.Sequential, _sequential_inverse)
