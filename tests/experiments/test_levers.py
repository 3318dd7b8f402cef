"""The Bort levers of the training application: orthogonal init, the Bort
learning-rate scale, γ schedules and the head exclusion (issue 16, item 1)."""

import dataclasses
import json
import logging
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import bort_jax
from bort_jax.experiments import cli
from bort_jax.experiments import data as data_lib
from bort_jax.experiments import models
from bort_jax.experiments import optimizers
from bort_jax.experiments import steps
from bort_jax.experiments.config import ConfigError, TrainConfig
from bort_jax.experiments.loop import train
from tests.experiments.test_loop import _assert_same_state, _without_times

# 1347 digits / 128 = 10 steps per epoch.
SMALL = dict(data="digits", model="invertible-mlp", width=16, epochs=1,
             batch_size=128, seed=3)


@pytest.fixture(scope="module")
def digits():
  return data_lib.load_splits("digits")


def _params(result):
  return jax.tree.leaves(nnx.state(result.model, nnx.Param))


def _mlp_and_params(width=8):
  model = models.make_model("mlp", (4, 4, 1), 10, width=width,
                            rngs=nnx.Rngs(0))
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  return model, params


def _grads(params, seed=1):
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return treedef.unflatten([jax.random.normal(k, x.shape, x.dtype)
                            for k, x in zip(keys, leaves)])


# --- init ---------------------------------------------------------------


def test_orthogonal_init_puts_the_bort_kernels_on_the_constraint_at_step_0(
    digits):
  start = train(TrainConfig(init="orthogonal", **SMALL), dataset=digits,
                max_steps=0)
  assert start.step == 0
  assert start.history[0]["constraint_error"] < 1e-5
  default = train(TrainConfig(**SMALL), dataset=digits, max_steps=0)
  assert default.history[0]["constraint_error"] > 1e-2


@pytest.mark.slow
def test_orthogonal_init_compiles_the_training_step_once(digits, caplog):
  # The projected kernels were committed to the device and the rest not:
  # the first step, the next and the first of each epoch (fresh metrics)
  # compiled the step again, three times in two epochs, and the two extra
  # compiles were timed as steps (120 ms against 3).
  caplog.set_level(logging.DEBUG)
  with jax.log_compiles(True):
    train(TrainConfig(init="orthogonal", optimizer="bort-adamw",
                      **dict(SMALL, epochs=2)), dataset=digits)
  compiled = [r.getMessage() for r in caplog.records
              if "Compiling jit(train_step)" in r.getMessage()]
  assert len(compiled) == 1, len(compiled)


