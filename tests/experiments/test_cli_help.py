"""``bort-jax`` help, recipes list, errors and config.json (issue 19 item 7)."""

import json
import os
import subprocess
import sys

import pytest

from bort_jax.experiments import choices
from bort_jax.experiments import cli
from bort_jax.experiments import config as config_lib
from bort_jax.experiments import demo
from bort_jax.experiments import recipes
from bort_jax.experiments import train_folder
from bort_jax.experiments.config import TrainConfig


def _subparser(name):
  parser = cli.build_parser()
  sub = next(a for a in parser._actions if a.dest == "command")
  return sub.choices[name]


def _helps(name):
  return {a.option_strings[0]: a.help for a in _subparser(name)._actions
          if a.option_strings}


def test_every_train_flag_states_its_real_default():
  helps = _helps("train")
  for flag, text in helps.items():
    assert "the default)" not in text, (flag, text)
    assert "DEFAULT_LEARNING_RATES" not in text, (flag, text)
  for name in config_lib.field_names():
    field = TrainConfig.__dataclass_fields__[name]
    flag = field.metadata.get("flag") or "--" + name.replace("_", "-")
    assert "default:" in helps[flag], (flag, helps[flag])
  assert "sgd and bort-sgd 0.05" in helps["--lr"]
  assert "l1-fullrow for either placement" in helps["--mode"]
  assert "1.0 decoupled" in helps["--gamma"] and "0.003 coupled" in helps[
      "--gamma"]
  assert "(default: 0, no ramp)" in helps["--gamma-warmup"]
  assert "(default: decoupled;" in helps["--placement"]


def test_every_frontier_axis_names_its_own_shared_flag(capsys):
  """Every axis said "the shared --lr, else the optimizer's default"; a bad
  list item named argparse's inner function ("invalid parse value")."""
  helps = _helps("frontier")
  assert helps["--taus"].endswith("(default: the shared --tau)")
  assert helps["--inits"].endswith("(default: the shared --init)")
  assert helps["--lrs-decoupled"].endswith(
      "(default: the shared --lr, else the optimizer's default)")
  assert not any("--lr" in helps[f] for f in ("--taus", "--bort-laggeds",
                                               "--gamma-schedules"))
  with pytest.raises(SystemExit):
    cli.build_parser().parse_args(["frontier", "--out", "x", "--taus",
                                   "0.1,Step"])
  err = capsys.readouterr().err
  assert ("argument --taus: expected a number or 'step', got 'Step' (in the "
          "list '0.1,Step')") in err and "parse" not in err


def test_out_of_memory_is_one_line(capsys, monkeypatch):
  """XLA's RESOURCE_EXHAUSTED (--width 100000000000) printed 77 lines."""
  def exhausted(parser, args):
    raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to "
                       "allocate 400.00GiB.\nmore XLA lines")
  monkeypatch.setattr(cli, "_command", exhausted)
  with pytest.raises(SystemExit) as info:
    cli.main(["train", "--out", "x"])
  assert info.value.code == 2
  err = capsys.readouterr().err
  assert err == ("bort-jax train: error: out of memory (XLA: "
                 "RESOURCE_EXHAUSTED); lower --width, --batch-size or "
                 "--eval-batch-size, and start again with --overwrite.\n")


def test_the_jax_free_choices_are_the_code_s_names():
  from bort_jax.experiments import models
  assert choices.MODELS == models.MODELS


def test_each_choice_flag_takes_its_field_s_literal_type():
  # The choices come from the fields' Literal types, one definition each.
  import bort_jax
  from bort_jax.experiments import data as data_lib
  expected = {"data": data_lib.DATASETS, "model": choices.MODELS,
              "mode": bort_jax.MODES, "placement": ("coupled", "decoupled"),
              "gamma_schedule": choices.GAMMA_SCHEDULES,
              "schedule": choices.SCHEDULES, "dbort_on": ("logits", "layers"),
              "init": ("default", "orthogonal")}
  found = {name: config_lib.choices_of(name)
           for name in config_lib.field_names()
           if config_lib.choices_of(name) is not None}
  assert found == expected
  parser = cli.build_parser()
  for name, values in expected.items():
    flag = "--" + name.replace("_", "-")
    args = parser.parse_args(["train", "--out", "x", flag, values[-1]])
    assert getattr(args, name) == values[-1]
    with pytest.raises(SystemExit):
      parser.parse_args(["train", "--out", "x", flag, "not-a-choice"])


# What the application's parser modules import (the package's top level
# loads its names on first use, so it imports nothing heavy by itself).
_IMPORTS = """
import importlib, sys
for name in sys.argv[1:]:
  importlib.import_module(name)
print(sorted({m.split(".")[0] for m in sys.modules}
             & {"jax", "flax", "optax", "orbax", "tensorboardX"}))
"""


def test_the_parser_s_modules_import_no_jax():
  modules = ["bort_jax.experiments." + name for name in (
      "cli", "config", "choices", "recipes", "demo", "train_data", "frontier")]
  done = subprocess.run([sys.executable, "-c", _IMPORTS,
                         *modules], capture_output=True, text=True,
                        timeout=120)
  assert done.returncode == 0, done.stderr[-2000:]
  assert done.stdout.strip() == "[]"


@pytest.mark.slow
def test_build_parser_imports_no_jax():
  """What keeps ``bort-jax --help`` under a second (0.2 s on the 2-core VM):
  the top level loads its names on first use and the launch flags live in
  the JAX-free ``launch`` module."""
  done = subprocess.run(
      [sys.executable, "-c", "import sys; from bort_jax.experiments import "
       "cli; cli.build_parser(); print('jax' in sys.modules)"],
      capture_output=True, text=True, timeout=120)
  assert done.stdout.strip() == "False", done.stderr[-2000:]


