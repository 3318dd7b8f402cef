"""examples/step_strength_limit.py: the measurement behind MAX_STEP_STRENGTH."""

import importlib.util
import math
import pathlib

import pytest

EXAMPLE = (pathlib.Path(__file__).parents[2] / "examples"
           / "step_strength_limit.py")


def _load():
  spec = importlib.util.spec_from_file_location("step_strength_limit", EXAMPLE)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.slow
def test_the_limit_is_measured_per_application(capsys):
  module = _load()
  table = module.main(["--steps", "60", "--strengths", "1e-3,0.2",
                       "--everys", "1,8", "--seeds", "0",
                       "--placements", "decoupled"])
  printed = capsys.readouterr().out
  assert "| decoupled | 8 | 0.2 | 0.025 |" in printed
  assert set(table) == {("decoupled", k, b) for k in (1, 8)
                        for b in (1e-3, 0.2)}
  for every in (1, 8):
    small, large = table["decoupled", every, 1e-3], table["decoupled", every,
                                                          0.2]
    assert small[0] > 0.8 and small[1] < 0.5
    # 20x the limit per application: collapsed, or diverged (nan).
    assert math.isnan(large[0]) or large[0] < 0.5
