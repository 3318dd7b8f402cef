"""The ``bort-jax`` command: ``train`` one model, or run the ``demo``.

``bort-jax train`` trains a classifier with any optimizer, with or without
Bort, and writes metrics and resumable checkpoints (see
:mod:`bort_jax.experiments.loop`); its flags are generated from the fields of
:class:`~bort_jax.experiments.config.TrainConfig`, one per field.
``bort-jax demo`` trains an AdamW baseline and Bort-AdamW (see
:mod:`bort_jax.experiments.demo`); ``bort-jax recipes`` lists the named
recipes of ``train --recipe``.

Only the standard library is imported here, and the parser is built without
JAX (from the config's fields and the jax-free
:mod:`bort_jax.experiments.choices`), so that ``--help`` answers at once:
:func:`main` first checks that the ``app`` extra is installed, and says which
one to install if not, before it imports JAX or touches a file. Expected
errors (a bad flag or value, a refused folder, bad data, a diverged run)
print one line naming the subcommand (``bort-jax train: error: ...``) and
exit with status 2, before anything is written where they can be; a run
stopped by a signal saves a checkpoint and exits with 130 (SIGINT, Ctrl-C)
or 143 (SIGTERM); ``--debug`` shows the traceback instead.

Examples:
  bort-jax train --data mnist --model cnn --optimizer bort-adamw \\
      --mode l1-fullrow --amplitude ada --gamma 0.1 --lr 1e-3 --epochs 5 \\
      --batch-size 128 --warmup 0.5 --seed 0 --out runs/cnn-bort
  bort-jax train --out runs/cnn-bort --resume
  bort-jax recipes
  bort-jax demo --out bort-demo
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import sys
import warnings
from typing import Sequence

#: The ``app`` extra: (module, package) pairs that ``bort-jax`` needs.
APP_REQUIREMENTS = (("orbax.checkpoint", "orbax-checkpoint"),
                    ("tqdm", "tqdm"), ("sklearn", "scikit-learn"),
                    ("matplotlib", "matplotlib"),
                    ("tensorboardX", "tensorboardX"))

_PROG = "bort-jax"


def missing_requirements() -> list[str]:
  """The packages of the ``app`` extra that are not installed."""
  missing = []
  for module, package in APP_REQUIREMENTS:
    try:
      found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a missing parent package
      found = False
    if not found:
      missing.append(package)
  return missing


class _Parser(argparse.ArgumentParser):
  """An argument parser whose errors are one line (no usage block)."""

  def error(self, message: str):
    self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _Once(argparse.Action):
  """Stores a flag's value, and refuses the flag given a second time."""

  def __call__(self, parser, namespace, values, option_string=None):
    previous = getattr(namespace, self.dest, None)
    if previous is not None:
      parser.error(f"{option_string} given twice ({previous} and {values}); "
                   f"give one {option_string}, and override its fields with "
                   "flags")
    setattr(namespace, self.dest, values)


def build_parser() -> argparse.ArgumentParser:
  """The ``bort-jax`` argument parser (``train`` and ``demo`` subcommands).

  Returns:
    An :class:`argparse.ArgumentParser`.

  Examples:
    >>> from bort_jax.experiments.cli import build_parser
    >>> args = build_parser().parse_args(
    ...     ["train", "--optimizer", "bort-lion", "--gamma", "0.1",
    ...      "--out", "runs/x"])
    >>> args.command, args.optimizer, args.gamma
    ('train', 'bort-lion', 0.1)
  """
  import bort_jax  # no JAX: the package loads its names on first use
  from bort_jax.experiments import demo
  from bort_jax.experiments import flags
  from bort_jax.experiments import launch
  from bort_jax.experiments import recipes

  parser = _Parser(
      prog=_PROG,
      description="Bort: bounded orthogonal optimizers for JAX (train and "
      "compare models, and the paper's demo).")
  parser.add_argument("--version", action="version",
                      version=f"{_PROG} {bort_jax.__version__}",
                      help="show the version and exit")
  sub = parser.add_subparsers(dest="command",
                              metavar="{train,frontier,demo,recipes}")
  sub.required = True
  train = sub.add_parser(
      "train", help="train one model (metrics, checkpoints, resume)",
      description="Train a classifier with or without Bort; writes "
      "config.json, metrics.json/.csv and checkpoints/ to --out.")
  flags.add_config_flags(train)
  launch.add_arguments(train)
  train.add_argument(
      "--recipe", choices=tuple(recipes.RECIPES), default=None, action=_Once,
      help=f"start from a named recipe ({_PROG} recipes lists them); flags "
      "override it (with --optimizer, give --lr too)")
  train.add_argument("--out", required=True,
                     help="run folder (config, metrics, checkpoints)")
  group = train.add_mutually_exclusive_group()
  group.add_argument("--resume", action="store_true",
                     help="continue the run saved in --out")
  group.add_argument("--overwrite", action="store_true",
                     help="start over in an existing run folder (deletes "
                     "its checkpoints and metrics only)")
  from bort_jax.experiments import frontier
  frontier_parser = sub.add_parser(
      "frontier", help="sweep gamma x mode x placement x amplitude, select "
      "on validation, write the accuracy-explainability frontier",
      description=frontier.__doc__.splitlines()[0])
  flags.add_config_flags(frontier_parser, exclude=frontier.GRID_FIELDS)
  frontier.add_arguments(frontier_parser)
  demo_parser = sub.add_parser(
      "demo", help="AdamW vs Bort-AdamW on MNIST: table, figures, results",
      description=demo.DESCRIPTION)
  demo.add_arguments(demo_parser)
  sub.add_parser(
      "recipes", help="list the named recipes of train --recipe",
      description="One line per recipe of train --recipe: its name and what "
      "it is.")
  for p in (train, frontier_parser, demo_parser):
    p.add_argument("--offline", action="store_true",
                   help="never download (MNIST is otherwise fetched)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar")
    p.add_argument("--debug", action="store_true",
                   help="show the traceback of an error")
  return parser


