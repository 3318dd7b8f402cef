"""Smoke test of examples/explain_mnist.py on scikit-learn's digits (tiny)."""

import importlib.util
import json
import pathlib

import pytest

from bort_jax.experiments import workdir
EXAMPLE = pathlib.Path(__file__).parents[2] / "examples" / "explain_mnist.py"


def load_example():
  spec = importlib.util.spec_from_file_location("explain_mnist", EXAMPLE)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.slow
def test_example_writes_results_and_figures(tmp_path, capsys):
  example = load_example()
  out = tmp_path / "run"
  args = ["--out", str(out), "--data", "digits", "--steps", "30",
          "--eval-images", "6", "--epsilons", "1.5", "--top-k", "4",
          "--channels", "2", "--hidden"]
  results = example.main(args)
  saved = json.loads((out / "results.json").read_text())
  assert set(saved) >= {"models", "reconstruction", "saliency", "attacks"}
  assert set(saved["models"]) == {"Bort", "AdamW"}
  for name in ("reconstructions", "saliency", "gram"):
    assert (out / f"{name}.png").stat().st_size > 0
  for row in results["saliency"].values():
    assert 0 <= row["deletion_auc"] <= 1 and 0 <= row["insertion_auc"] <= 1
  assert "| Bort |" in capsys.readouterr().out
  with pytest.raises(SystemExit, match="--overwrite"):
    example.main(args)  # refuses before any work
  with workdir.open_script_output(  # an earlier output's files go
      out, kind="explain_mnist", files=example.OUT_FILES,
      overwrite=True) as folder:
    assert folder.path == out and not (out / "results.json").exists()
