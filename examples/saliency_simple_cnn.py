"""Saliency and explainable attacks on the authors' SimpleCNN, Bort vs SGD.

The Bort paper (Zhang, Zheng, Zhou, Lu, "Bort: Towards Explainable Neural
Networks with Bounded Orthogonal Constraint", ICLR 2023) designed its
backtracking saliency and its latent-edit adversarial examples for the
SimpleCNN (:class:`bort_jax.models.SimpleCNN`). This example trains a
narrowed SimpleCNN on MNIST with the authors' recipe (Bort-SGD with DBort,
:func:`bort_jax.experiments.recipes.recipe` ``"authors-mnist"``, fewer
epochs) and with plain SGD at the same learning rate, momentum and weight
decay, for several seeds, holding out the last 10 % of the training set as
the validation split. On the first ``--images`` test images it then measures:

1. saliency: backtracking saliency from below the global max pool (the
   authors' top-k channel procedure, k = min(``--top-k``, top-layer width))
   against gradient saliency, integrated gradients and random maps, scored by
   Deletion / Insertion AUC in two normalisations: the raw curve of the
   class probability, and the authors' (the curve divided by its first point
   for deletion and by its last point for insertion, both the clean image's
   probability);
2. attacks: the success rate of the latent-edit attack (an edit of a hidden
   layer, backtracked; no input gradient) against FGSM and PGD at the same
   L2 norms, on the correctly classified images.

It prints markdown tables (mean ± sample std over seeds) and writes
``results.json``, ``tables.md`` and PNG figures into ``--out``::

  python examples/saliency_simple_cnn.py --out runs/saliency
  python examples/saliency_simple_cnn.py --out /tmp/s --data digits --epochs 3

MNIST comes from :func:`bort_jax.experiments.data.load_splits` (cached, or
fetched once); ``--data digits`` uses scikit-learn's bundled 8×8 digits.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bort_jax import explain
from bort_jax.experiments import data as data_lib
from bort_jax.experiments import flags
from bort_jax.experiments import frontier
from bort_jax.experiments import loop
from bort_jax.experiments import recipes
from bort_jax.experiments import workdir
from bort_jax.experiments import steps as steps_lib
from bort_jax.experiments.config import TrainConfig

#: What the example writes (``--overwrite`` replaces only these).
OUT_FILES = ("results.json", "tables.md", "saliency.png", "attacks.png",
             "adversarial_bort.png", "adversarial_sgd.png")

#: The two trainings: the authors' recipe, and SGD at its lr / wd / momentum.
BORT_ONLY = ("gamma", "mode", "amplitude", "dbort_weight", "dbort_power",
             "dbort_on")


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", required=True, help="output directory")
  p.add_argument("--overwrite", action="store_true",
                 help="write into a non-empty --out of this example")
  p.add_argument("--data", choices=("mnist", "digits"), default="mnist")
  p.add_argument("--width", type=flags.positive_int, default=1,
                 help="first conv's channels (8 = the authors' widths; 1 "
                 "gives 1, 3, 36, 108, 324)")
  p.add_argument("--epochs", type=flags.positive_int, default=1)
  p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
  p.add_argument("--train-limit", type=flags.positive_int, default=None,
                 help="train on the first N training examples only")
  p.add_argument("--validation", type=float, default=0.1,
                 help="held-out fraction (the training set's end)")
  p.add_argument("--images", type=flags.positive_int, default=100,
                 help="test images for saliency and attacks")
  p.add_argument("--top-k", type=flags.positive_int, default=256,
                 help="channels of backtracking saliency (capped at the top "
                 "layer's width)")
  p.add_argument("--border", type=flags.nonnegative_int, default=1,
                 help="backtracking saliency skips peaks this close to the "
                 "edge (0 on maps too small to have an interior)")
  p.add_argument("--ig-steps", type=flags.positive_int, default=32)
  p.add_argument("--pgd-steps", type=flags.positive_int, default=20)
  p.add_argument("--epsilons", type=float, nargs="+", default=None,
                 help="attack L2 norms (default: by image size)")
  args = p.parse_args(argv)
  args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
  if not args.seeds:
    p.error("--seeds needs at least one seed")
  return args


def configs(args, seed):
  """``{"Bort": config, "SGD": config}`` for one seed."""
  bort = recipes.recipe("authors-mnist")
  bort.update(data=args.data, width=args.width, epochs=args.epochs,
              seed=seed, train_limit=args.train_limit)
  sgd = {k: v for k, v in bort.items() if k not in BORT_ONLY}
  sgd["optimizer"] = "sgd"
  return {"Bort": TrainConfig(**bort), "SGD": TrainConfig(**sgd)}


def normalised_auc(curve: explain.PerturbationCurve, at: int) -> jax.Array:
  """The authors' AUC: the curve divided by its point ``at`` (0 or -1)."""
  scores = curve.scores / jnp.maximum(curve.scores[:, at, None], 1e-12)
  return jnp.trapezoid(scores, curve.fractions, axis=-1)


