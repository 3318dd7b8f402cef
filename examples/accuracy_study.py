"""Does Bort cost or buy accuracy, and how tight is its constraint?

A small, CPU-sized study run through the library's training loop
(:func:`bort_jax.experiments.loop.train`, no subprocesses). Four parts, chosen with
``--part``:

``main``
  MNIST, the ``mlp`` and ``cnn`` models of ``bort-jax train``: SGD vs
  Bort-SGD and AdamW vs Bort-AdamW, over ``--seeds`` seeds.
``adherence``
  MNIST ``mlp``: the l1 mode ``l1-fullrow`` against the l2 mode ``l2-full`` at
  the same γ and ``"ada"`` amplitude, for Bort-AdamW and Bort-SGD.
``gamma``
  MNIST ``mlp``: a γ sweep (default 0, 0.01, 0.1, 1) for Bort-AdamW and
  Bort-SGD.
``fashion``
  Fashion-MNIST ``mlp``: the four optimizers of ``main``.

Every setting is fixed before any run, none is chosen on the test set:
SGD and Bort-SGD use lr 0.05 with momentum 0.9 and no weight decay; AdamW and
Bort-AdamW use lr 1e-3 and weight decay 1e-4 (the library's defaults); every
run uses batch 128, a cosine schedule with a 0.1-epoch linear warmup, and the
main tables' Bort runs use γ = 0.1, mode ``l1-fullrow``, amplitude ``"ada"``
(the library's and the paper's Bort-AdamW setting) for both Bort optimizers.

Reported per setting: the test accuracy after the last epoch and the mean
constraint error ``‖S − cI‖_F / ‖cI‖_F`` over the Bort kernels (what
``train()`` logs: :func:`bort_jax.mean_orthogonality_error` of
:func:`bort_jax.orthogonality_error`, scale-free ``c``), as mean ± sample std
over seeds; the largest ``|cos|`` between two units of a layer; and the
paired (same seed, so same initialisation and data order) accuracy change of
each Bort run against its baseline.

It prints markdown tables and writes ``results.json`` (every run: config,
final metrics, per-layer errors, per-epoch history) and ``tables.md`` into
``--out``; ``results.json`` is rewritten after every run, so an interrupted
study keeps what it finished. Identical configurations in two parts are
trained once.

  python examples/accuracy_study.py --part all --out runs/accuracy_study
  python examples/accuracy_study.py --part gamma --seeds 2 --out /tmp/g
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import shlex
import sys
import time
from typing import Any

import jax
import numpy as np
from flax import nnx

import bort_jax
from bort_jax.experiments import flags
from bort_jax.experiments import data as data_lib
from bort_jax.experiments import loop
from bort_jax.experiments import workdir
from bort_jax.experiments.config import TrainConfig

PARTS = ("main", "adherence", "gamma", "fashion")
OUT_FILES = ("results.json", "tables.md")

#: Learning rates fixed per optimizer (never tuned on the test set).
LEARNING_RATE = {"sgd": 0.05, "bort-sgd": 0.05, "adamw": 1e-3,
                 "bort-adamw": 1e-3}
#: The Bort setting of the main and Fashion-MNIST tables, fixed up front.
MAIN_GAMMA = 0.1
MAIN_MODE = "l1-fullrow"
AMPLITUDE = "ada"
BATCH_SIZE = 128
WARMUP_EPOCHS = 0.1
PAIRS = (("sgd", "bort-sgd"), ("adamw", "bort-adamw"))


# ---------------------------------------------------------------------------
# Arguments.


def _float_list(text: str) -> list[float]:
  try:
    values = [float(v) for v in text.split(",") if v.strip()]
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected numbers like 0,0.1, got {text!r}")
  if not values or any(not math.isfinite(v) or v < 0 for v in values):
    raise argparse.ArgumentTypeError(f"expected finite numbers >= 0, got {text!r}")
  return values


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
      description=__doc__.split("\n")[0],
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--part", choices=PARTS + ("all",), default="all",
                 help="which experiments to run")
  p.add_argument("--out", required=True, help="output directory")
  p.add_argument("--overwrite", action="store_true",
                 help="write into a non-empty --out (replaces only "
                 + " and ".join(OUT_FILES) + ")")
  p.add_argument("--seeds", type=flags.positive_int, default=3,
                 help="seeds 0 .. N-1 per setting")
  p.add_argument("--epochs", type=flags.positive_int, default=3,
                 help="epochs of every MLP run (full 60k training set)")
  p.add_argument("--cnn-epochs", type=flags.positive_int, default=2,
                 help="epochs of every CNN run")
  p.add_argument("--cnn-train-limit", type=flags.positive_int, default=20000,
                 help="CNN runs train on the first N training images")
  p.add_argument("--train-limit", type=flags.positive_int, default=None,
                 help="cap every run's training set (smoke tests)")
  p.add_argument("--gammas", type=_float_list, default=[0.0, 0.01, 0.1, 1.0],
                 help="γ values of the gamma part")
  p.add_argument("--gamma-optimizers", default="bort-adamw,bort-sgd",
                 help="optimizers of the gamma and adherence parts")
  p.add_argument("--offline", action="store_true",
                 help="never download MNIST")
  args = p.parse_args(argv)
  opts = [o.strip() for o in args.gamma_optimizers.split(",") if o.strip()]
  bad = [o for o in opts if o not in ("bort-sgd", "bort-adamw")]
  if bad or not opts:
    p.error(f"--gamma-optimizers takes bort-sgd and/or bort-adamw, got "
            f"{args.gamma_optimizers!r}")
  args.gamma_optimizers = opts
  return args


# ---------------------------------------------------------------------------
# Settings.


def config_for(args, *, data: str, model: str, optimizer: str, seed: int,
               gamma: float = MAIN_GAMMA, mode: str = MAIN_MODE
               ) -> TrainConfig:
  """The one place a run's configuration is made (so parts share runs)."""
  epochs = args.cnn_epochs if model == "cnn" else args.epochs
  limit = args.cnn_train_limit if model == "cnn" else None
  if args.train_limit is not None:
    limit = min(limit or args.train_limit, args.train_limit)
  bort = optimizer.startswith("bort-")
  # Bort's fields only for Bort optimizers (the config refuses them else).
  bort_fields = dict(mode=mode, amplitude=AMPLITUDE, gamma=gamma) if bort else {}
  return TrainConfig(
      data=data, model=model, optimizer=optimizer, **bort_fields,
      learning_rate=LEARNING_RATE[optimizer], momentum=0.9,
      weight_decay=None,  # sgd/bort-sgd: 0; adamw/bort-adamw: 1e-4
      epochs=epochs, batch_size=BATCH_SIZE, warmup=WARMUP_EPOCHS,
      seed=seed, train_limit=limit)