def test_orthogonal_init_gives_a_bort_run_and_its_baseline_the_same_weights(
    digits):
  bort = train(TrainConfig(init="orthogonal", optimizer="bort-adamw",
                           **SMALL), dataset=digits, max_steps=0)
  adamw = train(TrainConfig(init="orthogonal", optimizer="adamw", **SMALL),
                dataset=digits, max_steps=0)
  default = train(TrainConfig(optimizer="adamw", **SMALL), dataset=digits,
                  max_steps=0)
  for a, b in zip(_params(bort), _params(adamw)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert any(not np.array_equal(a, b)
             for a, b in zip(_params(adamw), _params(default)))


def test_orthogonal_init_leaves_the_head_alone_without_bort_head(digits):
  no_head = dict(SMALL, init="orthogonal", bort_head=False)
  bort = train(TrainConfig(optimizer="bort-adamw", **no_head), dataset=digits,
               max_steps=0)
  # The baseline of a head-free Bort run starts where it does.
  adamw = train(TrainConfig(optimizer="adamw", **no_head), dataset=digits,
                max_steps=0)
  default = train(TrainConfig(optimizer="adamw", **SMALL), dataset=digits,
                  max_steps=0)
  for a, b in zip(_params(bort), _params(adamw)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  head = lambda r: np.asarray(r.model.layers[-1].kernel[...])
  np.testing.assert_array_equal(head(bort), head(default))
  hidden = lambda r: np.asarray(r.model.layers[1].kernel[...])
  assert not np.array_equal(hidden(bort), hidden(default))
  assert bort.history[0]["constraint_error"] < 1e-5  # the Bort kernels only


def test_orthogonal_init_uses_a_numeric_amplitude(digits):
  result = train(TrainConfig(init="orthogonal", amplitude=2.0, **SMALL),
                 dataset=digits, max_steps=0)
  kernel = np.asarray(result.model.layers[1].kernel[...], np.float64)
  gram = kernel.T @ kernel  # (in, out): the rows of W are the columns here
  np.testing.assert_allclose(gram, 2.0 * np.eye(gram.shape[0]), atol=1e-5)


@pytest.mark.slow
def test_orthogonal_init_resumes_bit_for_bit_after_an_interruption(
    digits, tmp_path):
  config = TrainConfig(init="orthogonal", **dict(SMALL, epochs=2))
  straight = train(config, str(tmp_path / "straight"), dataset=digits)

  def interrupt(step):
    if step == 13:
      signal.raise_signal(signal.SIGINT)

  run_dir = str(tmp_path / "interrupted")
  first = train(config, run_dir, dataset=digits, on_step=interrupt)
  assert not first.finished and first.step == 13
  resumed = train(config, run_dir, dataset=digits, resume=True)
  assert resumed.finished
  _assert_same_state(resumed, straight)
  assert _without_times(resumed.history) == _without_times(straight.history)


# --- bort_lr_scale -----------------------------------------------------


@pytest.mark.parametrize("name", ["bort-adamw", "bort-sgd"])
def test_bort_lr_scale_scales_the_bort_leaves_update_only(name):
  model, params = _mlp_and_params()
  grads = _grads(params)
  dn = bort_jax.flax_dimension_numbers(model)

  def update(scale):
    tx = optimizers.make_optimizer(name, 1e-2, gamma=0.01,
                                   dimension_numbers=dn, bort_lr_scale=scale)
    updates, _ = tx.update(grads, tx.init(params), params)
    return updates

  plain, doubled, tenth = update(1.0), update(2.0), update(0.1)
  layers = (plain["hidden"][0], plain["hidden"][1], plain["head"])
  twice = (doubled["hidden"][0], doubled["hidden"][1], doubled["head"])
  small = (tenth["hidden"][0], tenth["hidden"][1], tenth["head"])
  for p, d, t in zip(layers, twice, small):
    np.testing.assert_array_equal(d["kernel"], 2 * p["kernel"])
    np.testing.assert_allclose(t["kernel"], 0.1 * p["kernel"], rtol=1e-6)
    np.testing.assert_array_equal(d["bias"], p["bias"])
    np.testing.assert_array_equal(t["bias"], p["bias"])


def test_bort_lr_scale_follows_the_config_through_nnx_optimizer():
  config = TrainConfig(optimizer="bort-adamw", learning_rate=1e-2)

  def step(scale):
    model, before = _mlp_and_params()
    tx = optimizers.optimizer_from_config(
        dataclasses.replace(config, bort_lr_scale=scale), 1e-2,
        dimension_numbers=bort_jax.flax_dimension_numbers(model))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    grads = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(grads, _grads(before))
    optimizer.update(model, grads)
    after = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    return jax.tree.map(
        lambda a, b: np.asarray(a, np.float64) - np.asarray(b, np.float64),
        after, before)

  plain, doubled = step(1.0), step(2.0)
  for layer in ("head", "hidden"):
    p = plain[layer] if layer == "head" else plain[layer][0]
    d = doubled[layer] if layer == "head" else doubled[layer][0]
    np.testing.assert_allclose(d["kernel"], 2 * p["kernel"], rtol=1e-4,
                               atol=1e-9)
    np.testing.assert_array_equal(d["bias"], p["bias"])


# --- γ schedules -------------------------------------------------------


def _gamma(config, steps_per_epoch, t):
  gamma = optimizers.make_gamma_schedule(config, steps_per_epoch)
  return float(gamma(t)) if callable(gamma) else float(gamma)


def test_gamma_schedule_late_is_weak_until_the_switch_then_gamma():
  config = TrainConfig(gamma=0.5, gamma_schedule="late", gamma_switch=0.6,
                       gamma_late_factor=0.2, epochs=2)
  # 2 epochs x 10 steps: the switch is step round(0.6 * 20) = 12.
  for t, want in ((0, 0.1), (11, 0.1), (12, 0.5), (19, 0.5)):
    assert _gamma(config, 10, t) == pytest.approx(want, rel=1e-6), t


def test_gamma_schedule_anneal_is_gamma_until_the_switch_then_linear_to_0():
  config = TrainConfig(gamma=0.5, gamma_schedule="anneal", gamma_switch=0.5,
                       epochs=2)
  for t, want in ((0, 0.5), (9, 0.5), (10, 0.5), (15, 0.25), (19, 0.05),
                  (20, 0.0)):
    assert _gamma(config, 10, t) == pytest.approx(want, rel=1e-6, abs=1e-9), t


def test_gamma_schedule_is_multiplied_by_the_warmup():
  config = TrainConfig(gamma=0.5, gamma_schedule="late", gamma_switch=0.5,
                       gamma_late_factor=0.2, gamma_warmup=1.0, epochs=4)
  # warm-up over 10 steps; switch at step 20.
  for t, want in ((0, 0.0), (5, 0.5 * 0.1), (10, 0.1), (19, 0.1),
                  (20, 0.5)):
    assert _gamma(config, 10, t) == pytest.approx(want, rel=1e-6), t
  # The constant schedule keeps its one linear ramp.
  plain = TrainConfig(gamma=0.5, gamma_warmup=1.0, epochs=4)
  assert _gamma(plain, 10, 5) == pytest.approx(0.25, rel=1e-6)


def test_gamma_schedule_is_the_gamma_the_optimizer_applies():
  """With zero gradients and no decay, decoupled Bort-AdamW's update is
  ``−lr·γ_t·Δ`` with Δ fixed by the params: γ_t read off the optimizer."""
  params = {"dense": {"kernel": jax.random.normal(jax.random.key(0), (6, 4))}}
  zeros = jax.tree.map(jnp.zeros_like, params)
  config = TrainConfig(optimizer="bort-adamw", gamma=0.5,
                       gamma_schedule="anneal", gamma_switch=0.5, epochs=1,
                       weight_decay=0.0, learning_rate=0.1,
                       bort_start_on_constraint=False)
  reference = optimizers.make_optimizer("bort-adamw", 0.1, gamma=1.0,
                                        weight_decay=0.0,
                                        start_on_constraint=False)
  unit, _ = reference.update(zeros, reference.init(params), params)
  tx = optimizers.optimizer_from_config(config, 0.1, steps_per_epoch=10)
  state = tx.init(params)
  seen = []
  for _ in range(10):
    updates, state = tx.update(zeros, state, params)
    seen.append(float(jnp.sum(updates["dense"]["kernel"])
                      / jnp.sum(unit["dense"]["kernel"])))
  want = [0.5] * 5 + [0.5, 0.4, 0.3, 0.2, 0.1]
  np.testing.assert_allclose(seen, want, rtol=1e-5)


# --- head exclusion ----------------------------------------------------


@pytest.mark.parametrize("name,shape,width", [
    ("mlp", (8, 8, 1), 16), ("invertible-mlp", (8, 8, 1), 16),
    ("cnn", (8, 8, 1), 4),
    pytest.param("resnet18", (16, 16, 3), 8, marks=pytest.mark.slow),
    ("vit", (16, 16, 3), 16),
    pytest.param("simple-cnn", (28, 28, 1), None, marks=pytest.mark.slow)])
def test_every_model_names_its_classifier_head(name, shape, width):
  model = models.make_model(name, shape, 7, width=width, rngs=nnx.Rngs(0))
  path = models.head_path(name, model)
  params = nnx.state(model, nnx.Param)
  prefix = models.head_prefix(name, model)
  kernels = jax.eval_shape(bort_jax.orthogonality_error, params)  # no math
  assert prefix + "/kernel" in kernels
  name_of = lambda p: jax.tree_util.keystr(p, simple=True, separator="/")
  head = jax.tree_util.tree_flatten_with_path(params)[0]
  shapes = {name_of(p): leaf.shape for p, leaf in head}
  assert shapes["/".join(map(str, path)) + "/kernel/value"][-1] == 7  # logits
  mask = jax.tree_util.tree_flatten_with_path(
      models.bort_mask(name, model, head=False)(params))[0]
  off = {name_of(p) for p, keep in mask if not keep}
  assert off == {prefix + "/kernel/value", prefix + "/bias/value"}
  _, errors = jax.eval_shape(lambda p: steps.orthogonality(p, (prefix,)),
                            params)
  assert set(errors) == set(kernels) - {prefix + "/kernel"}
  assert models.bort_mask(name, model, head=True) is None


def test_no_bort_head_leaves_the_head_to_the_base_optimizer():
  model, params = _mlp_and_params()
  grads = _grads(params)
  config = TrainConfig(optimizer="bort-adamw", gamma=0.5, bort_head=False,
                       bort_lr_scale=2.0, learning_rate=1e-2)
  tx = optimizers.optimizer_from_config(
      config, 1e-2, dimension_numbers=bort_jax.flax_dimension_numbers(model),
      bort_mask=models.bort_mask("mlp", model, head=False))
  bort, _ = tx.update(grads, tx.init(params), params)
  base = optax.adamw(1e-2)
  plain, _ = base.update(grads, base.init(params), params)
  np.testing.assert_array_equal(bort["head"]["kernel"],
                                plain["head"]["kernel"])
  assert not np.allclose(bort["hidden"][0]["kernel"],
                         plain["hidden"][0]["kernel"])


@pytest.mark.parametrize("optimizer", ["bort-adamw", "adamw"])
def test_no_bort_head_keeps_the_head_out_of_the_orthogonality_metrics(
    digits, tmp_path, optimizer):
  # A baseline too: its error was over the head as well, so a Bort run and
  # its baseline were measured on other kernels.
  config = TrainConfig(optimizer=optimizer, bort_head=False,
                       **dict(SMALL, model="mlp"))
  result = train(config, str(tmp_path / "run"), dataset=digits)
  with open(os.path.join(result.run_dir, "metrics.json")) as f:
    summary = json.load(f)["summary"]["orthogonality"]
  assert "head/kernel" not in summary
  assert set(summary) == {"hidden/0/kernel", "hidden/1/kernel"}
  params = nnx.state(result.model, nnx.Param)
  assert "head/kernel" in bort_jax.orthogonality_error(params)  # it exists
  mean, _ = steps.orthogonality(params, ("head",))
  assert result.history[-1]["constraint_error"] == pytest.approx(
      float(mean.constraint_error))


# --- config and command line -------------------------------------------


def test_levers_round_trip_through_config_json():
  config = TrainConfig(optimizer="bort-sgd", init="orthogonal",
                       bort_lr_scale=2.5, gamma_schedule="late",
                       gamma_switch=0.5, gamma_late_factor=0.0,
                       bort_head=False)
  values = json.loads(config.to_json())
  assert {k: values[k] for k in ("init", "bort_lr_scale", "gamma_schedule",
                                 "gamma_switch", "gamma_late_factor",
                                 "bort_head")} == {
      "init": "orthogonal", "bort_lr_scale": 2.5, "gamma_schedule": "late",
      "gamma_switch": 0.5, "gamma_late_factor": 0.0, "bort_head": False}
  assert TrainConfig.from_json(config.to_json()) == config
  # A config.json written before the levers reads back with their defaults.
  old = {k: v for k, v in TrainConfig().to_dict().items()
         if k not in ("init", "bort_lr_scale", "gamma_schedule",
                      "gamma_switch", "gamma_late_factor", "bort_head")}
  assert TrainConfig.from_dict(old) == TrainConfig()


@pytest.mark.parametrize("values,message", [
    (dict(init="xavier"), "init must be one of"),
    (dict(bort_lr_scale=0.0), "bort_lr_scale must be > 0"),
    (dict(bort_lr_scale=1e-40), "bort_lr_scale 1e-40 is 0 in float32"),
    (dict(gamma_schedule="cosine"), "gamma_schedule must be one of"),
    (dict(gamma_schedule="late", gamma_switch=0.0), "gamma_switch must be"),
    (dict(gamma_schedule="late", gamma_switch=1.5), "gamma_switch must be"),
    (dict(gamma_schedule="late", gamma_late_factor=2.0),
     "gamma_late_factor must be"),
    (dict(bort_head="no"), "bort_head must be true or false"),
    (dict(gamma_switch=0.5), "gamma_switch applies to gamma_schedule late"),
    (dict(gamma_schedule="anneal", gamma_late_factor=0.5),
     "gamma_late_factor applies to gamma_schedule late only"),
    (dict(optimizer="adamw", bort_lr_scale=2.0),
     "bort_lr_scale applies to Bort optimizers only"),
    (dict(optimizer="adamw", gamma_schedule="late"),
     "gamma_schedule applies to Bort optimizers only"),
    (dict(bort_lagged="yes"), "bort_lagged must be true or false"),
    (dict(bort_start_on_constraint=1),
     "bort_start_on_constraint must be true or false"),
    (dict(optimizer="adamw", bort_start_on_constraint=False),
     "bort_start_on_constraint applies to Bort optimizers only"),
    (dict(optimizer="adamw", bort_lagged=True),
     "bort_lagged applies to Bort optimizers only"),
    (dict(tau=0.003), "tau applies to the huber modes only"),
    (dict(mode="huber-fullrow", tau=0.0), "tau must be"),
    (dict(mode="huber-fullrow", tau=None), "tau must be a real number"),
    (dict(gamma_warmup=5.0, epochs=1),
     "gamma_warmup of 5 epochs is longer than the run"),
    (dict(gamma_warmup=1e30), "gamma_warmup of 1e\\+30 epochs is longer"),
    (dict(dbort_weight=1e300), "dbort_weight 1e\\+300 is inf in float32"),
    (dict(bort_lagged=True), "bort_lagged holds a correction computed every"),
    (dict(optimizer="adamw", momentum=0.5),
     "momentum applies to sgd and bort-sgd only"),
    (dict(optimizer="lbfgs"), "optimizer 'lbfgs' cannot be trained by"),
    (dict(optimizer="bort-lbfgs"),
     "optimizer 'bort-lbfgs' cannot be trained by"),
    # It trained and was evaluated on the wrong weights (not the average).
    (dict(optimizer="schedule_free_adamw", learning_rate=1e-3),
     "optimizer 'schedule_free_adamw' cannot be trained by bort-jax: it "
     "keeps weights of its own \\(schedule-free's z\\)"),
    (dict(optimizer="adamw", tau=0.003), "tau applies to Bort optimizers"),
])
def test_levers_refuse_bad_values_naming_the_field(values, message):
  with pytest.raises(ConfigError, match=message):
    TrainConfig(**values)


def test_a_baseline_takes_init_and_bort_head():
  assert TrainConfig(optimizer="adamw", init="orthogonal").init == "orthogonal"
  assert not TrainConfig(optimizer="sgd", init="orthogonal",
                         bort_head=False).bort_head
  assert not TrainConfig(optimizer="adamw", bort_head=False).bort_head


def test_bort_lagged_reaches_the_optimizer_and_its_report():
  config = TrainConfig(optimizer="bort-adamw", bort_every=4, bort_lagged=True,
                       learning_rate=1e-3, gamma=1.0)
  params = {"kernel": jnp.eye(3) * 2.0}
  tx = optimizers.make_optimizer(
      config.optimizer, 1e-3, gamma=1.0, every=config.bort_every,
      lagged=config.bort_lagged)
  held = [s for s in jax.tree.leaves(
      tx.init(params), is_leaf=lambda x: hasattr(x, "deltas"))
      if hasattr(s, "deltas")]
  assert len(held) == 1 and held[0].deltas["kernel"].shape == (3, 3)
  line, warnings = optimizers.strength_report(config)
  assert "with Delta computed every 4 steps" in line and not warnings
  burst, _ = optimizers.strength_report(
      dataclasses.replace(config, bort_lagged=False))
  assert "applied as 4 x 0.001 every 4 steps" in burst
  assert TrainConfig.from_json(config.to_json()).bort_lagged


@pytest.mark.parametrize("optimizer", ["bort-adamw", "bort-sgd", "bort-lion"])
def test_bort_start_on_constraint_reaches_the_optimizer(optimizer):
  """The first step of the config's optimizer lands on the constraint."""
  params = {"kernel": jnp.asarray(
      np.random.default_rng(0).normal(size=(12, 5)), jnp.float32)}
  grads = jax.tree.map(jnp.zeros_like, params)

  def error_after_one_step(start):
    config = TrainConfig(optimizer=optimizer, bort_start_on_constraint=start)
    tx = optimizers.optimizer_from_config(config, config.learning_rate)
    updates, _ = tx.update(grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    return float(bort_jax.mean_orthogonality_error(
        bort_jax.orthogonality_error(new)).constraint_error)

  assert error_after_one_step(True) < 1e-5
  assert error_after_one_step(False) > 0.1
  config = TrainConfig(optimizer=optimizer, bort_start_on_constraint=True)
  assert TrainConfig.from_json(config.to_json()).bort_start_on_constraint


def test_the_config_s_start_is_the_placement_s_and_old_configs_read_false():
  assert TrainConfig(optimizer="bort-adamw").bort_start_on_constraint is True
  assert TrainConfig(optimizer="bort-lion").bort_start_on_constraint is True
  assert TrainConfig(optimizer="bort-sgd").bort_start_on_constraint is False
  assert TrainConfig(optimizer="bort-lion", placement="coupled"
                     ).bort_start_on_constraint is False
  assert TrainConfig(optimizer="adamw").bort_start_on_constraint is None
  saved = TrainConfig(optimizer="bort-adamw").to_dict()
  del saved["bort_start_on_constraint"]  # a run folder of an earlier version
  assert TrainConfig.from_dict(saved).bort_start_on_constraint is False
  baseline = TrainConfig(optimizer="adamw").to_dict()
  del baseline["bort_start_on_constraint"]
  assert TrainConfig.from_dict(baseline).bort_start_on_constraint is None


def test_tau_reaches_the_optimizer_of_a_huber_run():
  """The config's tau is the alias's: the same update as bort_adamw(tau=)."""
  # Near the constraint, where the two widths clip differently.
  params = {"kernel": jnp.array([[1.0, 0.002], [0.0, 1.0], [0.0, 0.0]])}
  grads = jax.tree.map(jnp.zeros_like, params)
  config = TrainConfig(optimizer="bort-adamw", mode="huber-fullrow",
                       tau=0.003, learning_rate=1e-3)
  tx = optimizers.optimizer_from_config(config, 1e-3)
  expected = bort_jax.bort_adamw(1e-3, mode="huber-fullrow", tau=0.003)
  default = bort_jax.bort_adamw(1e-3, mode="huber-fullrow")
  got = tx.update(grads, tx.init(params), params)[0]["kernel"]
  want = expected.update(grads, expected.init(params), params)[0]["kernel"]
  other = default.update(grads, default.init(params), params)[0]["kernel"]
  np.testing.assert_allclose(got, want, rtol=1e-6)
  assert float(jnp.abs(got - other).max()) > 1e-6  # tau is not ignored
  assert TrainConfig.from_json(config.to_json()).tau == 0.003


def test_tau_step_reaches_the_optimizer_from_the_command_line():
  """--tau step is the alias's tau="step" (the zone follows lr·γ), saved
  and read back; a mistyped width is one line naming tau."""
  args = cli.build_parser().parse_args(
      ["train", "--optimizer", "bort-adamw", "--mode", "huber-fullrow",
       "--tau", "step", "--bort-every", "4", "--out", "x"])
  assert (args.tau, args.bort_every) == ("step", 4)
  config = TrainConfig(optimizer="bort-adamw", mode="huber-fullrow",
                       tau=args.tau, bort_every=args.bort_every)
  assert TrainConfig.from_json(config.to_json()).tau == "step"
  lr = optax.linear_schedule(1e-2, 1e-3, 8)
  tx = optimizers.optimizer_from_config(config, lr)
  expected = bort_jax.bort_adamw(lr, mode="huber-fullrow", every=4,
                                 tau=lambda n: 2.5 * 4 * lr(n))
  params = {"kernel": jnp.array([[1.0, 0.02], [0.0, 1.0], [0.0, 0.0]])}
  grads = jax.tree.map(jnp.zeros_like, params)
  got = tx.update(grads, tx.init(params), params)[0]["kernel"]
  want = expected.update(grads, expected.init(params), params)[0]["kernel"]
  np.testing.assert_allclose(got, want, rtol=1e-6)
  fixed = bort_jax.bort_adamw(lr, mode="huber-fullrow", every=4)
  other = fixed.update(grads, fixed.init(params), params)[0]["kernel"]
  assert float(jnp.abs(got - other).max()) > 1e-6  # "step" is not ignored
  with pytest.raises(ValueError, match="tau='step' follows"):
    TrainConfig(optimizer="bort-lion", placement="coupled",
                mode="huber-fullrow", tau="step")
  with pytest.raises(SystemExit):
    cli.build_parser().parse_args(["train", "--tau", "steps", "--out", "x"])


def test_strength_report_of_a_huber_run_names_tau_and_its_limits():
  """The Huber modes have the l1 modes' limits (the report raised KeyError,
  so `bort-jax train --mode huber-fullrow` ended in a traceback)."""
  line, warnings = optimizers.strength_report(TrainConfig(
      optimizer="bort-adamw", mode="huber-fullrow", tau="step",
      bort_every=8))
  assert "huber-fullrow" in line and "tau step" in line
  assert "applied as 8 x 0.001 every 8 steps" in line and not warnings
  _, warnings = optimizers.strength_report(TrainConfig(
      optimizer="bort-adamw", mode="huber-fullrow", gamma=20.0))
  assert len(warnings) == 1
  assert "per-step huber correction of 0.02 is above 0.01" in warnings[0]


def test_strength_report_names_the_levers():
  line, _ = optimizers.strength_report(TrainConfig(
      optimizer="bort-adamw", gamma=0.1, learning_rate=1e-3,
      gamma_schedule="late", bort_lr_scale=2.0, bort_head=False))
  assert "per-step correction ~ lr*gamma*bort_lr_scale = 0.0002" in line
  assert "gamma late: 0.01 until 80% of the steps, then 0.1" in line
  assert "Bort kernels' learning rate x2" in line
  assert "classifier head not constrained" in line
  plain, _ = optimizers.strength_report(TrainConfig(
      optimizer="bort-adamw", gamma=0.1, learning_rate=1e-3))
  assert "late" not in plain and "x2" not in plain and "head" not in plain
  annealed, _ = optimizers.strength_report(TrainConfig(
      optimizer="bort-adamw", gamma_schedule="anneal", gamma_switch=0.5))
  assert "until 50% of the steps, then linear to 0 at the end" in annealed


def test_cli_trains_with_the_lever_flags(digits, tmp_path, capsys):
  out = str(tmp_path / "run")
  argv = ["train", "--data", "digits", "--model", "mlp", "--width", "16",
          "--batch-size", "128", "--init", "orthogonal", "--gamma-schedule",
          "late", "--bort-lr-scale", "2", "--no-bort-head", "--epochs", "1",
          "--offline", "--no-progress", "--out", out]
  assert cli.main(argv) == 0
  stdout = capsys.readouterr().out
  assert "gamma late:" in stdout and "classifier head not constrained" in stdout
  with open(os.path.join(out, "config.json")) as f:
    saved = json.load(f)
  assert (saved["init"], saved["gamma_schedule"], saved["bort_lr_scale"],
          saved["bort_head"]) == ("orthogonal", "late", 2.0, False)
  with open(os.path.join(out, "metrics.json")) as f:
    assert "head/kernel" not in json.load(f)["summary"]["orthogonality"]
  # --bort-head gives True back, and a resume takes the saved flags.
  args = cli.build_parser().parse_args(["train", "--bort-head", "--out", out])
  assert args.bort_head is True
  assert cli.main(["train", "--out", out, "--resume", "--no-progress",
                   "--offline", "--no-bort-head"]) == 0


@pytest.mark.parametrize("flags,message", [
    (["--bort-lr-scale", "2"], "--bort-lr-scale applies to Bort optimizers"),
    (["--gamma-schedule", "anneal"],
     "--gamma-schedule applies to Bort optimizers"),
    (["--bort-lagged"], "--bort-lagged applies to Bort optimizers"),
])
def test_cli_refuses_bort_lever_flags_for_a_baseline(tmp_path, capsys, flags,
                                                     message):
  out = tmp_path / "run"
  with pytest.raises(SystemExit) as info:
    cli.main(["train", "--optimizer", "adamw", *flags, "--out", str(out)])
  assert info.value.code == 2
  err = capsys.readouterr().err
  assert message in err and len(err.strip().splitlines()) == 1
  assert not out.exists()


@pytest.mark.parametrize("init", [[], ["--init", "orthogonal"]])
def test_cli_lets_a_baseline_leave_the_head_out(tmp_path, init):
  out = str(tmp_path / "run")
  args = cli.build_parser().parse_args(
      ["train", "--optimizer", "adamw", *init, "--no-bort-head", "--out",
       out])
  config = cli._config_from_args(cli.build_parser(), args)
  assert (config.init, config.bort_head) == (
      init[1] if init else "default", False)