def _config_from_args(parser: argparse.ArgumentParser, args):
  """The run's config: on ``--resume`` the saved one, with the explicit
  flags of fields a resume may change (:data:`config.RESUMABLE`), else the
  flags'."""
  from bort_jax.experiments import config as config_lib
  from bort_jax.experiments import flags
  from bort_jax.experiments import optimizers
  from bort_jax.experiments import train_folder
  explicit = {k: v for k, v in vars(args).items()
              if k in config_lib.field_names() and v is not None}
  if args.resume:
    if args.recipe is not None:
      raise config_lib.ConfigError(
          "--recipe starts a new run and --resume continues the saved one; "
          "drop --recipe (the saved config already holds the recipe's "
          "values).")
    saved = train_folder.load_config(args.out)
    resumed = dataclasses.replace(saved, **{
        k: v for k, v in explicit.items() if k in config_lib.RESUMABLE})
    differ = {k: (getattr(saved, k), v) for k, v in explicit.items()
              if getattr(resumed, k) != v}
    if differ:
      may = ", ".join(map(flags.flag, config_lib.RESUMABLE))
      raise config_lib.ConfigError(
          "--resume continues the saved run; these arguments differ from it "
          f"(saved vs given): {config_lib.describe_differences(differ)}. "
          f"Drop them (a resume may change only {may}), or start a new run.")
    return resumed
  values = {}
  if args.recipe is not None:
    from bort_jax.experiments import recipes
    values = recipes.recipe(args.recipe)
    recipes.check_override(args.recipe, explicit)
  weight = {**values, **explicit}.get(
      "dbort_weight", config_lib.TrainConfig.dbort_weight)
  config_lib.check_dbort_only(explicit, weight, flags.flag)
  optimizer = explicit.get("optimizer", values.get(
      "optimizer", config_lib.TrainConfig.optimizer))
  config_lib.check_bort_only(
      optimizer, [f for f in config_lib.BORT_FIELDS if f in explicit],
      flags.flag)
  if not optimizers.is_bort(optimizer):
    # A recipe's baseline: the same run without Bort (e.g. SGD with the
    # recipe's learning rate and weight decay).
    values = {k: v for k, v in values.items()
              if k not in config_lib.BORT_FIELDS}
  return config_lib.TrainConfig(**{**values, **explicit})