def plan(args, parts) -> list[dict]:
  """The tables to make: each a title and rows of (label, configs per seed)."""
  seeds = range(args.seeds)
  tables = []

  def row(label, **kw):
    return {"label": label, "key": dict(kw),
            "configs": [config_for(args, seed=s, **kw) for s in seeds]}

  def optimizer_table(title, data, model):
    return {"part": "main" if data == "mnist" else "fashion", "kind": "pair",
            "title": title, "data": data, "model": model,
            "rows": [row(o, data=data, model=model, optimizer=o)
                     for pair in PAIRS for o in pair]}

  if "main" in parts:
    tables.append(optimizer_table("MNIST, mlp", "mnist", "mlp"))
    tables.append(optimizer_table("MNIST, cnn", "mnist", "cnn"))
  if "adherence" in parts:
    rows = [row(f"{o} {m}", data="mnist", model="mlp", optimizer=o, mode=m)
            for o in args.gamma_optimizers for m in ("l1-fullrow", "l2-full")]
    tables.append({"part": "adherence", "kind": "adherence",
                   "title": f"MNIST, mlp: l1-fullrow vs l2-full at γ = "
                   f"{MAIN_GAMMA}, amplitude \"ada\"", "rows": rows})
  if "gamma" in parts:
    for o in args.gamma_optimizers:
      rows = [row(f"γ = {g:g}", data="mnist", model="mlp", optimizer=o,
                  gamma=g) for g in args.gammas]
      tables.append({"part": "gamma", "kind": "gamma",
                     "title": f"MNIST, mlp, {o} ({MAIN_MODE}, \"ada\"): γ "
                     "sweep", "rows": rows})
  if "fashion" in parts:
    tables.append(optimizer_table("Fashion-MNIST, mlp", "fashion_mnist",
                                  "mlp"))
  return tables


# ---------------------------------------------------------------------------
# Running.


def _finite(x) -> bool:
  return x is not None and math.isfinite(x)


