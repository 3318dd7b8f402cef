"""Eager calls of the explain tools: the first (compiles) and the next ones.

Each tool of :mod:`bort_jax.explain` whose work is a ``lax.map`` or
``lax.fori_loop`` is called eagerly with an ``nnx.Module``, as in a notebook,
on fresh images each time: once (it compiles), then ``--repeats`` more times
(median). Beside each, the same call given an object that is not an
``nnx.Module`` (the model's call and layers, as a ``logits_fn`` closure would
be), which compiles on every call, and the number of XLA compilations that the
repeated calls of each kind triggered.

    python benchmarks/explain_eager.py               # an untrained 8×8 CNN
    python benchmarks/explain_eager.py --size 28 --batch 32
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import timing  # noqa: E402

from bort_jax import explain  # noqa: E402
from bort_jax.models import InvertibleCNN  # noqa: E402


class _Compiles(logging.Handler):
  """Counts JAX's "Compiling …" log lines."""

  def __init__(self):
    super().__init__(logging.DEBUG)
    self.count = 0

  def emit(self, record):
    self.count += "Compiling" in record.getMessage()


def _tools(batch: int, size: int, classes: int):
  labels = jnp.arange(batch) % classes
  saliency = jnp.ones((batch, size, size))
  per_step = max(1, size * size // 8)
  return {
      "backtrack_saliency": lambda m, x: explain.backtrack_saliency(
          m, x, 3, top_k=4),
      "integrated_gradients": lambda m, x: explain.integrated_gradients(
          m, x, steps=8),
      "fgsm_l2": lambda m, x: explain.fgsm_l2(m, x, labels, 0.5),
      "pgd_l2": lambda m, x: explain.pgd_l2(m, x, labels, 0.5, steps=5),
      "latent_edit_attack": lambda m, x: explain.latent_edit_attack(
          m, x, labels, layer=1, epsilon=0.5),
      "deletion_auc": lambda m, x: explain.deletion_auc(m, x, saliency,
                                                        per_step),
      "insertion_auc": lambda m, x: explain.insertion_auc(m, x, saliency,
                                                          per_step),
  }


class _Plain:
  """The model's call and layers, in an object that is not an ``nnx.Module``."""

  def __init__(self, model):
    self.layers = list(model.layers)
    self._model = model

  def __call__(self, x):
    return self._model(x)


def _timed(fn, images, compiles):
  """(first call's seconds, median of the others, compilations in those)."""
  start = time.perf_counter()
  jax.block_until_ready(fn(images[0]))
  first = time.perf_counter() - start
  compiles.count = 0
  times = []
  for x in images[1:]:
    start = time.perf_counter()
    jax.block_until_ready(fn(x))
    times.append(time.perf_counter() - start)
  return first, statistics.median(times), compiles.count


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", type=int, default=8, help="image side")
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--tools", default=None,
                      help="comma-separated tool names (default: all)")
  args = parser.parse_args(argv)
  tools = _tools(args.batch, args.size, 10)
  chosen = args.tools.split(",") if args.tools else list(tools)
  unknown = sorted(set(chosen) - set(tools))
  if unknown:
    parser.error(f"unknown tools {unknown}; choose from {sorted(tools)}")
  if args.repeats < 1:
    parser.error(f"--repeats must be at least 1, got {args.repeats}")
  model = InvertibleCNN((args.size, args.size, 1), (4,), (8,), 10,
                        rngs=nnx.Rngs(0))
  images = [jax.random.uniform(jax.random.key(i),
                               (args.batch, args.size, args.size, 1),
                               minval=0.1, maxval=0.9)
            for i in range(args.repeats + 1)]
  compiles = _Compiles()
  logging.getLogger("jax").addHandler(compiles)
  logging.getLogger("jax").setLevel(logging.DEBUG)
  print(f"# {timing.device_name()}, InvertibleCNN {args.size}x{args.size}x1, "
        f"batch {args.batch}, {args.repeats} repeated calls (median)")
  print(f"{'tool':22s} {'model: first':>13s} {'next':>9s} {'compiles':>9s}"
        f" {'plain: next':>14s} {'compiles':>9s} {'ratio':>7s}")
  with jax.log_compiles(True):
    for name in chosen:
      tool = tools[name]
      first, again, count = _timed(lambda x: tool(model, x), images,
                                   compiles)
      plain = _Plain(model)
      _, closure, closure_count = _timed(lambda x: tool(plain, x), images,
                                         compiles)
      print(f"{name:22s} {first * 1e3:10.1f} ms {again * 1e3:6.1f} ms "
            f"{count:9d} {closure * 1e3:11.1f} ms {closure_count:9d} "
            f"{closure / again:6.0f}x")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