def test_recipes_lists_each_recipe_with_its_description(capsys):
  assert cli.main(["recipes"]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) == len(recipes.RECIPES)
  for line, name in zip(lines, recipes.RECIPES):
    assert line.split()[0] == name
    assert line.endswith(recipes.DESCRIPTIONS[name])
  assert set(recipes.DESCRIPTIONS) == set(recipes.RECIPES)


def test_config_json_holds_the_values_the_run_uses():
  values = TrainConfig(optimizer="bort-lion").to_dict()
  assert values["placement"] == "decoupled"
  assert values["weight_decay"] == 1e-3  # optax.lion's default
  assert (values["mode"], values["amplitude"], values["gamma"],
          values["learning_rate"]) == ("l1-fullrow", "ada", 1.0, 1e-3)
  assert TrainConfig(optimizer="adamw").weight_decay == 1e-4
  assert TrainConfig(optimizer="bort-adamw").weight_decay == 1e-4
  assert TrainConfig(optimizer="sgd").weight_decay == 0.0
  assert TrainConfig(optimizer="adam").weight_decay is None  # it takes none


def test_a_config_json_with_nulls_still_resumes(tmp_path):
  # Written before the values were resolved: null meant the same defaults.
  config = TrainConfig(optimizer="bort-lion", epochs=1)
  old = config.to_dict()
  for name in ("placement", "weight_decay", "mode", "amplitude", "gamma",
               "learning_rate", "gamma_warmup", "bort_every"):
    old[name] = None
  out = tmp_path / "run"
  out.mkdir()
  (out / "config.json").write_text(json.dumps(old))
  assert TrainConfig.from_dict(old) == config
  folder, restore = train_folder.open_run(out, config, resume=True,
                                          overwrite=False)
  folder.close()
  assert restore is False  # no checkpoint yet: it starts from step 0


def test_value_error_names_the_subcommand_in_one_line(capsys, tmp_path):
  out = tmp_path / "run"
  with pytest.raises(SystemExit) as info:
    cli.main(["train", "--out", str(out), "--optimizer", "adamw",
              "--train-limit", "100000"])
  assert info.value.code == 2
  captured = capsys.readouterr()
  assert captured.err.splitlines() == [
      "bort-jax train: error: train_limit 100000 is above the 1347 training "
      "examples of 'digits'; use at most 1347, or drop it to train on all "
      "of them."]
  assert not out.exists()


def test_the_header_is_not_printed_before_a_folder_refusal(capsys, tmp_path):
  out = tmp_path / "run"
  out.mkdir()
  (out / "mine.txt").write_text("keep")
  with pytest.raises(SystemExit) as info:
    cli.main(["train", "--out", str(out), "--offline", "--no-progress"])
  assert info.value.code == 2
  captured = capsys.readouterr()
  assert captured.out == ""
  lines = captured.err.splitlines()
  assert lines == [
      f"bort-jax train: error: {str(out)!r} is not empty and is not a "
      "bort-jax training run (it has no config.json), so nothing in it is "
      "changed; choose another --out."], lines
  assert sorted(os.listdir(out)) == ["mine.txt"]


def test_demo_quick_help_states_the_epochs_it_runs():
  text = _helps("demo")["--epochs"]
  for data, quick in (("mnist", False), ("digits", False), ("mnist", True),
                      ("digits", True)):
    baseline, bort = demo.configs(data, quick, None, None, 0)
    assert baseline.epochs == bort.epochs == demo.default_epochs(data, quick)
  assert (f"with --quick {demo.QUICK_EPOCHS}, digits "
          f"{demo.QUICK_DIGITS_EPOCHS}") in text
  assert f"default: {demo.DEMO_EPOCHS}; digits {demo.DIGITS_EPOCHS}" in text


def test_demo_runs_start_from_the_same_orthogonal_weights():
  for data in ("mnist", "digits"):
    baseline, bort = demo.configs(data, False, None, None, 0)
    assert baseline.init == bort.init == "orthogonal"
    assert baseline.seed == bort.seed and baseline.width == bort.width


def test_demo_stopped_by_sigterm_exits_143(capsys, tmp_path, monkeypatch):
  from bort_jax.experiments import loop

  def stopped(config, run_dir, **kwargs):
    return loop.TrainResult(None, None, [], 3, False, run_dir, None,
                            "SIGTERM")
  monkeypatch.setattr(loop, "train", stopped)
  status = cli.main(["demo", "--data", "digits", "--quick", "--out",
                     str(tmp_path / "demo"), "--no-progress"])
  assert status == 143
  assert "Stopped by SIGTERM" in capsys.readouterr().err


def test_train_limit_above_a_given_dataset_is_refused():
  from bort_jax.experiments import data as data_lib
  from bort_jax.experiments import train_data
  digits = data_lib.load_splits("digits")
  held = train_data.validation_split(digits, 0.1)  # 1212 of 1347
  config = TrainConfig(train_limit=1300, batch_size=64)
  with pytest.raises(config_lib.ConfigError) as info:
    train_data.prepare(config, held)
  assert str(info.value) == (
      "train_limit 1300 is above the 1212 training examples of the data "
      "given; use at most 1212, or drop it to train on all of them.")
  within = TrainConfig(train_limit=1212, batch_size=64)
  assert train_data.prepare(within, held).steps_per_epoch == 1212 // 64
