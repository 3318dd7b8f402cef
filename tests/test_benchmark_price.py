"""Issue 17 (price), items 2 and 4: what the benchmarks measure and predict."""

import inspect
import json
import sys
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

import bort_jax

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import step_overhead  # noqa: E402
import train_step  # noqa: E402


def test_i17_2_floor_of_a_square_dense_layer_is_2m_over_3b():
  # The square MLP 784-784-784-10 at batch 128: l1-fullrow costs 2·m²·n per
  # layer against 3·B·m·n forward and backward, 2m/(3B) ≈ 4.08 on the
  # square layers; the 10-unit head adds little to either side.
  model = train_step.models_lib.make_model("mlp", (28, 28, 1), 10, width=784,
                                           rngs=nnx.Rngs(0))
  costs = train_step.layer_costs(model, (28, 28, 1))
  assert sorted((r["m"], r["n"], r["positions"], r["bort"]) for r in costs) == [
      (10, 784, 1, True), (784, 784, 1, True), (784, 784, 1, True)]
  floor = train_step.arithmetic_floor(costs, 128, "l1-fullrow")
  bort = 2 * 2 * 784**3 + 2 * 10**2 * 784
  step = 3 * 128 * (2 * 784**2 + 784 * 10)
  assert floor["added"] == pytest.approx(bort / step)
  assert floor["added"] == pytest.approx(2 * 784 / (3 * 128), rel=0.01)
  # l2-full takes the smaller Gram (the head's 10×10); every=4 divides it.
  l2 = train_step.arithmetic_floor(costs, 128, "l2-full", every=4)
  assert l2["bort_macs"] == (2 * 2 * 784**3 + 2 * 10 * 10 * 784) / 4
  assert train_step.arithmetic_floor(costs, 128, "l2-row")["added"] == 0


class _Conv(nnx.Module):
  def __init__(self):
    self.conv = nnx.Conv(1, 4, (3, 3), strides=(2, 2), padding="SAME",
                         rngs=nnx.Rngs(0))
    self.head = nnx.Linear(4 * 4 * 4, 10, rngs=nnx.Rngs(1))

  def __call__(self, x):
    return self.head(self.conv(x).reshape(x.shape[0], -1))


def test_i17_2_conv_floor_counts_its_output_positions():
  # A stride-2 conv on 8×8 is applied at 4·4 positions: 3·B·16·m·n.
  costs = {r["path"]: r for r in train_step.layer_costs(_Conv(), (8, 8, 1))}
  assert (costs["conv"]["m"], costs["conv"]["n"],
          costs["conv"]["positions"]) == (4, 9, 16)
  assert costs["head"]["positions"] == 1
  floor = train_step.arithmetic_floor(list(costs.values()), 2, "l1-fullrow")
  assert floor["step_macs"] == 3 * 2 * (16 * 4 * 9 + 64 * 10)
  assert floor["bort_macs"] == 2 * 4 * 4 * 9 + 2 * 10 * 10 * 64


def test_i17_2_recommended_default_is_read_at_run_time(monkeypatch):
  # Not a copy: a changed RECOMMENDED or signature literal changes it.
  def alias(learning_rate, *, gamma=None, mode=None, amplitude=None,
            every=4, tau=0.05):
    del learning_rate, gamma, mode, amplitude, every, tau
  record = types.SimpleNamespace(mode="huber-fullrow", amplitude="ada",
                                 gamma=0.5)
  monkeypatch.setitem(train_step.ALIASES, "adamw", (alias, "decoupled"))
  monkeypatch.setattr(train_step.bort_jax, "RECOMMENDED",
                      {"decoupled": record})
  assert train_step.recommended_setting("adamw") == dict(
      gamma=0.5, mode="huber-fullrow", amplitude="ada", every=4, tau=0.05)
  assert train_step.describe(train_step.recommended_setting("adamw")) == (
      "huber-fullrow ada γ=0.5 every=4 tau=0.05")
  assert train_step.describe(dict(mode="huber-fullrow", amplitude="ada",
                                  every=8, tau="step")) == (
      "huber-fullrow ada every=8 tau=step")


def test_i17_2_recommended_matches_the_library_now():
  for base, placement in (("adamw", "decoupled"), ("sgd", "coupled")):
    setting = train_step.recommended_setting(base)
    alias = train_step.ALIASES[base][0]
    literal = inspect.signature(alias).parameters["mode"].default
    expected = literal if literal is not None else (
        train_step.bort_jax.RECOMMENDED[placement].mode)
    assert setting["mode"] == expected


