"""One jitted optimizer step: Bort-AdamW vs optax.adamw on real model shapes.

For the parameter sets of ResNet-50, DeiT-S and ViT-B/16 (Flax layout) and
several Bort configurations, prints in one run: the step times and their ratio,
the correction's own time, its arithmetic (GFLOP), its achieved rate and that
rate as a fraction of a large matmul measured on the same machine.

Every function of a parameter set (``optax.adamw``, a second, separately
jitted ``optax.adamw``, ``optax.identity``, and each configuration's step
and correction alone) is timed in turn, repeat by repeat, and each ratio is
the median of the per-repeat ratios: on a shared machine, load that drifts
between repeats falls on both sides of a ratio alike. The second
``optax.adamw`` ("A/A") is the noise floor: it runs the very same program,
so its ratio is 1 up to the machine's noise.

    python benchmarks/step_overhead.py                  # CPU defaults
    python benchmarks/step_overhead.py --reduced        # + bf16 Gram configs
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent))
import param_sets  # noqa: E402
import timing  # noqa: E402

import bort_jax  # noqa: E402
from bort_jax.experiments import flags  # noqa: E402

CONFIGS = {
    "l2-full c=1": dict(mode="l2-full", amplitude=1.0),
    "l1-fullrow ada": dict(mode="l1-fullrow", amplitude="ada"),
    "l2-row c=1": dict(mode="l2-row", amplitude=1.0),
}
REDUCED = {
    "l2-full c=1 bf16-gram": dict(
        mode="l2-full", amplitude=1.0,
        kernel_options=bort_jax.KernelOptions(gram_dtype=jnp.bfloat16)),
    "l1-fullrow ada bf16-gram": dict(
        mode="l1-fullrow", amplitude="ada",
        kernel_options=bort_jax.KernelOptions(gram_dtype=jnp.bfloat16)),
}


def steps_fn(tx, steps: int):
  """``steps`` optimizer steps in one jitted call (a device-side loop), so
  that host dispatch of the parameter tree is not what gets timed."""
  def run(params, state, grads):
    def step(_, carry):
      params, state = carry
      updates, state = tx.update(grads, state, params)
      return optax.apply_updates(params, updates), state
    return jax.lax.fori_loop(0, steps, step, (params, state))
  return jax.jit(run)


def corrections_fn(config: dict, steps: int):
  """``steps`` evaluations of the correction alone, chained on device."""
  options = config.get("kernel_options") or bort_jax.KernelOptions()

  def run(params):
    def step(_, params):
      deltas = bort_jax.tree_correction(
          params, config["mode"], config["amplitude"], kernel_options=options)
      return jax.tree.map(lambda p, d: p if d is None else p - 1e-6 * d,
                          params, deltas, is_leaf=lambda x: x is None)
    return jax.lax.fori_loop(0, steps, step, params)
  return jax.jit(run)


def interleaved(fns: dict, repeats: int, warmup: int = 2) -> dict:
  """``name -> [seconds per call]``, the calls taken in turn, repeat by
  repeat. ``fns`` maps a name to ``(fn, args)``."""
  for fn, args in fns.values():
    for _ in range(warmup):
      jax.block_until_ready(fn(*args))
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, (fn, args) in fns.items():
      start = time.perf_counter()
      jax.block_until_ready(fn(*args))
      times[name].append(time.perf_counter() - start)
  return times


def paired_ratio(times: list[float], reference: list[float]) -> float:
  """The median over repeats of ``times[r] / reference[r]``."""
  return statistics.median(t / r for t, r in zip(times, reference))


def measure(set_name: str, configs: dict, repeats: int, matmul_rate: float,
            steps: int):
  params = param_sets.materialise(param_sets.PARAM_SETS[set_name]())
  grads = param_sets.materialise(param_sets.PARAM_SETS[set_name](), seed=1)
  fns = {}
  for name in ("adamw", "adamw A/A"):
    base = optax.adamw(1e-3, weight_decay=1e-4)
    fns[name] = (steps_fn(base, steps), (params, base.init(params), grads))
  identity = optax.identity()
  fns["identity"] = (steps_fn(identity, steps),
                     (params, identity.init(params), grads))
  for name, config in configs.items():
    tx = bort_jax.bort_adamw(1e-3, weight_decay=1e-4, gamma=0.1, **config)
    fns[name] = (steps_fn(tx, steps), (params, tx.init(params), grads))
    fns[name, "correction"] = (corrections_fn(config, steps), (params,))
  times = interleaved(fns, repeats)
  per_step = {name: statistics.median(t) / steps for name, t in times.items()}
  base_time, base_times = per_step["adamw"], times["adamw"]
  rows = []
  for name, config in configs.items():
    bort_time = per_step[name]
    correction_time = per_step[name, "correction"]
    flop = param_sets.correction_flop(params, config["mode"])
    ratio = paired_ratio(times[name], base_times)
    rows.append(dict(
        set=set_name, config=name, adamw_ms=1e3 * base_time,
        bort_ms=1e3 * bort_time, ratio=ratio,
        aa_ratio=paired_ratio(times["adamw A/A"], base_times),
        correction_ms=1e3 * correction_time,
        identity_ms=1e3 * per_step["identity"],
        added_ms=1e3 * (ratio - 1) * base_time, gflop=flop / 1e9,
        gflops=flop / correction_time / 1e9,
        of_matmul=flop / correction_time / matmul_rate,
        added_vs_floor=(ratio - 1) * base_time / (flop / matmul_rate)))
  return rows


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sets", default="resnet50,deit_s,vit_b16")
  parser.add_argument("--configs", default=",".join(CONFIGS),
                      help="comma-separated subset of: "
                      + ", ".join([*CONFIGS, *REDUCED]))
  parser.add_argument("--reduced", action="store_true",
                      help="also run the reduced-precision (bf16) Gram")
  parser.add_argument("--repeats", type=flags.positive_int, default=5)
  parser.add_argument("--matmul-size", type=flags.positive_int, default=None)
  parser.add_argument("--steps-per-call", type=flags.positive_int,
                      default=None,
                      help="steps per timed call (default: 10 on GPU, 1 on "
                      "CPU)")
  parser.add_argument("--json", type=Path, default=None)
  args = parser.parse_args(argv)

  all_configs = {**CONFIGS, **REDUCED}
  for flag, given, known in (("--configs", args.configs, all_configs),
                             ("--sets", args.sets, param_sets.PARAM_SETS)):
    unknown = [name for name in given.split(",") if name not in known]
    if unknown:  # a KeyError traceback
      parser.error(f"unknown {flag} {unknown}; choose from "
                   f"{', '.join(known)}")
  configs = {name: all_configs[name] for name in args.configs.split(",")}
  if args.reduced:
    configs.update(REDUCED)
  gpu = jax.default_backend() != "cpu"
  size = args.matmul_size or (8192 if gpu else 2048)
  steps = args.steps_per_call or (10 if gpu else 1)
  rate = timing.matmul_flops_per_second(size)
  print(f"device {timing.device_name()}  jax {jax.__version__}  "
        f"f32 matmul {size}^3 at default precision: {rate / 1e9:.1f} GFLOP/s; "
        f"{steps} step(s) per timed call")
  print("(ratio and A/A: medians of per-repeat ratios to optax.adamw, the "
        "calls interleaved; A/A times optax.adamw again: its distance from 1 "
        "is the noise)")
  rows = []
  for set_name in args.sets.split(","):
    rows += measure(set_name, configs, args.repeats, rate, steps)
  header = ("| set | config | adamw ms | bort ms | ratio | A/A | "
            "correction ms | identity ms | GFLOP | GFLOP/s | of matmul | "
            "added/floor |")
  print(header)
  print("|---" * (header.count("|") - 1) + "|")
  for r in rows:
    print(f"| {r['set']} | {r['config']} | {r['adamw_ms']:.2f} | "
          f"{r['bort_ms']:.2f} | {r['ratio']:.2f} | {r['aa_ratio']:.2f} | "
          f"{r['correction_ms']:.2f} | {r['identity_ms']:.2f} | "
          f"{r['gflop']:.1f} | {r['gflops']:.1f} | {r['of_matmul']:.0%} | "
          f"{r['added_vs_floor']:.2f} |")
  if args.json:
    args.json.write_text(json.dumps(
        dict(device=timing.device_name(), matmul_gflops=rate / 1e9, rows=rows),
        indent=1))


if __name__ == "__main__":
  main()