def mean_std(values):
  values = [v for v in values if v is not None]
  if not values:
    return None
  std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
  return {"mean": float(np.mean(values)), "std": std, "n": len(values)}


def _fmt(stat, digits=3):
  if stat is None:
    return "–"
  return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def _save(folder, name, fig):
  with folder.atomic(name, "wb") as f:
    explain.save_figure(fig, f)


def main(argv=None):
  args = parse_args(argv)
  with workdir.open_script_output(
      args.out, kind="saliency_simple_cnn", files=OUT_FILES,
      overwrite=args.overwrite) as folder:
    return _run(args, folder)


def _run(args, folder):
  t0 = time.time()
  ds = data_lib.load_splits(args.data)
  held = frontier.validation_split(ds, args.validation)
  x_test, y_test = jnp.asarray(ds.test.images), jnp.asarray(ds.test.labels)
  n = min(args.images, len(x_test))
  x_eval, y_eval = x_test[:n], y_test[:n]
  shape = x_eval.shape[1:]
  pixels = shape[0] * shape[1]
  per_step = max(1, pixels // 49)
  blur = shape[0] / 14
  eps_list = args.epsilons or (
      [0.5, 1.0, 2.0, 3.0] if pixels >= 784 else [0.5, 1.0, 1.5, 2.0])
  print(f"{args.data}: {len(held.train.labels)} train, "
        f"{len(held.test.labels)} validation, {len(y_test)} test; "
        f"JAX on {jax.devices()[0].platform}", flush=True)

  # Jitted once: every model has the same graph, so each compiles once.
  def backtrack_map(model, x, k, border):
    return explain.backtrack_saliency(model, x, model.feature_index,
                                      top_k=k, border=border)

  saliency_fns = {
      "backtracking": nnx.jit(backtrack_map, static_argnums=(2, 3)),
      "gradient": nnx.jit(explain.gradient_saliency),
      "integrated gradients": nnx.jit(
          lambda m, x: explain.integrated_gradients_saliency(
              m, x, steps=args.ig_steps)),
  }
  deletion = nnx.jit(
      lambda m, x, s: explain.deletion_curve(m, x, s, per_step))
  insertion = nnx.jit(
      lambda m, x, s: explain.insertion_curve(m, x, s, per_step,
                                              blur_sigma=blur))
  reconstruct = nnx.jit(lambda m, x, layer: explain.reconstruct(m, x, layer),
                        static_argnums=2)
  predict = nnx.jit(lambda m, x: jnp.argmax(m(x), -1))

  runs, figures, attacks = [], {}, None
  for seed in args.seeds:
    for name, config in configs(args, seed).items():
      start = time.time()
      print(f"[{name} seed {seed}] training {config.epochs} epoch(s)",
            flush=True)
      result = loop.train(config, dataset=held, log=print)
      model = result.model
      _, test_acc = steps_lib.evaluate(model, ds.test.images, ds.test.labels,
                                       config.eval_batch_size)
      last = result.history[-1]
      run = {"model": name, "seed": seed, "config": config.to_dict(),
             "widths": list(model.widths),
             "val_accuracy": last["test_accuracy"],
             "test_accuracy": test_acc,
             "constraint_error": last["constraint_error"],
             "max_cosine": last["max_cosine"],
             "train_seconds": time.time() - start}
      run["reconstruction_psnr"] = {
          where: float(jnp.mean(explain.psnr(
              x_eval, reconstruct(model, x_eval, layer))))
          for where, layer in (("stage 1", model.stage_ends[0]),
                               ("feature layer", model.feature_index))}

      # Saliency, scored for the class predicted on the clean image.
      top = model.forward(x_eval[:1])[model.feature_index + 1]
      k = min(args.top_k, top.shape[-1])
      border = args.border if min(top.shape[1:3]) > 2 * args.border else 0
      run["backtracking"] = {"layer": model.feature_index, "top_k": k,
                             "border": border, "spatial": top.shape[1:3]}
      maps = {}
      for method, fn in saliency_fns.items():
        extra = (k, border) if method == "backtracking" else ()
        maps[method] = jnp.concatenate([
            fn(model, x_eval[i:i + 50], *extra) for i in range(0, n, 50)])
      maps["random"] = jax.random.uniform(jax.random.key(seed), (n,) + shape[:2])
      run["saliency"] = {}
      for method, s in maps.items():
        d, i = deletion(model, x_eval, s), insertion(model, x_eval, s)
        run["saliency"][method] = {
            "deletion_auc": float(jnp.mean(d.auc)),
            "insertion_auc": float(jnp.mean(i.auc)),
            "deletion_auc_authors": float(jnp.mean(normalised_auc(d, 0))),
            "insertion_auc_authors": float(jnp.mean(normalised_auc(i, -1))),
        }
      if seed == args.seeds[0]:
        figures.setdefault("maps", {}).update(
            {f"{m} ({name})": np.asarray(s[:10]) for m, s in maps.items()
             if m != "random"})

      # Attacks at equal L2 norms, on the images this model gets right.
      correct = np.asarray(predict(model, x_eval) == y_eval)
      xc, yc = x_eval[correct], y_eval[correct]
      attacks = attacks or make_attacks(model, args.pgd_steps)
      run["attacks"] = {}
      shown = eps_list[len(eps_list) // 2]
      for attack, fn in attacks.items():
        for eps in eps_list:
          x_adv = fn(model, xc, yc, eps) if len(xc) else xc
          run["attacks"][f"{attack}/{eps:g}"] = {
              "success_rate": (float(explain.attack_success_rate(
                  model, x_adv, yc)) if len(xc) else None),
              "mean_l2": (float(jnp.mean(explain.perturbation_norms(
                  xc, x_adv))) if len(xc) else None),
              "images": int(len(xc))}
          if (seed == args.seeds[0] and eps == shown and len(xc)
              and not attack.startswith("FGSM")):
            figures.setdefault(name, {"clean": np.asarray(xc[:8]),
                                      "labels": np.asarray(yc[:8]),
                                      "x": {}, "pred": {}})
            figures[name]["x"][f"{attack}, ε={eps:g}"] = np.asarray(x_adv[:8])
            figures[name]["pred"][f"{attack}, ε={eps:g}"] = np.asarray(
                predict(model, x_adv[:8]))
      run["seconds"] = time.time() - start
      runs.append(run)
      print(f"[{name} seed {seed}] val {run['val_accuracy']:.4f} test "
            f"{test_acc:.4f} constraint {run['constraint_error']:.3g} "
            f"({run['seconds']:.0f}s)", flush=True)

  methods = list(runs[0]["saliency"])
  attack_names = sorted({a.rsplit("/", 1)[0] for a in runs[0]["attacks"]},
                        key=lambda a: (not a.startswith("latent"), a))
  summary = {}
  for name in ("Bort", "SGD"):
    mine = [r for r in runs if r["model"] == name]
    summary[name] = {
        metric: mean_std([r[metric] for r in mine]) for metric in (
            "val_accuracy", "test_accuracy", "constraint_error",
            "max_cosine")}
    summary[name]["reconstruction_psnr"] = {
        where: mean_std([r["reconstruction_psnr"][where] for r in mine])
        for where in mine[0]["reconstruction_psnr"]}
    summary[name]["saliency"] = {
        m: {score: mean_std([r["saliency"][m][score] for r in mine])
            for score in mine[0]["saliency"][m]} for m in methods}
    summary[name]["attacks"] = {
        a: {f"{e:g}": mean_std([r["attacks"][f"{a}/{e:g}"]["success_rate"]
                                for r in mine]) for e in eps_list}
        for a in attack_names}

  _save(folder, "saliency.png", explain.plot_saliency(
      np.asarray(x_eval[:10]), figures["maps"], 10))
  _save(folder, "attacks.png", plot_success(summary, attack_names, eps_list))
  for name in ("Bort", "SGD"):
    if name in figures:
      f = figures[name]
      _save(folder, f"adversarial_{name.lower()}.png", explain.plot_adversarial(
          f["clean"], f["x"], f["labels"], f["pred"]))

  stamp = (f"Date: {datetime.date.today().isoformat()}; machine: "
           f"{platform.machine()} CPU, {jax.device_count()} JAX device(s) "
           f"({jax.devices()[0].platform}); command: python "
           f"examples/saliency_simple_cnn.py {' '.join(sys.argv[1:])}")
  tables = stamp + "\n" + markdown(summary, runs, methods, attack_names,
                                   eps_list)
  results = {"args": vars(args), "runs": runs, "summary": summary,
             "seconds": time.time() - t0}
  folder.write_json("results.json", results)
  with folder.atomic("tables.md", "w") as f:
    f.write(tables + "\n")
  print(tables)
  print(f"wrote {folder.path}/ in {results['seconds']:.0f}s")
  return results


def make_attacks(model, pgd_steps):
  """The attacks, jitted: latent edits of three layers, FGSM and PGD."""
  def edit(layer):
    return nnx.jit(lambda m, x, y, e: explain.latent_edit_attack(
        m, x, y, layer=layer, epsilon=e))

  attacks = {f"latent edit ({where})": edit(layer) for where, layer in (
      ("feature layer", model.feature_index),
      ("stage 2", model.stage_ends[1]), ("stage 1", model.stage_ends[0]))}
  attacks["FGSM"] = nnx.jit(explain.fgsm_l2)
  attacks[f"PGD-{pgd_steps}"] = nnx.jit(
      lambda m, x, y, e: explain.pgd_l2(m, x, y, e, pgd_steps))
  return attacks


def plot_success(summary, attack_names, eps_list):
  """Success rate against the L2 norm, one panel per model."""
  # matplotlib only when the figure is drawn: the study itself needs none.
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
  for ax, name in zip(axes, ("Bort", "SGD")):
    for attack in attack_names:
      stats = [summary[name]["attacks"][attack][f"{e:g}"] for e in eps_list]
      mean = [s["mean"] if s else np.nan for s in stats]
      std = [s["std"] if s else np.nan for s in stats]
      ax.errorbar(eps_list, mean, yerr=std, marker="o", capsize=3,
                  label=attack)
    ax.set_title(name)
    ax.set_xlabel("L2 norm of the perturbation")
    ax.grid(alpha=0.3)
  axes[0].set_ylabel("success rate")
  axes[1].legend(fontsize=7)
  fig.tight_layout()
  return fig


def markdown(summary, runs, methods, attack_names, eps_list):
  first = runs[0]
  lines = [
      "", f"SimpleCNN widths {tuple(first['widths'])}; backtracking from "
      f"layers[{first['backtracking']['layer']}] "
      f"({tuple(first['backtracking']['spatial'])} map), top_k "
      f"{first['backtracking']['top_k']}, border "
      f"{first['backtracking']['border']}; mean ± sample std over seeds "
      f"{sorted({r['seed'] for r in runs})}.", "",
      "| model | val accuracy | test accuracy | constraint error | max cos "
      "| PSNR stage 1 (dB) | PSNR feature layer (dB) |",
      "|---|---|---|---|---|---|---|"]
  for name, s in summary.items():
    p = s["reconstruction_psnr"]
    lines.append(
        f"| {name} | {_fmt(s['val_accuracy'], 4)} | "
        f"{_fmt(s['test_accuracy'], 4)} | {_fmt(s['constraint_error'])} | "
        f"{_fmt(s['max_cosine'])} | {_fmt(p['stage 1'], 1)} | "
        f"{_fmt(p['feature layer'], 1)} |")
  lines += ["", "| saliency (model) | Deletion ↓ | Insertion ↑ | "
            "Deletion, authors' ↓ | Insertion, authors' ↑ |",
            "|---|---|---|---|---|"]
  for method in methods:
    for name, s in summary.items():
      a = s["saliency"][method]
      lines.append(
          f"| {method} ({name}) | {_fmt(a['deletion_auc'])} | "
          f"{_fmt(a['insertion_auc'])} | {_fmt(a['deletion_auc_authors'])} | "
          f"{_fmt(a['insertion_auc_authors'])} |")
  header = " | ".join(f"ε={e:g}" for e in eps_list)
  lines += ["", f"| model | attack | {header} |",
            "|---|---|" + "---|" * len(eps_list)]
  for name, s in summary.items():
    for attack in attack_names:
      cells = " | ".join(_fmt(s["attacks"][attack][f"{e:g}"], 2)
                         for e in eps_list)
      lines.append(f"| {name} | {attack} | {cells} |")
  lines.append("\nAttack cells: success rate on the correctly classified "
               "images among the first evaluation images, at that L2 norm "
               "(after clipping to [0, 1]).")
  return "\n".join(lines)


if __name__ == "__main__":
  main()
