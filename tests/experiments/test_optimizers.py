"""Optimizers by name, the schedule and the training config's checks."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bort_jax
from bort_jax.experiments import cli
from bort_jax.experiments import optimizers as train_lib
from bort_jax.experiments.config import TrainConfig


def test_make_optimizer_names():
  params = {"dense": {"kernel": jnp.ones((4, 3)) + jnp.eye(4, 3),
                      "bias": jnp.ones(3)}}
  grads = jax.tree.map(lambda p: 0.1 * p, params)

  def update(tx):  # jitted: one compilation instead of many eager ones
    return jax.jit(lambda g, p: tx.update(g, tx.init(p), p)[0])(grads, params)

  for name in ("sgd", "adamw", "bort-sgd", "bort-adamw", "bort-lion",
               "bort-lamb"):
    updates = update(train_lib.make_optimizer(name, 1e-2))
    assert updates["dense"]["kernel"].shape == (4, 3), name
  # gamma = 0: each Bort optimizer is its base optimizer (optax.contrib's
  # too, found by name like optax's own).
  for bort, base in (("bort-adamw", optax.adamw(1e-2, weight_decay=1e-4)),
                     ("bort-lion", optax.lion(1e-2)),
                     ("bort-muon", optax.contrib.muon(1e-2))):
    a = update(train_lib.make_optimizer(bort, 1e-2, gamma=0.0))
    b = update(base)
    jax.tree.map(np.testing.assert_allclose, a, b)
  # bort-sgd, coupled: one step is -lr (g + γ Δ(W)) for the kernel.
  got = update(train_lib.make_optimizer("bort-sgd", 0.5, gamma=0.2,
                                        mode="l2-full", amplitude=1.0,
                                        start_on_constraint=False))
  w = params["dense"]["kernel"]
  delta = bort_jax.bort_correction(w.T, "l2-full", 1.0).T
  np.testing.assert_allclose(got["dense"]["kernel"],
                             -0.5 * (grads["dense"]["kernel"] + 0.2 * delta),
                             rtol=1e-5)
  np.testing.assert_allclose(got["dense"]["bias"], -0.5 * grads["dense"]["bias"])
  with pytest.raises(ValueError, match="Unknown optimizer 'nope'"):
    train_lib.make_optimizer("bort-nope", 1e-3)
  with pytest.raises(ValueError, match="Unknown optimizer 'contrib'"):
    train_lib.make_optimizer("contrib", 1e-3)  # a module, not an optimizer
  assert TrainConfig(optimizer="muon").weight_decay == 0.0  # muon's default
  with pytest.raises(ValueError, match="placement applies"):
    train_lib.make_optimizer("bort-adamw", 1e-3, placement="coupled")
  with pytest.raises(ValueError):
    train_lib.make_optimizer("bort-adamw", 1e-3, gamma=-1.0)


def test_schedule_and_config_checks():
  schedule = train_lib.make_schedule(
      TrainConfig(learning_rate=0.1, epochs=4, warmup=1.0), 10)
  assert float(schedule(0)) == 0.0
  assert float(schedule(10)) == pytest.approx(0.1)
  assert float(schedule(25)) == pytest.approx(0.05, rel=1e-5)  # cosine half
  assert float(schedule(40)) == pytest.approx(0.0, abs=1e-9)
  for bad in ({"gamma": -0.1}, {"mode": "l3"}, {"amplitude": "big"},
              {"amplitude": 0.0}, {"epochs": 0}, {"optimizer": "bort-xyz"},
              {"model": "alexnet"}, {"learning_rate": 0.0}):
    with pytest.raises(ValueError):
      TrainConfig(**bad)


def test_dimension_numbers_are_forwarded_to_the_bort_alias():
  params = {"w": jnp.ones((2, 3, 4)) + jnp.eye(3, 4)}
  grads = jax.tree.map(jnp.zeros_like, params)
  # Axis 0 a batch axis: two (3, 4) matrices, each corrected on its own.
  numbers = {"w": bort_jax.BortDimensionNumbers(batch_axis=0)}
  tx = train_lib.make_optimizer("bort-sgd", 1.0, gamma=1.0, mode="l2-full",
                                amplitude=1.0, momentum=0.0,
                                dimension_numbers=numbers,
                                start_on_constraint=False)
  updates, _ = tx.update(grads, tx.init(params), params)
  expected = jnp.stack([bort_jax.bort_correction(m.T, "l2-full", 1.0).T
                        for m in params["w"]])
  np.testing.assert_allclose(updates["w"], -expected, rtol=1e-5)


def test_bort_every_reaches_the_alias_and_is_checked():
  params = {"dense": {"kernel": jnp.ones((4, 3)) + jnp.eye(4, 3)}}
  grads = jax.tree.map(jnp.zeros_like, params)
  common = dict(optimizer="bort-adamw", gamma=1.0, mode="l2-full",
                amplitude=1.0, learning_rate=0.1, weight_decay=0.0,
                bort_start_on_constraint=False)
  config = TrainConfig(bort_every=2, **common)
  assert TrainConfig(optimizer="bort-sgd").bort_every == 1
  tx = train_lib.optimizer_from_config(config, 0.1)
  state = tx.init(params)
  kernel = []
  for _ in range(4):  # the correction lands on steps 0 and 2 only
    updates, state = tx.update(grads, state, params)
    kernel.append(updates["dense"]["kernel"])
  plain = train_lib.optimizer_from_config(TrainConfig(**common), 0.1)
  step, _ = plain.update(grads, plain.init(params), params)
  assert np.abs(step["dense"]["kernel"]).max() > 0
  for i in (0, 2):
    np.testing.assert_allclose(kernel[i], 2 * step["dense"]["kernel"],
                               rtol=1e-6)
    np.testing.assert_array_equal(kernel[i + 1], 0 * kernel[i + 1])
  line, warnings = train_lib.strength_report(
      TrainConfig(optimizer="bort-adamw", bort_every=20))
  assert "applied as 20 x 0.001 every 20 steps" in line
  assert "--bort-every" in warnings[0]
  # Coupled, momentum spreads the burst: the per-step 1.5e-3 is the one
  # (every 8 trained at 5e-2 per application on digits).
  line, warnings = train_lib.strength_report(
      TrainConfig(optimizer="bort-sgd", bort_every=8))
  assert "applied as 8 x 0.0015 every 8 steps" in line and not warnings
  # Coupled into an optimizer that rescales the gradient, lr·γ is no
  # estimate: the README's coupled default is not called too weak.
  line, warnings = train_lib.strength_report(
      TrainConfig(optimizer="bort-lion", placement="coupled"))
  assert "which lion rescales" in line and not warnings
  with pytest.raises(ValueError, match="bort_every"):
    TrainConfig(optimizer="bort-adamw", bort_every=0)
  with pytest.raises(ValueError, match="bort_every applies to Bort"):
    TrainConfig(optimizer="adamw", bort_every=2)


@pytest.mark.parametrize("optimizer, alias", [
    ("bort-adamw", "bort_adamw"), ("bort-sgd", "bort_sgd"),
    ("bort-lion", "with_bort")])
def test_the_alias_fields_reach_the_bort_alias_by_their_names(
    monkeypatch, optimizer, alias):
  # A field marked alias= in the config is that alias argument, passed as it
  # is: a new alias setting needs no plumbing in make_optimizer.
  import dataclasses
  import inspect
  fields = {f.name: f.metadata["alias"]
            for f in dataclasses.fields(TrainConfig) if f.metadata["alias"]}
  assert set(fields.values()) == {"mode", "amplitude", "every", "lagged",
                                  "tau", "start_on_constraint"}
  original = getattr(bort_jax, alias)
  assert set(fields.values()) <= set(inspect.signature(original).parameters)
  seen = {}

  def spy(*args, **kwargs):
    seen.update(kwargs)
    return original(*args, **kwargs)

  monkeypatch.setattr(bort_jax, alias, spy)
  config = TrainConfig(optimizer=optimizer, mode="huber-fullrow", amplitude=2.0,
                       bort_every=4, bort_lagged=True, tau=0.03,
                       bort_start_on_constraint=False)
  train_lib.optimizer_from_config(config, 1e-3)
  assert {k: seen[k] for k in fields.values()} == {
      "mode": "huber-fullrow", "amplitude": 2.0, "every": 4, "lagged": True,
      "tau": 0.03, "start_on_constraint": False}


def test_a_bort_argument_to_a_plain_optimizer_is_refused():
  with pytest.raises(ValueError, match="^every applies to Bort optimizers "
                     "only; drop it, or use bort-adamw"):
    train_lib.make_optimizer("adamw", 1e-3, every=4)
  # None is "the alias's default", so a plain optimizer takes it silently.
  train_lib.make_optimizer("adamw", 1e-3, every=None, mode=None)


def test_a_saved_config_with_the_old_dbort_outputs_name_still_loads():
  # dbort_outputs (until 0.2) was also a library function's name.
  saved = TrainConfig(dbort_weight=1e-3, dbort_on="layers").to_dict()
  saved["dbort_outputs"] = saved.pop("dbort_on")
  assert TrainConfig.from_dict(saved).dbort_on == "layers"
  assert "dbort_outputs" not in TrainConfig().to_dict()


@pytest.mark.slow
def test_bort_muon_with_no_learning_rate_trains_and_constrains(tmp_path):
  """The command line's Muon runs at Muon's usual 0.02, where it trains
  (at the 1e-3 every unnamed optimizer got, 5 epochs reached 29 %), with
  the library's per-step strength 1e-3 (γ 0.05)."""
  assert train_lib.default_learning_rate("bort-muon") == 0.02
  assert train_lib.default_learning_rate("muon") == 0.02
  out = str(tmp_path / "run")
  assert cli.main(["train", "--optimizer", "bort-muon", "--epochs", "5",
                   "--offline", "--no-progress", "--out", out]) == 0
  with open(os.path.join(out, "metrics.json")) as f:
    metrics = json.load(f)
  assert metrics["config"]["learning_rate"] == 0.02
  first, last = metrics["history"][0], metrics["history"][-1]
  assert metrics["config"]["gamma"] == pytest.approx(0.05)
  assert last["test_accuracy"] > 0.85
  # 50 steps of digits: on its way, as bort-adamw's default is there.
  assert last["constraint_error"] < 0.75 * first["constraint_error"]