@pytest.mark.slow
def test_i17_2_recommended_run_prints_the_floor_beside_the_measured(
    tmp_path, capsys):
  out = tmp_path / "steps.json"
  train_step.main(["--models", "mlp", "--width", "mlp=16", "--optimizers",
                   "adamw", "--configs", "recommended", "--every", "2",
                   "--steps", "2", "--repeats", "1", "--json", str(out)])
  rows = json.loads(out.read_text())["rows"]
  mode = train_step.recommended_setting("adamw")["mode"]
  assert [r["config"].split(" = ")[0] for r in rows] == [
      "recommended", "recommended every=2"]
  assert all(r["config"].split(" = ")[1].startswith(mode) for r in rows)
  assert rows[1]["floor_added"] == pytest.approx(rows[0]["floor_added"] / 2)
  assert "| floor added |" in capsys.readouterr().out


def test_i17_2_bad_configs_and_bases_are_one_line_before_any_write(tmp_path):
  out = tmp_path / "steps.json"
  with pytest.raises(SystemExit, match="unknown --configs"):
    train_step.main(["--configs", "l3-full", "--json", str(out)])
  with pytest.raises(SystemExit, match="needs --optimizers from"):
    train_step.main(["--optimizers", "lion", "--json", str(out)])
  with pytest.raises(SystemExit, match="positive integers"):
    train_step.main(["--every", "0", "--json", str(out)])
  assert not out.exists()


@pytest.mark.parametrize("script, argv", [
    # Negative times, "+nan%", a StatisticsError, a KeyError traceback.
    ("train_step", ["--steps", "-3"]), ("train_step", ["--batch", "0"]),
    ("train_step", ["--repeats", "0"]), ("step_overhead", ["--repeats", "0"]),
    ("step_overhead", ["--sets", "bogus"]),
    ("step_overhead", ["--configs", "bogus"])])
def test_the_benchmarks_refuse_counts_and_names_in_one_line(capsys, script,
                                                            argv):
  module = {"train_step": train_step, "step_overhead": step_overhead}[script]
  with pytest.raises(SystemExit) as info:
    module.main(argv)
  assert info.value.code == 2
  err = capsys.readouterr().err.splitlines()
  assert ": error: " in err[-1] and argv[0] in err[-1], err  # prog: pytest's


def test_i17_4_step_overhead_times_calls_in_turn_with_an_aa_control(
    monkeypatch):
  # One function then the other, repeat by repeat: drift hits both.
  calls = []
  fns = {name: (lambda name=name: calls.append(name) or jnp.zeros(()), ())
         for name in ("base", "bort")}
  times = step_overhead.interleaved(fns, repeats=3, warmup=0)
  assert calls == ["base", "bort"] * 3
  assert [len(t) for t in times.values()] == [3, 3]
  assert step_overhead.paired_ratio([2.0, 9.0, 3.0], [1.0, 3.0, 2.0]) == 2.0
  # The whole measurement reports the A/A control beside each ratio.
  monkeypatch.setitem(step_overhead.param_sets.PARAM_SETS, "tiny",
                      lambda: {"fc": {"kernel": (8, 4), "bias": (4,)}})
  rows = step_overhead.measure("tiny", {"l2-row c=1": step_overhead.CONFIGS[
      "l2-row c=1"]}, repeats=2, matmul_rate=1e9, steps=1)
  assert {"aa_ratio", "identity_ms", "ratio"} <= set(rows[0])
  assert rows[0]["aa_ratio"] > 0 and rows[0]["ratio"] > 0


@pytest.mark.parametrize("mode", sorted(step_overhead.param_sets.PRODUCT_MACS))
@pytest.mark.parametrize("m, n", [(64, 256), (256, 64)])
def test_the_benchmarks_count_what_xla_counts_of_the_correction(mode, m, n):
  # The full row modes take the fan-in's Gram on more units than fan-in;
  # step_overhead and scaling counted the units' (4× too much at 256×64).
  def correction(w):
    return bort_jax.bort_correction(w, mode=mode)

  cost = jax.jit(correction).lower(jnp.ones((m, n))).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  counted = step_overhead.param_sets.matrix_flop(mode, m, n)
  # XLA also counts the elementwise work around the two products.
  assert 1.0 <= cost["flops"] / counted < 1.05, (cost["flops"], counted)
