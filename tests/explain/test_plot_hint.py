"""bort_jax.explain figures without matplotlib say what to install."""

import sys

import numpy as np
import pytest

from bort_jax import explain
from bort_jax.explain import figures


@pytest.fixture
def no_matplotlib(monkeypatch):
  """Hides matplotlib and its loaded submodules, as if not installed."""
  for name in [n for n in sys.modules
               if n == "matplotlib" or n.startswith("matplotlib.")]:
    monkeypatch.setitem(sys.modules, name, None)
  monkeypatch.setitem(sys.modules, "matplotlib", None)


@pytest.mark.parametrize("plot", [
    lambda: explain.plot_gram({"w": np.eye(2)}),
    lambda: explain.plot_saliency(np.zeros((1, 4, 4, 1)),
                                  {"grad": np.zeros((1, 4, 4))}),
    lambda: explain.save_figure(object(), "never_written.png"),
])
def test_i19_plot_without_matplotlib_raises_the_install_hint(
    no_matplotlib, plot, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(ImportError) as caught:
    plot()
  message = str(caught.value)
  assert type(caught.value) is ImportError  # not a bare ModuleNotFoundError
  assert 'pip install "bort_jax[app]"' in message
  assert "matplotlib" in message and "\n" not in message
  assert not (tmp_path / "never_written.png").exists()


def test_i19_another_missing_module_keeps_its_own_error():
  """Only a missing matplotlib gets the hint: a module matplotlib needs
  (or any other) is reported as itself, not as "install matplotlib"."""
  with pytest.raises(ModuleNotFoundError) as caught:
    figures._matplotlib("kiwisolver_is_not_installed")
  assert type(caught.value) is ModuleNotFoundError
  assert "bort_jax[app]" not in str(caught.value)
