"""DBort: the data-aware output-energy loss, its typed intermediate, its module.

DBort (Zhang et al., ICLR 2023) adds to the task loss a term that
rewards the energy of a Bort-constrained layer's outputs,

.. math::
  L_{aux} = −λ \\sum_{l} \\big(\\operatorname{mean}(y_l^2)\\big)^p ,

where the mean runs over every element of layer ``l``'s output (batch and
features alike). With ``p`` tiny the term is nearly scale-free: since
``E^p = e^{p \\log E}``, its gradient is ``λ p E^p ∇\\log E ≈ λ p ∇ \\log E``;
it chooses directions while Bort (:func:`bort_jax.add_bort_correction`) holds
``W Wᵀ = cI``. The authors' MNIST/CIFAR script applies it to the logits,
``CE − λ (mean logits²)^p`` with ``λ = 10⁻³``, ``p = 0.1``. For one linear
layer the maximiser is PCA (:mod:`bort_jax._src.dbort_pca`).

Pieces:

- :func:`dbort_loss`: the loss of an array or pytree of layer outputs, or of
  the :class:`DBortEnergy` intermediates captured from a model.
- :class:`DBort`: a wrapper module, in the spirit of ``nnx.SpectralNorm``,
  that records the energy of its layer's output as a :class:`DBortEnergy`
  (a subclass of ``nnx.Intermediate``) whenever :func:`dbort_energies` runs
  it (under ``nnx.capture``); anywhere else it is the layer itself.
- :func:`dbort_term`: runs a model under ``nnx.capture`` and returns its
  output, the DBort loss of its :class:`DBort` layers and their energies:
  the one pure function a training step calls.
- :func:`dbort_outputs` (from :mod:`bort_jax._src.layer_outputs`): runs an
  NNX model and collects the outputs of the chosen layers with
  ``nnx.capture``, for models that cannot be wrapped.

Every piece is pure in the model: it works under ``nnx.jit``, ``nnx.grad``
and, through ``nnx.split``/``nnx.merge``, ``jax.jit`` and ``jax.grad``.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Callable, Iterator, NamedTuple

from flax import nnx
import jax
import jax.numpy as jnp

from bort_jax._src import layer_outputs
from bort_jax._src import penalty
from bort_jax._src import validation
from bort_jax._src.layer_outputs import _path_string
from bort_jax._src.layer_outputs import dbort_outputs

Array = jax.Array

DBORT_WEIGHT = 1e-4  # λ of the published experiments (they also use 1e-5)
DBORT_POWER = 1e-4  # p of the published experiments

# ----------------------------------------------------------------------------
# The loss.


def _mean_square(y: Any) -> Array:
  """``mean(y²)`` over all elements, in at least float32, floored at tiny.

  ``y`` is an array or a pytree of arrays (the mean then runs over all their
  elements together). The floor keeps ``E^p`` and its gradient finite for an
  all-zero output (the gradient there is zero instead of ``0 · ∞``).
  """
  leaves = [jnp.asarray(leaf) for leaf in jax.tree.leaves(y)]
  complex_leaf = next((leaf for leaf in leaves
                       if jnp.issubdtype(leaf.dtype, jnp.complexfloating)),
                      None)
  if complex_leaf is not None:  # mean(y²) of them is no energy
    raise validation.ArgumentTypeError(
        f"DBort needs real layer outputs, got one of dtype "
        f"{complex_leaf.dtype}; pass jnp.abs(y) or its real and imaginary "
        "parts.")
  if len(leaves) == 1:
    y = leaves[0]
    energy = jnp.mean(jnp.square(y.astype(penalty.compute_dtype(y.dtype))))
  else:
    total = sum(
        jnp.sum(jnp.square(leaf.astype(penalty.compute_dtype(leaf.dtype))))
        for leaf in leaves
    )
    energy = total / sum(leaf.size for leaf in leaves)
  tiny = jnp.finfo(energy.dtype).tiny
  # A NaN (a NaN output, an empty batch) stays NaN, never a number.
  return jnp.where(energy < tiny, tiny, energy)


def _check_scalar(name: str, value: Any, *, positive: bool) -> None:
  """``weight >= 0`` or ``power > 0``: a real scalar, finite in float32.

  A traced value (under ``jit``, or a schedule's) is checked by shape and
  dtype only, so that changing it does not recompile; a Python or NumPy
  value is checked fully.
  """
  kind = "a number > 0" if positive else "a number >= 0"
  if isinstance(value, (jax.Array, jax.core.Tracer)):
    if value.ndim != 0:
      raise ValueError(
          f"{name} must be a scalar, got an array of shape {value.shape}; "
          "pass one number for all layers.")
    if not (jnp.issubdtype(value.dtype, jnp.floating)
            or jnp.issubdtype(value.dtype, jnp.integer)):
      raise validation.ArgumentTypeError(
          f"{name} must be a real number, got an array of dtype "
          f"{value.dtype}.")
    return
  if isinstance(value, (str, bytes)):
    raise validation.ArgumentTypeError(
        f"{name} must be {kind}, got the string {value!r}; pass "
        f"{name}=float(...).")
  validation.check_real(name, value, low=0, low_inclusive=not positive,
                        dtype=validation.COMPUTE_DTYPE)


class DBortEnergy(nnx.Intermediate):
  """The output energy ``mean(y²)`` a :class:`DBort` layer records.

  A typed intermediate: ``nnx.capture(fn, DBortEnergy)`` collects exactly
  these (one tuple entry per call of the layer), and nothing else a model
  sows. :func:`dbort_loss` reads them as energies, not as outputs.
  """


def dbort_loss(
    outputs: Any,
    *,
    weight: float | Array = DBORT_WEIGHT,
    power: float | Array = DBORT_POWER,
) -> Array:
  """The DBort loss ``−λ Σ_l (mean y_l²)^p`` of layer outputs.

  .. math::
    L = −λ \\sum_{l} E_l^{\\,p}, \\qquad
    E_l = \\frac{1}{|y_l|} \\sum_{j} y_{l,j}^2 ,

  where ``l`` runs over the leaves of ``outputs`` (one per layer, or per call
  of a layer) and the mean ``E_l`` runs over **every element** of that leaf:
  batch, spatial and feature axes alike. A :class:`DBortEnergy` leaf (what
  ``nnx.capture(fn, DBortEnergy)`` returns for :class:`DBort` layers) holds
  energies already, one per call: each is one ``E_l``. For a linear layer ``y = W x`` with
  ``k`` outputs, ``E = tr(W C Wᵀ) / k`` with ``C`` the batch's second moment.
  The gradient is ``−λ p E^{p−1} ∇E``; for small ``p`` it is nearly
  ``−λ p ∇ \\log E``: scale-free, it sets directions, not norms (Bort fixes
  those). ``E`` is computed in at least float32 and floored at the smallest
  normal number, so an all-zero output gives a finite loss and zero gradient.

  Args:
    outputs: an array or a pytree of arrays (``None`` leaves are skipped),
      e.g. the dict returned by :func:`dbort_outputs`, or of
      :class:`DBortEnergy` variables, e.g. the state captured by
      :func:`dbort_energies`.
    weight: ``λ`` (ICLR 2023 PCA experiments: ``1e-4`` or ``1e-5``; the
      authors' MNIST/CIFAR script on the logits: ``1e-3``).
    power: ``p`` (PCA experiments: ``1e-4``; the authors' MNIST/CIFAR
      script: ``0.1``).

  Returns:
    A scalar (float32, or the outputs' wider float type).

  Raises:
    ValueError: for a ``weight`` below 0, a ``power`` not above 0, a value
      that is not finite in float32 or not a scalar (a traced value is
      checked by shape and dtype only); TypeError (also a ValueError) for
      one that is not a real number, such as a string.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> y = jnp.array([[1.0, -1.0], [3.0, 3.0]])  # mean(y²) = 5
    >>> float(dbort_loss(y, weight=2.0, power=0.5))  # −2 · √5
    -4.472...
    >>> outputs = {"a": y, "b": (2.0 * y,)}  # −(√5 + √20)
    >>> float(dbort_loss(outputs, weight=1.0, power=0.5))
    -6.708...
    >>> jax.grad(lambda y: dbort_loss(y, weight=1.0, power=1.0))(y)
    Array([[-0.5,  0.5],
           [-1.5, -1.5]], dtype=float32)
    >>> float(dbort_loss({"head": DBortEnergy((jnp.array(5.0),))},
    ...                  weight=2.0, power=0.5))  # an energy, not an output
    -4.472...

  References:
    Zhang, Zheng, Zhou, Lu, "Bort: Towards Explainable Neural Networks with
    Bounded Orthogonal Constraint", ICLR 2023 (DBort).
  """
  _check_scalar("weight", weight, positive=False)
  _check_scalar("power", power, positive=True)
  if (isinstance(outputs, tuple) and len(outputs) == 2
      and isinstance(outputs[1], dict)
      and all(isinstance(k, str) and isinstance(v, tuple)
              for k, v in outputs[1].items())):
    # dbort_outputs' whole result (its dict maps paths to tuples of outputs,
    # empty when no layer was called): its first element is the model's
    # output, which would silently count as one more layer.
    raise TypeError(
        "dbort_loss got a (model output, {path: outputs}) pair, the whole "
        "result of dbort_outputs; pass its second element: "
        "`result, outputs = dbort_outputs(...); dbort_loss(outputs)`.")
  energies = []
  for leaf in jax.tree.leaves(
      outputs, is_leaf=lambda x: isinstance(x, DBortEnergy)
  ):
    if isinstance(leaf, DBortEnergy):
      energies += jax.tree.leaves(leaf.get_value())
    else:
      energies.append(_mean_square(leaf))
  if not energies:
    raise ValueError(
        "dbort_loss needs at least one layer output or DBortEnergy; wrap a "
        "layer in DBort(layer) or pass its outputs."
    )
  # Weight 0 is the task loss exactly, also where E^p overflows (0 · inf
  # was NaN, in the loss and its gradient): the energies are set aside on
  # both sides of the where, as a traced weight needs.
  off = weight == 0
  # A stack of layers run by nnx.scan records one energy per layer: each
  # is a term of its own, so the loss stays a scalar.
  terms = [jnp.sum(jnp.where(off, 1.0, energy) ** power)
           for energy in energies]
  total = terms[0]
  for term in terms[1:]:
    total = total + term
  return jnp.where(off, -0.0, -weight * total)


# ----------------------------------------------------------------------------
# The wrapper module and the term a training step adds.


# Whether DBort layers record their energy now: True only while
# dbort_energies runs a model under nnx.capture(..., DBortEnergy). Flax has no
# public way to ask a module whether a capture is open, and Module.sow outside
# one stores a Variable on the module (deprecated, and a leaked tracer under
# jit), so DBort asks this flag, which only bort_jax sets, rather than Flax's
# private per-module capture attribute.
_RECORDING: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "bort_jax_dbort_recording", default=False)


@contextlib.contextmanager
def _recording() -> Iterator[None]:
  token = _RECORDING.set(True)
  try:
    yield
  finally:
    _RECORDING.reset(token)


class DBort(nnx.Module):
  """Wraps a layer and records the energy ``mean(y²)`` of its output.

  In the spirit of ``nnx.SpectralNorm``: the wrapper holds the layer
  (``self.layer``) and returns exactly its output; when the call runs under
  :func:`dbort_energies` (which :func:`dbort_term` calls; it runs the model
  under ``nnx.capture(fn, DBortEnergy)``) it also sows

  .. math::
    E = \\frac{1}{|y|} \\sum_j y_j^2

  (over batch and features alike, in at least float32, floored at the
  smallest normal number) as a :class:`DBortEnergy` named ``"energy"``, one
  entry per call. Anywhere else, a plain ``nnx.capture`` included, it
  records nothing and leaves no state.
  The layer's parameters keep their names under ``layer/`` (e.g.
  ``layer/kernel``), so Bort's default selection still finds them.

  Args:
    layer: the module (or any callable) to wrap; a pytree output counts all
      its leaves' elements together.

  Raises:
    TypeError: if ``layer`` is not callable.

  Examples:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> head = DBort(nnx.Linear(3, 2, rngs=nnx.Rngs(0)))
    >>> x = jnp.ones((4, 3))
    >>> bool(jnp.all(head(x) == head.layer(x)))  # the layer, unchanged
    True
    >>> _, energies = dbort_energies(head, x)
    >>> bool(jnp.allclose(energies["energy"][0], jnp.mean(head(x) ** 2)))
    True
  """

  def __init__(self, layer: Callable[..., Any]):
    if not callable(layer):
      raise TypeError(
          f"DBort(layer) needs a callable layer (e.g. an nnx.Linear), got "
          f"{type(layer).__name__}."
      )
    self.layer = layer

  def __call__(self, *args: Any, **kwargs: Any) -> Any:
    y = self.layer(*args, **kwargs)
    if _RECORDING.get():
      self.sow(DBortEnergy, "energy", _mean_square(y))
    return y


def dbort_energies(
    model: nnx.Module,
    *args: Any,
    method: str = "__call__",
    **kwargs: Any,
) -> tuple[Any, nnx.State]:
  """Runs a model and captures the energies of its :class:`DBort` layers.

  ``nnx.capture(..., DBortEnergy)`` around
  ``getattr(model, method)(*args, **kwargs)``: only :class:`DBortEnergy`
  intermediates are collected, whatever else the model sows.

  Args:
    model: an ``nnx.Module`` holding :class:`DBort` layers (or one itself).
    *args: positional arguments of the forward pass.
    method: the name of the model's method to run.
    **kwargs: keyword arguments of the forward pass.

  Returns:
    ``(result, energies)``: the method's result, and an ``nnx.State`` with a
    :class:`DBortEnergy` ``energy`` (a tuple, one scalar per call) at each
    called :class:`DBort` layer's path. :func:`dbort_loss` reads it.

  Examples:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> model = nnx.Sequential(DBort(nnx.Linear(3, 4, rngs=nnx.Rngs(0))),
    ...                        nnx.relu, nnx.Linear(4, 2, rngs=nnx.Rngs(1)))
    >>> _, energies = dbort_energies(model, jnp.ones((5, 3)))
    >>> energies["layers"][0]["energy"][0].shape
    ()
  """
  forward = nnx.capture(
      lambda m, *a, **kw: getattr(m, method)(*a, **kw), DBortEnergy
  )
  with _recording():
    return layer_outputs.run_captured(forward, model, *args, **kwargs)


class DBortTerm(NamedTuple):
  """What :func:`dbort_term` returns.

  Attributes:
    output: the result of the model's method (e.g. the logits).
    loss: ``−λ Σ_l E_l^p``, to add to the task loss.
    energy: the mean of the recorded energies ``E_l`` (a scalar to log).
    energies: each called :class:`DBort` layer's path (``"a/b"``; ``""``
      for the model itself) to its energies, one per call, as an array
      ``(calls,)``; a stack of layers (``nnx.vmap``) applied by
      ``nnx.scan`` records ``(calls, layers)``, one energy per layer.
  """

  output: Any
  loss: Array
  energy: Array
  energies: dict[str, Array]


def dbort_term(
    model: nnx.Module,
    *args: Any,
    weight: float | Array = DBORT_WEIGHT,
    power: float | Array = DBORT_POWER,
    method: str = "__call__",
    **kwargs: Any,
) -> DBortTerm:
  """Runs a model once: its output, the DBort loss of its layers, the energies.

  .. math::
    L_{DBort} = −λ \\sum_{l} E_l^{\\,p}, \\qquad
    E_l = \\operatorname{mean}(y_l^2)

  over the outputs ``y_l`` of every :class:`DBort` layer the forward pass
  calls (:func:`dbort_energies`, then :func:`dbort_loss`). A training step
  adds ``loss`` to its task loss: with ``DBort`` around the classifier head
  and ``λ = 10⁻³``, ``p = 0.1`` this is the authors' MNIST/CIFAR objective
  ``CE − λ (mean logits²)^p``. With ``weight=0`` the term is ``−0.0``, so the
  total loss and its gradients are bit for bit those of the task loss.
  ``weight`` and ``power`` may be traced (no recompilation when they change).

  Args:
    model: an ``nnx.Module`` holding :class:`DBort` layers (or one itself).
    *args: positional arguments of the forward pass.
    weight: ``λ``.
    power: ``p`` (the one name and default of :func:`dbort_loss`).
    method: the name of the model's method to run.
    **kwargs: keyword arguments of the forward pass.

  Returns:
    A :class:`DBortTerm` ``(output, loss, energy, energies)``.

  Raises:
    ValueError: if the forward pass called no :class:`DBort` layer (wrap
      one, or use :func:`dbort_outputs` for models that cannot be wrapped).

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> from flax import nnx
    >>> class Classifier(nnx.Module):
    ...   def __init__(self, rngs):
    ...     self.hidden = nnx.Linear(4, 8, rngs=rngs)
    ...     self.head = DBort(nnx.Linear(8, 3, rngs=rngs))
    ...   def __call__(self, x):
    ...     return self.head(nnx.relu(self.hidden(x)))
    >>> model = Classifier(nnx.Rngs(0))
    >>> x, labels = jnp.ones((6, 4)), jnp.zeros(6, jnp.int32)
    >>> def loss_fn(model):
    ...   term = dbort_term(model, x, weight=1e-3, power=0.1)
    ...   ce = optax.softmax_cross_entropy_with_integer_labels(
    ...       term.output, labels).mean()
    ...   return ce + term.loss, term.energy
    >>> (loss, energy), grads = nnx.jit(
    ...     nnx.value_and_grad(loss_fn, has_aux=True))(model)
    >>> grads["head"]["layer"]["kernel"].shape, energy.shape
    ((8, 3), ())
  """
  output, captured = dbort_energies(model, *args, method=method, **kwargs)
  energies = {
      _path_string(path[:-1]): jnp.stack(values)
      for path, values in nnx.to_flat_state(captured)
      for values in [values.get_value()]
  }
  if not energies:
    raise ValueError(
        f"dbort_term: the model's {method} called no DBort layer; wrap the "
        "layers to regularise in bort_jax.dbort.DBort(layer), or use "
        "dbort_outputs for a model that cannot be wrapped."
    )
  loss = dbort_loss(captured, weight=weight, power=power)
  energy = jnp.mean(jnp.concatenate([e.ravel() for e in energies.values()]))
  return DBortTerm(output, loss, energy, energies)
