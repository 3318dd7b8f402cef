"""examples/saliency_simple_cnn.py: its normalisation and a tiny run on digits."""

import importlib.util
import json
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

from bort_jax import explain

EXAMPLES = pathlib.Path(__file__).parents[2] / "examples"


def _load():
  name = "saliency_simple_cnn"
  spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_authors_normalisation_divides_by_the_first_or_last_point():
  example = _load()
  fractions = jnp.array([0.0, 0.5, 1.0])
  scores = jnp.array([[0.8, 0.4, 0.2], [0.5, 0.5, 0.5]])
  curve = explain.PerturbationCurve(fractions, scores)
  # Deletion: the curve over its first point, then the trapezoid rule.
  np.testing.assert_allclose(example.normalised_auc(curve, 0),
                             [(0.5 * (1 + 0.5) + 0.5 * (0.5 + 0.25)) / 2, 1.0])
  # Insertion: over its last point.
  np.testing.assert_allclose(example.normalised_auc(curve, -1),
                             [(0.5 * (4 + 2) + 0.5 * (2 + 1)) / 2, 1.0])
  # The raw AUC is the library's.
  np.testing.assert_allclose(curve.auc, [0.45, 0.5])


def test_both_trainings_share_the_recipe_but_bort():
  example = _load()
  args = example.parse_args(["--out", "x", "--data", "digits"])
  configs = example.configs(args, seed=3)
  bort, sgd = configs["Bort"], configs["SGD"]
  assert (bort.optimizer, sgd.optimizer) == ("bort-sgd", "sgd")
  for field in ("learning_rate", "momentum", "weight_decay", "batch_size",
                "schedule", "epochs", "seed", "width"):
    assert getattr(bort, field) == getattr(sgd, field), field
  assert bort.dbort_weight > 0 and sgd.dbort_weight == 0


@pytest.mark.slow
def test_tiny_run_on_digits_writes_tables_and_figures(tmp_path):
  example = _load()
  out = tmp_path / "saliency"
  argv = ["--out", str(out), "--data", "digits", "--seeds", "0",
          "--epochs", "1", "--train-limit", "256", "--images", "6",
          "--ig-steps", "2", "--pgd-steps", "2", "--epsilons", "1.0"]
  results = example.main(argv)
  written = {p.name for p in out.iterdir()}
  # The adversarial figures need an image the barely trained model gets right.
  assert {"results.json", "tables.md", "saliency.png", "attacks.png",
          ".bort-jax-output.json"} <= written
  assert written <= set(example.OUT_FILES + (".bort-jax-output.json",))
  saved = json.loads((out / "results.json").read_text())
  assert [(r["model"], r["seed"]) for r in saved["runs"]] == [
      ("Bort", 0), ("SGD", 0)]
  run = results["runs"][0]
  assert run["backtracking"]["top_k"] == 256  # widths (1, 3, 36, 108, 324)
  for scores in run["saliency"].values():
    assert 0 <= scores["deletion_auc"] <= 1
    assert 0 <= scores["insertion_auc"] <= 1
    assert scores["deletion_auc_authors"] > 0
  assert set(run["saliency"]) == {"backtracking", "gradient",
                                  "integrated gradients", "random"}
  assert (out / "tables.md").read_text().startswith("Date:")
  with pytest.raises(SystemExit, match="--overwrite"):
    example.main(argv)
