"""Named training recipes, as data: the authors' and the recommended ones.

A recipe is a partial :class:`~bort_jax.experiments.config.TrainConfig`:
``bort-jax train --recipe NAME`` starts from it, and every flag given on the
command line overrides it. The recommended recipes take their Bort values
from :data:`bort_jax.RECOMMENDED`, the same values the library's aliases
default to, so there is one set of defaults.

The authors' recipes transcribe the published training scripts of Bort
(Zhang, Zheng, Zhou, Lu, ICLR 2023):

- ``authors-mnist``: their MNIST/CIFAR script on their SimpleCNN: Bort-SGD,
  lr 0.005, momentum 0.9, weight decay 0.005, γ 0.05, ``l1-fullrow``,
  c = 1; DBort on the logits (λ 1e-3, p 0.1); batch 256, 40 epochs, no
  schedule, seed 42. They report the best test accuracy over all epochs.
- ``authors-imagenet-adamw``: the optimizer part of their ImageNet script:
  Bort-AdamW, γ 1e-4, weight decay 2e-5, cosine schedule, 5 warm-up epochs
  (of 300), label smoothing 0.1. Its learning rate is left to the
  optimizer's default here.
"""

from __future__ import annotations

import types
from typing import Any

import bort_jax


def _recommended(placement: str, optimizer: str, **extra: Any
                 ) -> dict[str, Any]:
  r = bort_jax.RECOMMENDED[placement]
  return {"optimizer": optimizer, "mode": r.mode, "amplitude": r.amplitude,
          "gamma": r.gamma, "learning_rate": r.learning_rate, **extra}


#: name -> config overrides (read-only).
RECIPES: types.MappingProxyType = types.MappingProxyType({
    "recommended-decoupled": _recommended("decoupled", "bort-adamw"),
    "recommended-coupled": _recommended("coupled", "bort-sgd", momentum=0.9),
    "authors-mnist": {
        "data": "mnist", "model": "simple-cnn", "optimizer": "bort-sgd",
        "learning_rate": 0.005, "momentum": 0.9, "weight_decay": 0.005,
        "gamma": 0.05, "mode": "l1-fullrow", "amplitude": 1.0,
        "dbort_weight": 1e-3, "dbort_power": 0.1, "dbort_on": "logits",
        "batch_size": 256, "epochs": 40, "schedule": "constant",
        "warmup": 0.0, "seed": 42,
    },
    "authors-imagenet-adamw": {
        "optimizer": "bort-adamw", "gamma": 1e-4, "weight_decay": 2e-5,
        "schedule": "cosine", "warmup": 5.0, "epochs": 300,
        "label_smoothing": 0.1,
    },
})


def _setting(placement: str) -> str:
  r = bort_jax.RECOMMENDED[placement]
  return (f"{r.mode}, amplitude {r.amplitude}, gamma {r.gamma:g}, lr "
          f"{r.learning_rate:g}")


#: name -> what the recipe is, in one line (``bort-jax recipes`` lists them).
DESCRIPTIONS: types.MappingProxyType = types.MappingProxyType({
    "recommended-decoupled": "Bort-AdamW at the recommended decoupled "
        f"setting ({_setting('decoupled')}), the library's bort_adamw "
        "defaults",
    "recommended-coupled": "Bort-SGD at the recommended coupled setting "
        f"({_setting('coupled')}, momentum 0.9), the library's bort_sgd "
        "defaults with momentum=0.9",
    "authors-mnist":
        "the authors' MNIST script: SimpleCNN, Bort-SGD lr 0.005, gamma 0.05, "
        "l1-fullrow c=1, DBort on the logits, batch 256, 40 epochs, seed 42",
    "authors-imagenet-adamw":
        "the optimizer of the authors' ImageNet script: Bort-AdamW gamma "
        "1e-4, weight decay 2e-5, cosine, 5 warm-up epochs of 300, label "
        "smoothing 0.1",
})


def describe() -> str:
  """One line per recipe: its name and what it is.

  Returns:
    The lines, the names padded to one width.

  Examples:
    >>> from bort_jax.experiments.recipes import describe
    >>> print(describe().splitlines()[2])
    authors-mnist           the authors' MNIST script: SimpleCNN, ...
  """
  width = max(map(len, RECIPES))
  return "\n".join(f"{name.ljust(width)}  {DESCRIPTIONS[name]}"
                   for name in RECIPES)


def recipe(name: str) -> dict[str, Any]:
  """A copy of the recipe's overrides.

  Args:
    name: one of :data:`RECIPES`.

  Returns:
    A dict of :class:`~bort_jax.experiments.config.TrainConfig` fields.

  Raises:
    ValueError: for an unknown name.

  Examples:
    >>> from bort_jax.experiments.recipes import recipe
    >>> recipe("authors-mnist")["gamma"]
    0.05
  """
  if name not in RECIPES:
    raise ValueError(
        f"Unknown recipe {name!r}; choose one of {', '.join(RECIPES)}.")
  return dict(RECIPES[name])


def check_override(name: str, given: dict[str, Any]) -> None:
  """Refuses a new optimizer that would keep the recipe's learning rate.

  A recipe's learning rate is tuned for its optimizer (SGD with momentum
  takes a step fifty times AdamW's); another base optimizer with that rate
  is a run nobody tuned. Dropping Bort (``bort-sgd`` → ``sgd``, the recipe's
  baseline) keeps the base optimizer, and is allowed.

  Args:
    name: one of :data:`RECIPES`.
    given: the fields given on the command line.

  Raises:
    ValueError: ``given`` changes the optimizer's base but not the
      learning rate of a recipe that sets one.

  Examples:
    >>> from bort_jax.experiments.recipes import check_override
    >>> check_override("recommended-coupled", {"optimizer": "sgd"})
    >>> check_override("recommended-coupled", {"optimizer": "adamw",
    ...                                        "learning_rate": 1e-3})
    >>> check_override("recommended-coupled", {"optimizer": "adamw"})
    Traceback (most recent call last):
    ...
    ValueError: --recipe recommended-coupled tunes lr 0.05 for bort-sgd; ...
  """
  # Imported at the call, not with the module: the command line's parser
  # lists the recipes without loading JAX.
  from bort_jax.experiments import optimizers
  values = recipe(name)
  optimizer = given.get("optimizer")
  if (optimizer is None or "learning_rate" in given
      or "learning_rate" not in values):
    return
  if optimizers.base_name(optimizer) != optimizers.base_name(
      values["optimizer"]):
    raise ValueError(
        f"--recipe {name} tunes lr {values['learning_rate']:g} for "
        f"{values['optimizer']}; --optimizer {optimizer} would keep it. Give "
        f"--lr too (e.g. {optimizers.default_learning_rate(optimizer):g}, "
        f"{optimizer}'s default), or drop --optimizer.")
