"""One default per knob, visible in the signature and read from one place."""

import inspect
import pydoc
import types
import warnings

import jax.numpy as jnp
import optax
import pytest

import bort_jax
from bort_jax._src import defaults


def _default(function, name):
  return inspect.signature(function).parameters[name].default


def test_signature_literals_are_the_recommended_settings():
  coupled = bort_jax.RECOMMENDED["coupled"]
  decoupled = bort_jax.RECOMMENDED["decoupled"]
  for function, r in [(bort_jax.bort_sgd, coupled),
                      (bort_jax.bort_adamw, decoupled)]:
    assert _default(function, "gamma") == r.gamma
    assert _default(function, "mode") == r.mode
    assert _default(function, "amplitude") == r.amplitude
    assert _default(function, "tau") == defaults.DEFAULT_TAU
  assert _default(bort_jax.with_bort, "mode") == decoupled.mode
  assert _default(bort_jax.with_bort, "amplitude") == decoupled.amplitude
  assert _default(bort_jax.with_bort, "placement") == "decoupled"
  assert (_default(bort_jax.with_bort, "strength")
          == defaults.DEFAULT_STRENGTH
          == decoupled.learning_rate * decoupled.gamma)
  # The building block keeps its own literal defaults (documented why).
  assert _default(bort_jax.add_bort_correction, "mode") == "l2-full"
  assert _default(bort_jax.add_bort_correction, "amplitude") == 1.0
  assert _default(bort_jax.add_bort_correction, "tau") == defaults.DEFAULT_TAU
  for name in ("gamma", "mode", "amplitude", "tau"):  # no None-filling left
    for function in (bort_jax.bort_sgd, bort_jax.bort_adamw):
      assert _default(function, name) is not None
  assert not hasattr(defaults, "recommended")


def test_dbort_power_has_one_name_and_one_default():
  from bort_jax.experiments import steps
  from bort_jax.experiments.config import TrainConfig
  power = bort_jax.dbort.DBORT_POWER
  for function in (bort_jax.dbort.dbort_loss, bort_jax.dbort.dbort_term):
    assert _default(function, "power") == power
    assert "beta" not in inspect.signature(function).parameters
  # The training config and its loss: the same default, under the same name.
  assert TrainConfig.dbort_power == power
  assert steps.Objective().dbort_power == power


def test_inject_hyperparams_sees_the_defaults():
  params = {"kernel": jnp.ones((3, 2))}
  state = optax.inject_hyperparams(bort_jax.bort_adamw)(
      learning_rate=1e-3).init(params)
  assert float(state.hyperparams["gamma"]) == 1.0
  state = optax.inject_hyperparams(bort_jax.bort_sgd)(
      learning_rate=0.05).init(params)
  assert float(state.hyperparams["gamma"]) == pytest.approx(0.003)
  state = optax.inject_hyperparams(bort_jax.with_bort)(
      optax.adam(1e-3)).init(params)
  assert float(state.hyperparams["strength"]) == pytest.approx(1e-3)


def test_help_shows_the_defaults():
  for function, want in [
      (bort_jax.bort_adamw, ["gamma", "1.0", "'l1-fullrow'", "'ada'"]),
      (bort_jax.bort_sgd, ["gamma", "0.003", "'l1-fullrow'", "'ada'"]),
      (bort_jax.with_bort, ["strength", "0.001", "'decoupled'"])]:
    text = pydoc.render_doc(function, renderer=pydoc.plaintext)
    signature = str(inspect.signature(function))
    assert signature.split("->")[0].strip() in " ".join(text.split())
    for piece in want:
      assert piece in signature, (function.__name__, piece)
  assert "= None" not in str(inspect.signature(bort_jax.bort_adamw)).split(
      "gamma")[1].split("dimension_numbers")[0]


#: optax.contrib.muon came with optax 0.2.5; the package's floor is 0.2.4.
_NEEDS_MUON = pytest.mark.skipif(
    not hasattr(optax.contrib, "muon"),
    reason="optax.contrib.muon needs optax >= 0.2.5")