def _train_command(parser: argparse.ArgumentParser, args) -> int:
  from bort_jax.experiments import errors
  from bort_jax.experiments import distributed
  from bort_jax.experiments import loop
  from bort_jax.experiments import optimizers
  from bort_jax.experiments import workdir
  try:  # every check before the wait for the other processes
    config = _config_from_args(parser, args)
  except (ValueError, TypeError, errors.ExperimentError) as e:
    if args.debug:
      raise
    _fail(str(e), 2, f"{_PROG} train")
  above = workdir.output_above(args.out)
  if above is not None:
    _fail(f"{args.out!r} lies inside {str(above[0])!r}, a {above[1]} "
          "output, which records the runs under it; a run trained there by "
          "hand would leave that record stale. Choose an --out outside it.",
          2, f"{_PROG} train")
  parallel = distributed.initialize(args)  # before anything touches a device

  def header():
    # Called by the loop once the folder, the data and a resumed run's
    # checkpoint are accepted: a refused run prints its error line alone.
    if parallel is not None and not parallel.primary:
      return
    print(f"{_PROG} train: {config.model} on {config.data} with "
          f"{config.optimizer}, lr {config.learning_rate:g} -> {args.out}",
          flush=True)
    if optimizers.is_bort(config.optimizer):
      line, notes = optimizers.strength_report(config)
      print(line, flush=True)
      for note in notes:
        print(f"{_PROG} train: {note}", flush=True)

  result = loop.train(
      config, args.out, resume=args.resume, overwrite=args.overwrite,
      parallel=parallel,
      download=not args.offline, progress=not args.no_progress,
      log=lambda line: print(line, flush=True), on_start=header)
  if not result.finished:
    from bort_jax.experiments import signals
    print(f"Stopped by {result.stopped_by} at step {result.step}; a "
          f"checkpoint is saved. Continue with: {_PROG} train --out "
          f"{args.out} --resume", file=sys.stderr)
    return signals.exit_status(result.stopped_by)  # 130 SIGINT, 143 SIGTERM
  if parallel is None or parallel.primary:  # the process that wrote them
    last = result.history[-1]
    print(f"Done: test accuracy {last['test_accuracy']:.4f}; metrics in "
          f"{os.path.join(args.out, 'metrics.json')}")
  return 0


def _command(parser: argparse.ArgumentParser, args) -> int:
  if args.command == "recipes":
    from bort_jax.experiments import recipes
    print(recipes.describe())
    return 0
  if args.command == "train":
    return _train_command(parser, args)
  if args.command == "frontier":
    from bort_jax.experiments import config as config_lib
    from bort_jax.experiments import frontier
    base = {k: v for k, v in vars(args).items()
            if k in config_lib.field_names() and v is not None}
    return frontier.command(args, base)
  from bort_jax.experiments import demo
  return demo.run(args)


def _fail(message: str, status: int, prog: str = _PROG):
  first = (message.strip().splitlines() or [""])[0]
  print(f"{prog}: error: {first}", file=sys.stderr)
  raise SystemExit(status)


def main(argv: Sequence[str] | None = None) -> int:
  """Runs ``bort-jax`` with ``argv`` (default: the command line).

  Args:
    argv: the arguments, without the program name.

  Returns:
    0 on success; when a run was stopped by a signal (its checkpoint is
    saved), 130 for SIGINT (Ctrl-C) and 143 for SIGTERM.

  Raises:
    SystemExit: status 2 after one line (``bort-jax <command>: error: ...``)
      for a missing extra, a bad argument or an expected error; 130 for a
      Ctrl-C outside a run's steps.
  """
  argv = list(sys.argv[1:] if argv is None else argv)
  debug = "--debug" in argv
  prog = _PROG
  missing = missing_requirements()
  if missing:
    _fail(f"the application needs the app extra ({', '.join(missing)} "
          'missing): pip install "bort_jax[app]"', 2)
  try:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    prog = f"{_PROG} {args.command}"
    if unknown:  # named by the subcommand they were given to
      _Parser(prog=prog).error(
          f"unrecognized arguments: {' '.join(unknown)}")
    # A warning is one line, on stdout with the run's other notes: stderr
    # carries the one line of an error and nothing else.
    with warnings.catch_warnings():
      warnings.showwarning = lambda message, *_, **__: print(
          f"{prog}: warning: {message}", flush=True)
      return _command(parser, args)
  except KeyboardInterrupt:
    if debug:
      raise
    _fail("interrupted (Ctrl-C)", 130, prog)
  except SystemExit:
    raise
  except BaseException as e:
    if not debug and isinstance(e, RuntimeError) and "RESOURCE_EXHAUSTED" in (
        str(e)):  # XLA's out of memory: one line, not 70 of XLA's stack
      _fail("out of memory (XLA: RESOURCE_EXHAUSTED); lower --width, "
            "--batch-size or --eval-batch-size, and start again with "
            "--overwrite.", 2, prog)
    from bort_jax.experiments import errors
    if debug or not isinstance(e, (errors.ExperimentError, OSError)):
      raise
    if isinstance(e, OSError):
      _fail(f"{e.strerror or e}"
            + (f": {e.filename}" if getattr(e, "filename", None) else ""), 2,
            prog)
    _fail(str(e), 2, prog)


if __name__ == "__main__":
  sys.exit(main())