def run_one(config: TrainConfig, dataset) -> dict:
  """Trains one configuration; returns its final numbers and history."""
  start = time.perf_counter()
  try:
    result = loop.train(config, dataset=dataset)
  except loop.DivergedError as e:
    fields = ("test_accuracy", "test_loss", "train_accuracy", "train_loss",
              "constraint_error", "max_cosine", "norm_spread",
              "init_constraint_error", "step_time_ms", "steps")
    return {"config": dataclasses.asdict(config), **dict.fromkeys(fields),
            "wall_time_s": time.perf_counter() - start, "diverged": True,
            "error": str(e), "per_layer": {}, "history": []}
  wall = time.perf_counter() - start
  first, last = result.history[0], result.history[-1]
  errors = bort_jax.orthogonality_error(nnx.state(result.model, nnx.Param))
  per_layer = {path: {f: float(v) for f, v in e._asdict().items()}
               for path, e in errors.items()}
  return {
      "config": dataclasses.asdict(config),
      "test_accuracy": last["test_accuracy"],
      "test_loss": last["test_loss"],
      "train_accuracy": last["train_accuracy"],
      "train_loss": last["train_loss"],
      "constraint_error": last["constraint_error"],
      "max_cosine": last["max_cosine"],
      "norm_spread": last["norm_spread"],
      "init_constraint_error": first["constraint_error"],
      "step_time_ms": last["step_time_ms"],
      "steps": result.step,
      "wall_time_s": wall,
      "diverged": not (_finite(last["test_loss"])
                       and _finite(last["constraint_error"])),
      "per_layer": per_layer,
      "history": result.history,
  }


def _key(config: TrainConfig) -> str:
  return json.dumps(dataclasses.asdict(config), sort_keys=True)


# ---------------------------------------------------------------------------
# Tables.


def _stats(values):
  """Mean, sample std (0 for one value) and count of the finite values."""
  vals = [v for v in values if _finite(v)]
  if not vals:
    return float("nan"), float("nan"), 0
  arr = np.asarray(vals, np.float64)
  std = float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
  return float(arr.mean()), std, len(arr)


def _fmt(x: float, digits: int) -> str:
  """Fixed point, or two significant digits when that would print 0.000."""
  if x != 0 and abs(x) < 10 ** -digits:
    return f"{x:.1e}"
  return f"{x:.{digits}f}"


def _pm(values, scale=1.0, digits=2, n_total=None):
  mean, std, n = _stats(values)
  if n == 0:
    return "diverged (NaN)"
  mean_text = _fmt(scale * mean, digits)
  std_text = (f"{scale * std:.1e}" if "e" in mean_text
              else f"{scale * std:.{digits}f}")
  text = f"{mean_text} ± {std_text}"
  n_total = len(values) if n_total is None else n_total
  if n < n_total:
    text += f" ({n_total - n}/{n_total} non-finite)"
  return text


def _col(records, field):
  return [r[field] for r in records]


def render_table(table: dict, results: dict, command: str) -> str:
  kind = table["kind"]
  lines = [f"### {table['title']}", "", f"Command: `{command}`", ""]
  rows = [(r, [results[_key(c)] for c in r["configs"]])
          for r in table["rows"]]
  n_seeds = len(rows[0][1]) if rows else 0
  c0 = rows[0][0]["configs"][0] if rows else None
  if c0 is not None:
    limit = c0.train_limit or "all 60000"
    lines += [f"{n_seeds} seeds; {c0.epochs} epochs; training images: "
              f"{limit}; batch {c0.batch_size}; test set: all 10000.", ""]
  head = ["setting", "γ", "lr", "test acc (%)"]
  if kind == "pair":
    head.append("Δ acc vs baseline (pp, paired)")
  head += ["final train loss", "constraint error", r"max \|cos\|",
           "init constraint", "ms/step"]
  lines += ["| " + " | ".join(head) + " |",
            "|" + "|".join("---" for _ in head) + "|"]
  by_label = {r["label"]: recs for r, recs in rows}
  for r, recs in rows:
    cfg = r["configs"][0]
    cells = [r["label"], f"{cfg.gamma:g}" if cfg.optimizer.startswith("bort")
             else "–", f"{cfg.learning_rate:g}",
             _pm(_col(recs, "test_accuracy"), 100, 2)]
    if kind == "pair":
      base = next((p for p, b in PAIRS if b == r["label"]), None)
      if base is None:
        cells.append("–")
      else:
        diffs = [a["test_accuracy"] - b["test_accuracy"]
                 for a, b in zip(recs, by_label[base])]
        mean, std, _ = _stats(diffs)
        cells.append(f"{100 * mean:+.2f} ± {100 * std:.2f}")
    cells += [_pm(_col(recs, "train_loss"), 1, 3),
              _pm(_col(recs, "constraint_error"), 1, 3),
              _pm(_col(recs, "max_cosine"), 1, 3),
              _pm(_col(recs, "init_constraint_error"), 1, 3),
              f"{_stats(_col(recs, 'step_time_ms'))[0]:.1f}"]
    lines.append("| " + " | ".join(cells) + " |")
  if kind == "pair":
    lines += ["", render_layers(rows)]
  return "\n".join(lines) + "\n"


