"""Named recipes and the recommended defaults."""

import pytest

import bort_jax
from bort_jax.experiments import data as data_lib
from bort_jax.experiments import optimizers
from bort_jax.experiments import recipes
from bort_jax.experiments.config import TrainConfig
from bort_jax.experiments.loop import train


@pytest.fixture(scope="module")
def digits():
  return data_lib.load_splits("digits")


@pytest.mark.parametrize("name", sorted(recipes.RECIPES))
def test_every_recipe_builds_and_runs_two_steps(name, digits):
  # Shrunk to digits and a narrow model, as a CPU test must be; every other
  # field is the recipe's.
  values = {**recipes.recipe(name), "data": "digits", "epochs": 1,
            "batch_size": 32, "width": 1 if recipes.recipe(name).get(
                "model") == "simple-cnn" else 16, "warmup": 0.0}
  config = TrainConfig(**values)
  result = train(config, dataset=digits, max_steps=2)
  assert result.step == 2
  for key, value in recipes.recipe(name).items():
    if key not in ("data", "epochs", "batch_size", "warmup", "width"):
      assert getattr(config, key) == value, key


def test_recommended_recipes_are_the_library_defaults():
  for placement, optimizer in (("decoupled", "bort-adamw"),
                               ("coupled", "bort-sgd")):
    r = bort_jax.RECOMMENDED[placement]
    config = TrainConfig(optimizer=optimizer)
    assert (config.mode, config.amplitude, config.gamma,
            config.learning_rate, config.bort_start_on_constraint) == tuple(r)
    recipe = recipes.recipe(f"recommended-{placement}")
    assert TrainConfig(**recipe) == config


def test_authors_mnist_recipe_transcribes_their_script():
  r = recipes.recipe("authors-mnist")
  assert (r["optimizer"], r["learning_rate"], r["momentum"],
          r["weight_decay"], r["gamma"], r["mode"], r["amplitude"]) == (
              "bort-sgd", 0.005, 0.9, 0.005, 0.05, "l1-fullrow", 1.0)
  assert (r["dbort_weight"], r["dbort_power"], r["batch_size"], r["epochs"],
          r["schedule"], r["seed"]) == (1e-3, 0.1, 256, 40, "constant", 42)


def test_unknown_recipe_names_the_choices():
  with pytest.raises(ValueError, match="authors-mnist"):
    recipes.recipe("nonsense")


def test_non_bort_configs_carry_no_bort_values_and_lr_defaults_per_optimizer():
  assert TrainConfig(optimizer="sgd").learning_rate == 0.05
  assert TrainConfig(optimizer="adamw").learning_rate == 1e-3
  assert TrainConfig(optimizer="lion").learning_rate == 1e-3
  config = TrainConfig(optimizer="adamw")
  assert (config.gamma, config.mode, config.amplitude) == (None,) * 3
  with pytest.raises(ValueError, match="gamma applies to Bort"):
    TrainConfig(optimizer="adamw", gamma=0.1)


def test_strength_report_warns_where_the_frontier_collapses():
  line, warnings = optimizers.strength_report(
      TrainConfig(optimizer="bort-sgd", gamma=0.1))  # the old CLI default
  assert "0.05" in line and warnings and "collapses" in warnings[0]
  for optimizer in ("bort-sgd", "bort-adamw"):
    line, warnings = optimizers.strength_report(TrainConfig(
        optimizer=optimizer))
    assert warnings == [], (optimizer, warnings)


@pytest.mark.slow
@pytest.mark.parametrize("base", ["sgd", "adamw"])
def test_defaults_train_and_constrain_on_digits(base, digits):
  # Only the optimizer is named: every other setting is the default. Digits
  # has 1347 training images: batch 32 gives 840 steps in 20 epochs.
  common = dict(data="digits", model="invertible-mlp", width=48, epochs=20,
                batch_size=32, warmup=1.0)
  baseline = train(TrainConfig(optimizer=base, **common), dataset=digits)
  bort = train(TrainConfig(optimizer=f"bort-{base}", **common),
               dataset=digits)
  b, o = baseline.history[-1], bort.history[-1]
  assert o["test_accuracy"] >= b["test_accuracy"] - 0.03, (o, b)
  assert o["constraint_error"] <= 0.5 * b["constraint_error"], (o, b)
