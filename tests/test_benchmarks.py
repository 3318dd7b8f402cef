"""The benchmarks run on the CPU (tiny workloads): what gpu.sh calls works."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import gpu_train  # noqa: E402
import train_step  # noqa: E402


def test_train_step_times_the_amortised_correction(tmp_path, capsys):
  out = tmp_path / "steps.json"
  train_step.main(["--models", "mlp", "--optimizers", "adamw", "--configs",
                   "l2-full c=1", "--every", "2", "--steps", "2",
                   "--repeats", "1", "--width", "mlp=16", "--json", str(out)])
  rows = json.loads(out.read_text())["rows"]
  assert [r["config"] for r in rows] == ["l2-full c=1", "l2-full c=1 every=2"]
  assert all(r["finite"] and r["ratio"] > 0 for r in rows)
  assert "| mlp | 16 |" in capsys.readouterr().out
  with pytest.raises(SystemExit, match="multiple of every"):
    train_step.main(["--models", "mlp", "--every", "4", "--steps", "2"])


@pytest.mark.slow
def test_gpu_train_runs_the_authors_recipe_and_the_defaults(tmp_path, capsys):
  out = tmp_path / "train.json"
  gpu_train.main(["--quick", "--models", "simple-cnn,vit",
                  "--budget-seconds", "20", "--out", str(out)])
  rows = json.loads(out.read_text())["rows"]
  assert [(r["model"], r["optimizer"]) for r in rows] == [
      ("simple-cnn", "sgd"), ("simple-cnn", "bort-sgd+dbort"),
      ("vit", "adamw"), ("vit", "bort-adamw")]
  by_name = {(r["model"], r["optimizer"]): r for r in rows}
  # Bort constrains: its kernels are closer to orthogonal than the baseline's.
  for model, base, bort in (("simple-cnn", "sgd", "bort-sgd+dbort"),
                            ("vit", "adamw", "bort-adamw")):
    assert (by_name[model, bort]["constraint_error"]
            < by_name[model, base]["constraint_error"])
  assert "bort-sgd+dbort" in capsys.readouterr().out
