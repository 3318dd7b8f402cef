"""The names the application accepts, without JAX: models, schedules, rates.

The command line's parser is built from :class:`~bort_jax.experiments.config.
TrainConfig`'s fields, and their choices and stated defaults come from here,
so that ``bort-jax --help`` answers without importing JAX, Flax or optax.
:mod:`bort_jax.experiments.models` and :mod:`bort_jax.experiments.optimizers`
hold the code behind these names; tests/experiments/test_cli_help.py checks
that the two agree.
"""

from __future__ import annotations

import types
import typing
from typing import Any, Literal, Mapping

#: The models ``bort-jax`` builds by name (see
#: :data:`bort_jax.experiments.models.BUILDERS`).
Model = Literal["mlp", "invertible-mlp", "cnn", "resnet18", "vit",
                "simple-cnn"]
MODELS: tuple[str, ...] = typing.get_args(Model)

#: The learning-rate schedules: warmup then cosine decay to 0, or warmup then
#: constant (the authors' MNIST/CIFAR script uses no schedule).
Schedule = Literal["cosine", "constant"]
SCHEDULES: tuple[str, ...] = typing.get_args(Schedule)

#: How γ runs over the training: constant, weak until a switch then γ (late
#: tightening), or γ until a switch then linear to 0 at the end (annealed).
GammaSchedule = Literal["constant", "late", "anneal"]
GAMMA_SCHEDULES: tuple[str, ...] = typing.get_args(GammaSchedule)

#: The initialisations: the model's own, or its Bort kernels put on the
#: constraint (:func:`bort_jax.project_to_constraint`) right after it.
Init = Literal["default", "orthogonal"]
INITS: tuple[str, ...] = typing.get_args(Init)

#: What the DBort term regularises: the model's output, or the output of every
#: layer Bort constrains.
DBortOn = Literal["logits", "layers"]
DBORT_ON: tuple[str, ...] = typing.get_args(DBortOn)

#: The prefix that adds Bort to an optimizer's name.
BORT_PREFIX = "bort-"

def is_bort(name: Any) -> bool:
  """Whether an optimizer name asks for Bort (``bort-…``).

  Examples:
    >>> from bort_jax.experiments.choices import is_bort
    >>> is_bort("bort-lion"), is_bort("adamw")
    (True, False)
  """
  return isinstance(name, str) and name.startswith(BORT_PREFIX)


def base_name(name: str) -> str:
  """The optimizer without Bort: ``"bort-lion"`` → ``"lion"``."""
  return name[len(BORT_PREFIX):] if is_bort(name) else name


#: The default peak learning rate per base optimizer (SGD with momentum 0.9
#: wants a far larger step than the adaptive methods, and Muon's
#: orthogonalised update its usual 0.02: at 1e-3 it barely trains, 29 % test
#: accuracy from ``bort-jax train --optimizer bort-muon --lr 1e-3 --epochs
#: 5``); any other optax optimizer gets :data:`DEFAULT_LEARNING_RATE`.
DEFAULT_LEARNING_RATES: Mapping[str, float] = types.MappingProxyType(
    {"sgd": 0.05, "adamw": 1e-3, "muon": 0.02})
DEFAULT_LEARNING_RATE = 1e-3


def describe_learning_rates() -> str:
  """The default learning rates in words, for help texts.

  Examples:
    >>> from bort_jax.experiments.choices import describe_learning_rates
    >>> for part in describe_learning_rates().split(", "):
    ...   print(part)
    sgd and bort-sgd 0.05
    adamw and bort-adamw 0.001
    muon and bort-muon 0.02
    any other its optax default where it has one (prodigy 1) or 0.001
  """
  parts = [f"{name} and {BORT_PREFIX}{name} {rate:g}"
           for name, rate in DEFAULT_LEARNING_RATES.items()]
  return ", ".join(parts + [
      "any other its optax default where it has one (prodigy 1) or "
      f"{DEFAULT_LEARNING_RATE:g}"])
