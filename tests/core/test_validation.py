"""Every bad argument fails at construction, naming the argument and the fix."""

import typing

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bort_jax
from bort_jax._src import validation


# ---- the shared checkers (used by the application and DBort too) ----------

def test_generic_checkers_accept_numpy_scalars_and_refuse_bools():
  assert validation.check_positive_int("steps", np.int64(3)) == 3
  assert validation.check_nonnegative_int("seed", 0) == 0
  assert validation.check_real("lr", np.float32(0.5), low=0) == 0.5
  assert validation.check_choice("split", "train", ("train", "test")) == "train"
  with pytest.raises(TypeError, match="steps must be a positive integer"):
    validation.check_positive_int("steps", True)
  with pytest.raises(ValueError, match="steps must be a positive integer"):
    validation.check_positive_int("steps", 0)
  with pytest.raises(TypeError, match="steps must be a positive integer"):
    validation.check_positive_int("steps", 2.0)
  with pytest.raises(ValueError, match="seed must be a non-negative integer"):
    validation.check_nonnegative_int("seed", -1)
  with pytest.raises(TypeError, match="lr must be a real number"):
    validation.check_real("lr", False)
  with pytest.raises(ValueError, match="lr must be a scalar"):
    validation.check_real("lr", np.ones(2))
  with pytest.raises(ValueError, match="lr must be a finite number"):
    validation.check_real("lr", float("inf"))
  with pytest.raises(ValueError, match=r"beta must be > 0 and < 1, got 1"):
    validation.check_real("beta", 1, low=0, high=1, low_inclusive=False,
                          high_inclusive=False)
  with pytest.raises(ValueError, match="split must be one of 'train'"):
    validation.check_choice("split", "val", ("train", "test"))


def test_wrong_types_are_type_errors_that_value_error_also_catches():
  with pytest.raises(TypeError):
    validation.check_strength("big")
  with pytest.raises(ValueError):
    validation.check_strength("big")


# ---- Bort's scalars --------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    (dict(gamma=float("inf")), "gamma must be >= 0 and finite"),
    (dict(gamma=1e300), "gamma = 1e\\+300 overflows float32"),
    (dict(gamma=np.array([0.1, 0.2])), "gamma must be a scalar"),
    (dict(gamma=True), "gamma must be a number or a schedule"),
    (dict(gamma=0.1, amplitude=1e300), "amplitude.*overflows float32"),
    (dict(gamma=0.1, amplitude=1e-50), "amplitude.*is zero in float32"),
    (dict(gamma=0.1, amplitude=float("inf")), "amplitude must be a positive"),
    (dict(gamma=0.1, mode=3), "valid modes are"),
])
def test_bort_scalars_are_checked_in_the_compute_dtype(kwargs, message):
  with pytest.raises(ValueError, match=message):
    bort_jax.add_bort_correction(**kwargs)
  with pytest.raises(ValueError, match=message):
    bort_jax.bort_sgd(0.1, **kwargs)
  # with_bort calls its strength `strength` (per step), the others `gamma`.
  kwargs = {("strength" if k == "gamma" else k): v for k, v in kwargs.items()}
  with pytest.raises(ValueError, match=message.replace("gamma", "strength")):
    bort_jax.with_bort(optax.sgd(0.1), **kwargs)


def test_traced_and_scheduled_values_pass_unchecked():
  # Documented: values produced by a schedule or traced under
  # inject_hyperparams cannot be checked at construction, and are applied as
  # they are: a negative γ adds −Δ (anti-orthogonalises).
  params = {"kernel": 2 * jnp.eye(2)}
  delta = bort_jax.tree_correction(params)["kernel"]  # (4 − 1) · 2 · I
  zeros = {"kernel": jnp.zeros((2, 2))}
  scheduled = bort_jax.add_bort_correction(lambda count: -1.0)
  updates, _ = scheduled.update(zeros, scheduled.init(params), params)
  np.testing.assert_allclose(updates["kernel"], -delta)
  injected = optax.inject_hyperparams(bort_jax.bort_sgd)(
      learning_rate=0.1, gamma=0.1, start_on_constraint=False)
  params = {"kernel": jnp.array([[2.0, 0.0], [1.0, 1.0]])}  # off "ada"'s
  delta = bort_jax.tree_correction(params, "l1-fullrow", "ada")["kernel"]
  assert float(jnp.abs(delta).max()) > 0
  state = injected.init(params)
  state.hyperparams["gamma"] = jnp.asarray(-1.0)
  updates, _ = jax.jit(injected.update)(zeros, state, params)
  # Bort-SGD, first step: −lr · (g + γΔ) with g = 0 and γ = −1.
  np.testing.assert_allclose(updates["kernel"], 0.1 * delta, rtol=1e-6)


