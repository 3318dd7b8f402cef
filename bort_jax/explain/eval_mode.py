"""The explain tools run a model as it is at inference: refused in training
mode, before anything runs."""

from __future__ import annotations

from typing import Any

from flax import nnx


def check_eval_mode(model: Any, name: str = "model") -> None:
  """Refuses an ``nnx.Module`` holding a layer in training mode.

  A ``BatchNorm`` that updates its running statistics, or a ``Dropout``
  that draws, would change the user's model under a tool (its first
  forward pass runs eagerly) and then fail inside ``jax.grad`` with Flax's
  trace-level error; its maps would change from call to call. Other
  callables (a ``logits_fn`` closure) are not inspected.

  Args:
    model: the model or ``logits_fn`` a tool was given.
    name: the argument's name, for the message.

  Raises:
    ValueError: naming the first layer in training mode and the fix,
      ``model.eval()``.

  Examples:
    >>> from flax import nnx
    >>> model = nnx.Sequential(nnx.Linear(2, 2, rngs=nnx.Rngs(0)),
    ...                        nnx.Dropout(0.5, rngs=nnx.Rngs(0)))
    >>> check_eval_mode(model)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: model is in training mode: Dropout at layers/1 ...
    >>> model.eval()
    >>> check_eval_mode(model)
  """
  if not isinstance(model, nnx.Module):
    return
  for path, module in nnx.iter_modules(model):
    training = (
        (isinstance(module, nnx.BatchNorm)
         and not module.use_running_average)
        or (isinstance(module, nnx.Dropout) and not module.deterministic
            and module.rate > 0))
    if training:
      where = "/".join(str(p) for p in path) or "the top"
      raise ValueError(
          f"{name} is in training mode: {type(module).__name__} at {where} "
          f"would update its statistics or draw at random under this tool "
          f"(and fail inside its gradient); call model.eval() first.")