def test_a_decoupled_bort_optax_defaults_to_the_library_s_per_step_strength():
  """lr·γ = bort_jax.DEFAULT_STRENGTH, as with_bort's default: Muon at its
  0.02 got a per-step 0.02 (above MAX_STEP_STRENGTH, warned), Lion at 1e-4
  a loose 1e-4 (warned too)."""
  for name, lr, gamma in (("bort-muon", None, 0.05), ("bort-lion", 1e-4, 10.0),
                          ("bort-lion", None, 1.0), ("bort-adamw", 1e-2, 1.0),
                          ("bort-sgd", None, 0.003)):
    config = TrainConfig(optimizer=name, learning_rate=lr)
    assert config.gamma == pytest.approx(gamma), name
    if name != "bort-adamw":  # its γ is the recommended one at any lr
      assert train_lib.strength_report(config)[1] == [], name
  coupled = TrainConfig(optimizer="bort-muon", placement="coupled")
  assert coupled.gamma == bort_jax.RECOMMENDED["coupled"].gamma
  # A config.json saved with γ null (before γ was filled) keeps its meaning.
  saved = TrainConfig(optimizer="bort-lion", learning_rate=1e-4).to_dict()
  saved["gamma"] = None
  assert TrainConfig.from_dict(saved).gamma == 1.0
  plain = TrainConfig(optimizer="lion").to_dict()
  assert TrainConfig.from_dict(plain).gamma is None


@pytest.mark.slow
def test_an_optimizer_holding_the_params_trains_at_its_own_learning_rate(
    tmp_path):
  """prodigy keeps the params themselves in its state: the donated step
  raised "donate the same buffer twice". Its learning rate is a factor on
  its own estimate: optax's 1, not the 1e-3 that left it in place."""
  assert train_lib.default_learning_rate("bort-prodigy") == 1.0
  out = str(tmp_path / "run")
  assert cli.main(["train", "--optimizer", "prodigy", "--epochs", "6",
                   "--offline", "--no-progress", "--out", out]) == 0
  with open(os.path.join(out, "metrics.json")) as f:
    history = json.load(f)["history"]
  assert history[-1]["test_accuracy"] > history[0]["test_accuracy"] + 0.3