@pytest.mark.parametrize("options, error, message", [
    ({"block_size": 4}, TypeError, "must be a bort_jax.KernelOptions"),
    (bort_jax.KernelOptions(block_size=0), ValueError,
     "block_size must be a positive int"),
    (bort_jax.KernelOptions(block_size=2.5), TypeError,
     "block_size must be a positive int"),
    (bort_jax.KernelOptions(precision="fastest-ever"), ValueError,
     "precision must be None, a jax.lax.Precision"),
    (bort_jax.KernelOptions(gram_dtype="not-a-dtype"), TypeError,
     "gram_dtype must be a dtype"),
    (bort_jax.KernelOptions(gram_dtype=jnp.complex64), ValueError,
     "gram_dtype must be a floating dtype"),
    (bort_jax.KernelOptions(batch_products="yes"), TypeError,
     "batch_products must be True or False"),
])
def test_kernel_options_are_checked_at_construction(options, error, message):
  with pytest.raises(error, match=message):
    bort_jax.add_bort_correction(0.1, kernel_options=options)
  with pytest.raises(error, match=message):
    bort_jax.bort_adamw(1e-3, gamma=0.1, kernel_options=options)


def test_numpy_block_size_is_accepted():
  tx = bort_jax.add_bort_correction(
      0.1, "l1-fullrow", kernel_options=bort_jax.KernelOptions(
          block_size=np.int64(2)))
  params = {"kernel": jnp.asarray(np.random.default_rng(0).normal(size=(3, 5)),
                                  jnp.float32)}
  updates, _ = tx.update(params, tx.init(params), params)
  assert updates["kernel"].shape == (3, 5)


# ---- the optax-side scalars of the aliases ---------------------------------

@pytest.mark.parametrize("make, message", [
    (lambda: bort_jax.bort_sgd("0.1", gamma=0.1),
     "learning_rate must be a number or a schedule"),
    (lambda: bort_jax.bort_sgd(-0.1, gamma=0.1), "learning_rate must be >= 0"),
    (lambda: bort_jax.bort_sgd(0.1, 1.5, gamma=0.1),
     "momentum must be >= 0 and < 1"),
    (lambda: bort_jax.bort_sgd(0.1, 0.9, "yes", gamma=0.1),
     "nesterov must be True or False"),
    (lambda: bort_jax.bort_sgd(0.1, gamma=0.1, weight_decay=-1.0),
     "weight_decay must be >= 0"),
    (lambda: bort_jax.bort_sgd(0.1, 0.9, False, "bad", gamma=0.1),
     "accumulator_dtype must be a dtype"),
    (lambda: bort_jax.bort_adamw(float("nan"), gamma=0.1),
     "learning_rate must be >= 0 and finite"),
    (lambda: bort_jax.bort_adamw(1e-3, b1=1.0, gamma=0.1),
     "b1 must be >= 0 and < 1"),
    (lambda: bort_jax.bort_adamw(1e-3, b2=-0.1, gamma=0.1),
     "b2 must be >= 0 and < 1"),
    (lambda: bort_jax.bort_adamw(1e-3, eps=-1e-8, gamma=0.1),
     "eps must be >= 0"),
    (lambda: bort_jax.bort_adamw(1e-3, eps_root=float("inf"), gamma=0.1),
     "eps_root must be >= 0 and finite"),
    (lambda: bort_jax.bort_adamw(1e-3, weight_decay="0.1", gamma=0.1),
     "weight_decay must be a number or a schedule"),
])
def test_aliases_check_their_optax_scalars(make, message):
  with pytest.raises(ValueError, match=message):
    make()


# ---- with_bort -------------------------------------------------------------

def test_with_bort_refuses_a_factory_and_names_the_fix():
  with pytest.raises(TypeError, match=r"call the factory first, e.g. "
                     r"with_bort\(optax.lion\(...\)"):
    bort_jax.with_bort(optax.lion, strength=0.1)
  with pytest.raises(TypeError, match="needs an optax.GradientTransformation"):
    bort_jax.with_bort({"init": None}, strength=0.1)


def test_with_bort_takes_no_learning_rate_in_either_placement():
  for placement in ("coupled", "decoupled"):
    with pytest.raises(TypeError, match="learning_rate"):
      bort_jax.with_bort(optax.sgd(0.1), strength=0.1, placement=placement,
                         learning_rate=0.1)


# ---- one meaning per name --------------------------------------------------

def test_mode_literal_and_modes_agree():
  assert bort_jax.MODES == typing.get_args(bort_jax.Mode)
  assert len(bort_jax.MODES) == 9  # the seven published ones and two Huber