def render_layers(rows) -> str:
  """Per-layer constraint error (seed mean) at the end of training."""
  layers = list(rows[0][1][0]["per_layer"])
  head = ["layer"] + [r["label"] for r, _ in rows]
  lines = ["Per-layer constraint error at the end (mean over seeds):", "",
           "| " + " | ".join(head) + " |",
           "|" + "|".join("---" for _ in head) + "|"]
  for layer in layers:
    cells = [f"`{layer}`"]
    for _, recs in rows:
      mean, _, n = _stats([rec["per_layer"].get(layer, {}).get(
          "constraint_error") for rec in recs])
      cells.append(_fmt(mean, 3) if n else "NaN")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


# ---------------------------------------------------------------------------


def environment() -> dict:
  return {
      "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
      "jax": jax.__version__,
      "bort_jax": bort_jax.__version__,
      "backend": jax.default_backend(),
      "devices": [str(d) for d in jax.devices()],
      "cpu_count": os.cpu_count(),
      "platform": platform.platform(),
      "processor": platform.processor() or platform.machine(),
      "python": platform.python_version(),
  }


def main(argv=None) -> int:
  args = parse_args(argv)
  with workdir.open_script_output(args.out, kind="accuracy_study",
                                  files=OUT_FILES,
                                  overwrite=args.overwrite) as folder:
    return _study(args, argv, folder)


def _study(args, argv, folder) -> int:
  parts = PARTS if args.part == "all" else (args.part,)
  command = "python examples/accuracy_study.py " + " ".join(
      shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
  tables = plan(args, parts)
  configs = {}
  for t in tables:
    for r in t["rows"]:
      for c in r["configs"]:
        configs.setdefault(_key(c), c)
  # Runs grouped so that seeds of one setting follow each other (one
  # compilation of the jitted step serves them all).
  order = list(configs.values())
  print(f"accuracy_study: {len(order)} runs for parts {', '.join(parts)}",
        file=sys.stderr, flush=True)

  datasets: dict[str, Any] = {}
  results: dict[str, dict] = {}
  env = environment()
  study_start = time.perf_counter()

  def dump(done: bool):
    payload = {
        "command": command, "environment": env, "finished": done,
        "wall_time_s": time.perf_counter() - study_start,
        "settings": {"learning_rate": LEARNING_RATE, "main_gamma": MAIN_GAMMA,
                     "main_mode": MAIN_MODE, "amplitude": AMPLITUDE,
                     "batch_size": BATCH_SIZE, "warmup_epochs": WARMUP_EPOCHS,
                     "seeds": args.seeds, "mlp_epochs": args.epochs,
                     "cnn_epochs": args.cnn_epochs,
                     "cnn_train_limit": args.cnn_train_limit,
                     "train_limit": args.train_limit},
        "tables": [{"part": t["part"], "title": t["title"],
                    "rows": [{"label": r["label"],
                              "runs": [_key(c) for c in r["configs"]]}
                             for r in t["rows"]]} for t in tables],
        "runs": results,
    }
    folder.write_json("results.json", payload)

  for i, config in enumerate(order, 1):
    if config.data not in datasets:
      datasets[config.data] = data_lib.load_splits(
          config.data, download=not args.offline)
    rec = run_one(config, datasets[config.data])
    results[_key(config)] = rec
    elapsed = time.perf_counter() - study_start
    print(f"[{i}/{len(order)} {elapsed / 60:5.1f} min] {config.data} "
          f"{config.model} {config.optimizer}"
          f"{'' if config.gamma is None else f' {config.mode} γ={config.gamma:g}'}"
          f" seed={config.seed}: "
          f"acc {_pm([rec['test_accuracy']], 100, 2)}%  "
          f"constraint {_pm([rec['constraint_error']], 1, 3)}  "
          f"({rec['wall_time_s']:.0f} s)", file=sys.stderr, flush=True)
    dump(False)
  dump(True)

  total = time.perf_counter() - study_start
  text = [f"Date: {env['date']}; JAX {env['jax']} ({env['backend']}, "
          f"{env['cpu_count']} CPUs); study wall time {total / 60:.1f} min.",
          ""]
  text += [render_table(t, results, command) for t in tables]
  markdown = "\n".join(text)
  folder.write_text("tables.md", markdown)
  print(markdown)
  return 0


if __name__ == "__main__":
  sys.exit(main())
