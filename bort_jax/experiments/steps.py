"""The jitted training and evaluation steps, and the metrics they add up.

As in Flax's MNIST example, the steps are module-level functions compiled by
``jax.jit``, which is also their cache: the graph definitions are static
arguments (hashable, equal for equal models), so every run of the same
computation reuses one compilation. The state is the pure
``nnx.split`` state of the model and of its ``nnx.Optimizer``, so that it can
be donated, checkpointed by orbax and restored bit for bit.

:class:`Metrics` is the one accumulator: a typed pytree of the loss sum, the
correct count and the example count, which the training loop checkpoints
mid-epoch.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import bort_jax
from bort_jax import dbort as dbort_lib


class Metrics(NamedTuple):
  """Sums of a classifier's loss and correct predictions over examples.

  The interface of ``nnx.MultiMetric`` (:meth:`update`, then
  :meth:`compute`), as a pure pytree: the jitted steps take and return it,
  a data-parallel step sums it across devices, the training loop donates it
  and orbax checkpoints it mid-epoch as it is, where ``nnx.MultiMetric`` is
  a mutable ``nnx.Object`` to split and merge around every step.

  Attributes:
    loss: the sum of the per-example cross-entropies (float32).
    correct: the number of correct predictions (int32).
    count: the number of examples (int32).
    energy: the sum over examples of their batch's DBort energy
      ``mean(y²)`` (float32; 0 when the term is off).

  Examples:
    >>> import jax.numpy as jnp
    >>> from bort_jax.experiments.steps import Metrics
    >>> m = Metrics.zeros().update(jnp.array([1.0, 3.0]),
    ...                            jnp.array([True, False]))
    >>> m.compute()
    {'loss': 2.0, 'accuracy': 0.5, 'dbort_energy': 0.0}
  """

  loss: jax.Array
  correct: jax.Array
  count: jax.Array
  energy: jax.Array

  @classmethod
  def zeros(cls) -> "Metrics":
    """No examples yet."""
    return cls(jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32),
               jnp.zeros((), jnp.int32), jnp.zeros((), jnp.float32))

  def update(self, losses: jax.Array, correct: jax.Array,
             mask: jax.Array | None = None,
             energy: jax.Array | None = None) -> "Metrics":
    """Adds per-example losses and correctness (where ``mask`` is true)."""
    if mask is None:
      mask = jnp.ones(losses.shape, bool)
    count = jnp.sum(mask).astype(jnp.int32)
    energy = 0.0 if energy is None else energy
    return Metrics(
        self.loss + jnp.sum(jnp.where(mask, losses, 0.0)),
        self.correct + jnp.sum(correct & mask).astype(jnp.int32),
        self.count + count,
        self.energy + energy * count.astype(jnp.float32))

  def compute(self) -> dict[str, float | None]:
    """The means over the examples so far, as host floats.

    Returns:
      ``{"loss", "accuracy", "dbort_energy"}``: the mean loss, the accuracy
      and the mean DBort energy; each ``None`` before any example.
    """
    loss, correct, count, energy = jax.device_get(tuple(self))  # one sync
    sums = {"loss": loss, "accuracy": correct, "dbort_energy": energy}
    return {k: float(v) / int(count) if count else None
            for k, v in sums.items()}


class Objective(NamedTuple):
  """The training loss: cross-entropy, label smoothing and the DBort term.

  .. math::
    L = \\operatorname{CE}_α(z, y) − λ \\sum_l (\\operatorname{mean} y_l^2)^p

  with ``z`` the logits, ``α`` the label smoothing and ``y_l`` the logits
  (``dbort_on="logits"``, as in the authors' script) or the output of
  every layer Bort constrains (``"layers"``). A hashable static argument of
  the jitted step: with ``dbort_weight=0`` the term is not traced at all, so
  the loss and its gradients are exactly the plain cross-entropy's.

  Attributes:
    label_smoothing: ``α``.
    dbort_weight: ``λ`` (0: no DBort term).
    dbort_power: ``p`` (:data:`bort_jax.dbort.DBORT_POWER` by default).
    dbort_on: ``"logits"`` or ``"layers"``.
  """

  label_smoothing: float = 0.0
  dbort_weight: float = 0.0
  dbort_power: float = dbort_lib.DBORT_POWER
  dbort_on: str = "logits"

  @classmethod
  def from_config(cls, config: Any) -> "Objective":
    """The objective of a :class:`~bort_jax.experiments.config.TrainConfig`."""
    return cls(float(config.label_smoothing), float(config.dbort_weight),
               float(config.dbort_power), config.dbort_on)


def _cross_entropies(logits, labels, label_smoothing=0.0):
  if not label_smoothing:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  targets = optax.smooth_labels(
      jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype),
      label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def objective_loss(model: nnx.Module, images: jax.Array, labels: jax.Array,
                   objective: Objective = Objective()):
  """The mean training loss of a batch, and what the metrics add up.

  Args:
    model: the classifier.
    images: a batch of images.
    labels: their integer labels.
    objective: the :class:`Objective`.

  Returns:
    ``(loss, (losses, correct, energy))``: the scalar loss to differentiate,
    the per-example cross-entropies, their correctness, and the DBort energy
    (the mean of ``mean(y_l²)`` over the outputs; 0 without the term).

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> from flax import nnx
    >>> from bort_jax.models.mlp import MLP
    >>> from bort_jax.experiments.steps import Objective, objective_loss
    >>> model = MLP(4, (8,), 3, rngs=nnx.Rngs(0))
    >>> x, y = jnp.ones((5, 2, 2, 1)), jnp.zeros(5, jnp.int32)
    >>> plain, _ = objective_loss(model, x, y)
    >>> bool(plain == optax.softmax_cross_entropy_with_integer_labels(
    ...     model(x), y).mean())
    True
    >>> loss, (_, _, energy) = objective_loss(
    ...     model, x, y, Objective(dbort_weight=1e-3, dbort_power=0.1))
    >>> bool(jnp.isclose(loss, plain - 1e-3 * jnp.mean(model(x) ** 2) ** 0.1))
    True
  """
  if objective.dbort_weight and objective.dbort_on == "layers":
    logits, outputs = dbort_lib.dbort_outputs(model, images)
  else:
    logits = model(images)
    outputs = logits
  losses = _cross_entropies(logits, labels, objective.label_smoothing)
  correct = jnp.argmax(logits, -1) == labels
  loss = jnp.mean(losses)
  energy = jnp.zeros((), jnp.float32)
  if objective.dbort_weight:
    loss = loss + dbort_lib.dbort_loss(
        outputs, weight=objective.dbort_weight, power=objective.dbort_power)
    energies = [jnp.mean(jnp.square(y.astype(jnp.float32)))
                for y in jax.tree.leaves(outputs)]
    energy = jnp.mean(jnp.stack(energies))
  return loss, (losses, correct, energy)


@functools.partial(jax.jit, static_argnums=(0, 1, 8),
                   donate_argnums=(2, 3, 4))
def train_step(model_def: Any, optimizer_def: Any, model_state: Any,
               optimizer_state: Any, metrics: Metrics, images: jax.Array,
               labels: jax.Array, index: jax.Array,
               objective: Objective = Objective()):
  """One optimizer step on the batch ``images[index]``, ``labels[index]``.

  The gradient of :func:`objective_loss` is applied by the ``nnx.Optimizer``
  (``optimizer.update(model, grads)``); the batch's losses and correct
  predictions are added to ``metrics``. The states and metrics are donated.

  Args:
    model_def: the model's graph definition (``nnx.split(model)[0]``).
    optimizer_def: the optimizer's graph definition.
    model_state: the model's state.
    optimizer_state: the optimizer's state.
    metrics: the running :class:`Metrics`.
    images: the training images (kept on the device).
    labels: the training labels.
    index: the batch's indices into ``images`` (one shape for every step).
    objective: the training loss (:class:`Objective`; static).

  Returns:
    ``(model_state, optimizer_state, metrics)`` after the step.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> from flax import nnx
    >>> from bort_jax.models.mlp import MLP
    >>> from bort_jax.experiments import steps
    >>> model = MLP(4, (8,), 3, rngs=nnx.Rngs(0))
    >>> optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    >>> (model_def, m), (opt_def, o) = nnx.split(model), nnx.split(optimizer)
    >>> x, y = jnp.ones((6, 2, 2, 1)), jnp.zeros(6, jnp.int32)
    >>> m, o, metrics = steps.train_step(model_def, opt_def, m, o,
    ...     steps.Metrics.zeros(), x, y, jnp.arange(4))
    >>> int(metrics.count)
    4
  """
  model = nnx.merge(model_def, model_state)
  optimizer = nnx.merge(optimizer_def, optimizer_state)
  x, y = images[index], labels[index]
  grad_fn = nnx.value_and_grad(objective_loss, has_aux=True)
  (_, (losses, correct, energy)), grads = grad_fn(model, x, y, objective)
  optimizer.update(model, grads)
  return (nnx.state(model), nnx.state(optimizer),
          metrics.update(losses, correct, energy=energy))


@functools.partial(jax.jit, static_argnums=0)
def eval_step(eval_def: Any, model_state: Any, metrics: Metrics,
              images: jax.Array, labels: jax.Array,
              mask: jax.Array) -> Metrics:
  """Adds one evaluation batch (where ``mask`` is true) to ``metrics``.

  Args:
    eval_def: the model's graph definition in evaluation mode (see
      :func:`eval_graphdef`).
    model_state: the model's state.
    metrics: the running :class:`Metrics`.
    images: a batch of images.
    labels: its labels.
    mask: which rows are real (the last batch is padded to one shape).

  Returns:
    The updated :class:`Metrics`.
  """
  model = nnx.merge(eval_def, model_state)
  _, (losses, correct, _) = objective_loss(model, images, labels)
  return metrics.update(losses, correct, mask)


@functools.partial(jax.jit, static_argnames="exclude")
def orthogonality(params: Any, exclude: tuple[str, ...] = ()):
  """The per-kernel orthogonality errors and their mean (``None`` if none).

  The errors cover the Bort kernels of the run only: the default selection
  (:func:`bort_jax.orthogonality_error`) less the parameters under the
  ``exclude`` prefixes (the classifier head of a ``bort_head=False`` run,
  which Bort does not correct).

  Args:
    params: the model's ``nnx.Param`` state.
    exclude: path prefixes (``"head"``, ``"layers/5"``) whose parameters
      are left out (static).

  Returns:
    ``(mean, errors)``: :func:`bort_jax.mean_orthogonality_error` (or
    ``None`` without Bort kernels) and :func:`bort_jax.orthogonality_error`.

  Examples:
    >>> import jax.numpy as jnp
    >>> from bort_jax.experiments.steps import orthogonality
    >>> params = {"head": {"kernel": jnp.ones((3, 2))},
    ...           "dense": {"kernel": jnp.eye(3)}}
    >>> mean, errors = orthogonality(params, exclude=("head",))
    >>> list(errors), float(mean.constraint_error)
    (['dense/kernel'], 0.0)
  """
  errors = {path: error
            for path, error in bort_jax.orthogonality_error(params).items()
            if not any(path == p or path.startswith(p + "/")
                       for p in exclude)}
  if not errors:
    return None, {}
  return bort_jax.mean_orthogonality_error(errors), errors


def eval_graphdef(model: nnx.Module) -> Any:
  """The model's graph with evaluation mode set, leaving ``model`` as it is."""
  copy = nnx.clone(model)
  copy.eval()
  return nnx.split(copy)[0]