def test_bort_mask_is_the_bort_selection_everywhere():
  params = {"a": {"kernel": 2 * jnp.eye(2)}, "b": {"kernel": 2 * jnp.eye(2)}}
  only_b = {"a": {"kernel": False}, "b": {"kernel": True}}
  zeros = jax.tree.map(jnp.zeros_like, params)
  l2 = dict(mode="l2-full", amplitude=1.0)  # 2I is off the constraint
  for tx in [bort_jax.add_bort_correction(1.0, bort_mask=only_b),
             bort_jax.with_bort(optax.sgd(1.0), strength=1.0, bort_mask=only_b,
                                **l2),
             bort_jax.bort_sgd(1.0, gamma=1.0, bort_mask=only_b, **l2),
             bort_jax.bort_adamw(1.0, gamma=1.0, weight_decay=0.0,
                                 bort_mask=only_b, **l2)]:
    updates, _ = tx.update(zeros, tx.init(params), params)
    assert bool(jnp.all(updates["a"]["kernel"] == 0))
    assert not bool(jnp.all(updates["b"]["kernel"] == 0))
  with pytest.raises(TypeError):
    bort_jax.with_bort(optax.sgd(1.0), strength=1.0, mask=only_b)
  with pytest.raises(TypeError):
    bort_jax.add_bort_correction(1.0, mask=only_b)


def test_bort_sgd_takes_optax_sgd_positionals():
  params = {"kernel": jnp.ones((3, 2))}
  tx = bort_jax.bort_sgd(0.1, 0.9, False, jnp.bfloat16, gamma=0.0)
  state = tx.init(params)
  trace = [s for s in jax.tree.leaves(state) if s.shape == (3, 2)]
  assert [t.dtype for t in trace] == [jnp.bfloat16]
  with pytest.raises(TypeError):
    bort_jax.bort_sgd(0.1, 0.9, False, jnp.bfloat16, 0.01, gamma=0.0)


def test_kernel_options_name_everywhere():
  w = jnp.array([[2.0, 0.0], [0.0, 1.0]])
  options = bort_jax.KernelOptions(precision="highest")
  np.testing.assert_allclose(
      bort_jax.bort_correction(w, kernel_options=options),
      bort_jax.tree_correction({"kernel": w.T}, kernel_options=options)[
          "kernel"].T)
  with pytest.raises(TypeError):
    bort_jax.bort_correction(w, options=options)


def test_the_strength_rule_checks_its_arguments():
  # A misspelt placement returned 1, turning the limit's k off silently.
  from bort_jax.validation import steps_per_application as rule
  assert rule(8, False, "decoupled") == 8
  with pytest.raises(ValueError, match="placement must be one of"):
    rule(8, False, "Decoupled")
  with pytest.raises(ValueError, match="every must be a positive integer"):
    rule(0, False, "decoupled")
  with pytest.raises(TypeError, match="every must be a positive integer"):
    rule(2.5, False, "decoupled")
  with pytest.raises(TypeError, match="lagged must be"):
    rule(8, "no", "decoupled")


def test_errors_found_late_name_the_argument():
  params = {"kernel": jnp.ones((6, 4)) + jnp.eye(6, 4)}
  # An axis name no shard_map binds failed as "unbound axis name" in JAX.
  options = bort_jax.KernelOptions(axis_name="data")
  for tx in (bort_jax.bort_adamw(1e-3, kernel_options=options),
             bort_jax.start_on_constraint(kernel_options=options)):
    with pytest.raises(ValueError, match="kernel_options.axis_name is 'data'"
                       ", which is not bound here"):
      tx.update(params, tx.init(params), params)
  # One c per matrix that does not fit the stack failed in lax.broadcast.
  for fn in (bort_jax.bort_correction, bort_jax.bort_penalty):
    with pytest.raises(ValueError, match=r"amplitude has shape \(2,\), which "
                       r"does not broadcast to the batch of matrices \(3,\)"):
      fn(jnp.ones((3, 2, 4)), "l2-full", jnp.array([1.0, 2.0]))
  np.testing.assert_allclose(  # a fitting one is still one c per matrix
      bort_jax.bort_correction(jnp.ones((2, 2, 4)), "l2-full",
                               jnp.array([1.0, 2.0]))[1],
      bort_jax.bort_correction(jnp.ones((2, 4)), "l2-full", 2.0))
  with pytest.raises(ValueError, match="amplitude must be a number, a scalar "
                     r"array or 'ada' .* got an array of shape \(2,\)"):
    bort_jax.tree_correction(params, "l2-full", jnp.array([1.0, 2.0]))
