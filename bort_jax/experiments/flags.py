"""Command-line flags: argparse types that check, and one flag per field of
the training config.

Used by the ``bort-jax`` parser (:mod:`bort_jax.experiments.cli`) and the
demo's (:mod:`bort_jax.experiments.demo`). Parsing a value checks it with
:mod:`bort_jax.validation`, the one place that checks user input.

Why the standard library's argparse, with this short generator, and not a
dataclass-to-CLI library (tyro, jsonargparse, simple_parsing, or
``ml_collections`` config flags as in the Flax examples): those parse into
the dataclass with its defaults filled in, so ``--epochs 5`` cannot be told
from no flag when 5 is the default, and the command line needs exactly that
(``--resume`` refuses an explicit value that differs from the saved run's,
and a recipe's values give way only to explicit flags); tyro reports errors
as multi-line panels and absl (``ml_collections``) as its own, where every
expected error here is one ``bort-jax <command>: error: …`` line; and
``ml_collections`` would rename every flag (``--config.gamma=…``). Each
flag is still one field of :class:`~bort_jax.experiments.config.TrainConfig`
(its choices from its ``Literal`` type, its parsing and help from its
metadata), so a new setting is one field.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import typing
from typing import Any, Callable, Sequence

from bort_jax import validation
from bort_jax.experiments import config as config_lib


def argument_type(convert: Callable[[str], Any],
                  check: Callable[[str, Any], Any] | None = None,
                  what: str = "a number") -> Callable[[str], Any]:
  """An argparse type: ``convert(text)``, finite, then ``check(name, value)``.

  Args:
    convert: text to value (e.g. ``int``, ``float``).
    check: a checker of :mod:`bort_jax.validation`, or ``None``.
    what: what is expected, for the message when ``convert`` fails.

  Returns:
    A function argparse calls with the flag's text.

  Examples:
    >>> from bort_jax import validation
    >>> from bort_jax.experiments.flags import argument_type
    >>> argument_type(int, validation.check_positive_int, "an integer")("3")
    3
  """
  def parse(text: str):
    try:
      value = convert(text)
    except (TypeError, ValueError):
      raise argparse.ArgumentTypeError(
          f"expected {what}, got {text!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
      raise argparse.ArgumentTypeError(f"expected a finite number, got {text}")
    if check is not None:
      try:
        check("value", value)
      except (TypeError, ValueError) as e:
        raise argparse.ArgumentTypeError(
            str(e).replace("value ", "", 1).rstrip(".")) from None
    return value

  parse.__name__ = getattr(convert, "__name__", "value")
  return parse


#: The argparse types of counts: ``--steps 0`` or ``--images -5`` is one
#: line naming the flag, not a traceback (or a silent slice) later. (The
#: checks are looked up when a value is parsed: ``bort_jax.validation``
#: loads JAX on first use, and the parser loads none.)
positive_int = argument_type(
    int, lambda name, v: validation.check_positive_int(name, v), "an integer")
nonnegative_int = argument_type(
    int, lambda name, v: validation.check_nonnegative_int(name, v),
    "an integer")


def flag(name: str) -> str:
  """A config field's flag: its metadata's, else ``--<name-with-dashes>``.

  Examples:
    >>> from bort_jax.experiments.flags import flag
    >>> flag("learning_rate"), flag("bort_every")
    ('--lr', '--bort-every')
  """
  field = config_lib.TrainConfig.__dataclass_fields__[name]
  return field.metadata.get("flag") or "--" + name.replace("_", "-")


def add_config_flag(p: argparse.ArgumentParser, name: str,
                    **overrides: Any) -> None:
  """The flag of one :class:`~bort_jax.experiments.config.TrainConfig`
  field, from its metadata.

  The default is ``None``, so that an explicit value can be told from a
  default (a resumed run takes its saved configuration, and explicit values
  must agree with it); the help states the field's default, or, for a field
  whose default is ``None`` (decided by the optimizer or the placement),
  what decides it.

  Args:
    p: the parser (or subparser) to add the flag to.
    name: the field's name.
    **overrides: ``add_argument`` keywords that replace the field's (e.g.
      the demo's own ``default``, ``choices`` and ``help``).

  Examples:
    >>> import argparse
    >>> from bort_jax.experiments.flags import add_config_flag
    >>> parser = argparse.ArgumentParser()
    >>> add_config_flag(parser, "seed", default=0)
    >>> parser.parse_args([]).seed, parser.parse_args(["--seed", "3"]).seed
    (0, 3)
  """
  field = config_lib.TrainConfig.__dataclass_fields__[name]
  meta = field.metadata
  kwargs: dict[str, Any] = {"dest": name, "default": None,
                            "help": meta["help"]}
  if field.default is not None:
    default = field.default
    if isinstance(default, bool):
      default = flag(name) if default else "--no-" + flag(name)[2:]
    kwargs["help"] += f" (default: {default})"
  hint = config_lib.type_hint(name)
  if hint is bool or bool in typing.get_args(hint):  # --name / --no-name
    kwargs["action"] = argparse.BooleanOptionalAction
  elif meta.get("parse"):
    parse = meta["parse"]
    what = {int: "an integer", config_lib.parse_amplitude:
            "a positive number or 'ada'", config_lib.parse_tau:
            "a positive number or 'step'"}.get(parse, "a number")
    kwargs["type"] = argument_type(parse, what=what)
  values = config_lib.choices_of(name)
  if values is not None:
    kwargs["choices"] = values
  p.add_argument(flag(name), **{**kwargs, **overrides})


def add_config_flags(p: argparse.ArgumentParser,
                     exclude: Sequence[str] = ()) -> None:
  """One flag per :class:`~bort_jax.experiments.config.TrainConfig` field
  (:func:`add_config_flag`).

  Args:
    p: the parser (or subparser) to add the flags to.
    exclude: fields that get no flag (e.g. the frontier's grid fields).

  Examples:
    >>> import argparse
    >>> from bort_jax.experiments.flags import add_config_flags
    >>> parser = argparse.ArgumentParser()
    >>> add_config_flags(parser)
    >>> args = parser.parse_args(["--gamma", "0.5", "--no-bort-head"])
    >>> args.gamma, args.bort_head, args.epochs
    (0.5, False, None)
  """
  for field in dataclasses.fields(config_lib.TrainConfig):
    if field.name not in exclude:
      add_config_flag(p, field.name)