def evaluate_state(eval_def: Any, model_state: Any, images: jax.Array,
                   labels: jax.Array, batch_size: int) -> Metrics:
  """:func:`eval_step` over a data set in batches of one shape."""
  n = images.shape[0]
  batch_size = min(batch_size, n)
  metrics = Metrics.zeros()
  for start in range(0, n, batch_size):
    x, y = images[start:start + batch_size], labels[start:start + batch_size]
    mask = jnp.ones(batch_size, bool)
    if x.shape[0] < batch_size:  # pad: one compiled shape
      pad = batch_size - x.shape[0]
      x = jnp.concatenate([x, jnp.zeros((pad,) + x.shape[1:], x.dtype)])
      y = jnp.concatenate([y, jnp.zeros((pad,), y.dtype)])
      mask = jnp.arange(batch_size) < batch_size - pad
    metrics = eval_step(eval_def, model_state, metrics, x, y, mask)
  return metrics


def evaluate(model: nnx.Module, images: Any, labels: Any,
             batch_size: int = 1000) -> tuple[float, float]:
  """The mean cross-entropy and accuracy of a classifier on a data set.

  The model is evaluated in evaluation mode (BatchNorm running averages) and
  left as it was.

  Args:
    model: an ``nnx.Module`` returning logits.
    images: ``(N, H, W, C)`` images.
    labels: ``(N,)`` integer labels.
    batch_size: the evaluation batch size.

  Returns:
    ``(loss, accuracy)``.

  Examples:
    >>> import numpy as np
    >>> from flax import nnx
    >>> from bort_jax.models.mlp import MLP
    >>> from bort_jax.experiments.steps import evaluate
    >>> model = MLP(4, (8,), 3, rngs=nnx.Rngs(0))
    >>> loss, acc = evaluate(model, np.zeros((5, 2, 2, 1)), np.zeros(5, int))
    >>> 0.0 <= acc <= 1.0
    True
  """
  metrics = evaluate_state(
      eval_graphdef(model), nnx.state(model),
      jnp.asarray(np.asarray(images), jnp.float32),
      jnp.asarray(np.asarray(labels), jnp.int32), batch_size)
  means = metrics.compute()
  return means["loss"], means["accuracy"]