@pytest.mark.parametrize("build, names", [
    pytest.param(
        lambda: bort_jax.with_bort(optax.contrib.muon(0.02), strength=0.02),
        "strength=0.02", marks=_NEEDS_MUON),
    (lambda: bort_jax.with_bort(optax.sgd(0.02), strength=0.02),
     "strength=0.02"),
    (lambda: bort_jax.bort_adamw(0.02, gamma=1.0), "gamma=1"),
    (lambda: bort_jax.bort_sgd(0.5, momentum=0.9, gamma=0.003),
     "gamma=0.003"),
])
def test_a_collapsing_explicit_strength_warns_at_construction(build, names):
  with pytest.warns(UserWarning, match="per-step Bort correction") as record:
    build()
  message = str(record[0].message)
  assert names in message and "\n" not in message
  assert f"above {defaults.MAX_STEP_STRENGTH:g}" in message
  assert "pass e.g." in message


@pytest.mark.parametrize("build, names", [
    (lambda: bort_jax.with_bort(optax.adamw(1e-3), strength=6.25e-3,
                                every=8), "strength=0.00625"),
    (lambda: bort_jax.bort_adamw(1e-3, every=16), "gamma=1"),
])
def test_an_amortised_burst_warns_on_its_strength_per_application(build,
                                                                  names):
  # Decoupled, every=k applies k·s at once: s = 6.25e-3 every 8 (5e-2 per
  # application) left 17 % accuracy on digits
  # (examples/step_strength_limit.py), with no warning, as s alone is below
  # the limit.
  with pytest.warns(UserWarning, match="per application") as record:
    build()
  message = str(record[0].message)
  assert names in message and "\n" not in message
  assert f"above {defaults.MAX_STEP_STRENGTH:g}" in message
  assert "with every=" in message and "with every <= 10" in message


@pytest.mark.parametrize("build", [
    pytest.param(lambda: bort_jax.with_bort(optax.contrib.muon(0.02)),
                 marks=_NEEDS_MUON),
    # every 8 at the default s: 8e-3 per application; lagged applies s.
    lambda: bort_jax.bort_adamw(1e-3, every=8),
    lambda: bort_jax.with_bort(optax.adamw(1e-3), every=8),
    lambda: bort_jax.bort_adamw(1e-3, every=16, lagged=True),
    # Coupled, momentum spreads the burst: every 8 trained at 5e-2 per
    # application on digits; the warning reads the per-step 1.5e-3.
    lambda: bort_jax.bort_sgd(0.05, momentum=0.9, every=8),
    lambda: bort_jax.with_bort(optax.sgd(0.5, momentum=0.9)),
    lambda: bort_jax.bort_adamw(1e-3),
    lambda: bort_jax.bort_adamw(3e-3),
    lambda: bort_jax.bort_sgd(0.05, momentum=0.9),
    lambda: bort_jax.bort_sgd(0.1, momentum=0.9),
    # The l2 modes have their own limit (lr · γ · c < 1), not this one.
    lambda: bort_jax.bort_sgd(0.1, gamma=1.0, mode="l2-full", amplitude=1.0),
    # A schedule has no concrete per-step strength at construction.
    lambda: bort_jax.with_bort(optax.sgd(0.1), strength=lambda c: 0.5),
])
def test_the_defaults_do_not_warn(build):
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    build()


def test_recommended_is_immutable():
  assert isinstance(bort_jax.RECOMMENDED, types.MappingProxyType)
  with pytest.raises(TypeError):
    bort_jax.RECOMMENDED["coupled"] = None
  with pytest.raises(AttributeError):
    bort_jax.RECOMMENDED["coupled"].gamma = 1.0


def test_the_start_on_the_constraint_follows_each_placement_s_record():
  import inspect
  for alias, placement in ((bort_jax.bort_adamw, "decoupled"),
                           (bort_jax.bort_sgd, "coupled"),
                           (bort_jax.with_bort, "decoupled")):
    default = inspect.signature(alias).parameters["start_on_constraint"]
    assert default.default is bort_jax.RECOMMENDED[
        placement].start_on_constraint, alias.__name__
  assert bort_jax.RECOMMENDED["decoupled"].start_on_constraint is True
  assert bort_jax.RECOMMENDED["coupled"].start_on_constraint is False
