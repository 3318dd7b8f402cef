"""examples/first_steps_digits.py: an orthogonal start constrains Bort at once."""

import importlib.util
import pathlib

import pytest

EXAMPLE = (pathlib.Path(__file__).parents[2] / "examples"
           / "first_steps_digits.py")


def _load():
  spec = importlib.util.spec_from_file_location("first_steps_digits", EXAMPLE)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.slow
def test_orthogonal_start_is_constrained_from_step_zero(capsys):
  results = _load().main(["--steps", "12"])
  printed = capsys.readouterr().out
  assert "| Bort-AdamW | orthogonal |" in printed and "err @ 10" in printed
  for name in ("AdamW", "Bort-AdamW"):
    default, orthogonal = results[name, "default"], results[name, "orthogonal"]
    assert list(orthogonal["errors"]) == [0, 10, 12]
    assert orthogonal["errors"][0] < 1e-4 < 0.5 < default["errors"][0]
  # From the same orthogonal start, Bort stays closer than AdamW.
  assert (results["Bort-AdamW", "orthogonal"]["errors"][12]
          < results["AdamW", "orthogonal"]["errors"][12])
  # The aliases' default lands on the constraint with its first step, from
  # the default initialisation.
  first = results["Bort-AdamW", "first step"]["errors"]
  assert first[0] == results["Bort-AdamW", "default"]["errors"][0] > 0.5
  assert first[10] < 0.1 * results["Bort-AdamW", "default"]["errors"][10]
  for result in results.values():
    assert 0 <= result["accuracy"] <= 1
