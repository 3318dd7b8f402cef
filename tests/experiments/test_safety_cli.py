"""The command line refuses bad launches and settings in one line, up front.

One test per red-team finding of issue 15 on the command line and the
config (N6, N8, N9, M2, M7), plus the pass-through of the library's own
construction errors. Each runs ``bort-jax`` in-process on the tiny ``digits``
data and checks a non-zero exit, exactly one line on stderr, and no run
folder.
"""

import os
import socket
import subprocess
import sys
import time

import pytest

import bort_jax
from bort_jax.experiments import cli
from bort_jax.experiments import launch


@pytest.fixture(autouse=True)
def _no_launch_environment(monkeypatch):
  for name in launch.ENVIRONMENT.values():
    monkeypatch.delenv(name, raising=False)


def _train(out, *extra):
  return ["train", "--data", "digits", "--width", "8", "--epochs", "1",
          "--batch-size", "256", "--out", str(out), "--offline",
          "--no-progress", *extra]


def _refused(capsys, argv, message, out):
  """Asserts a non-zero exit, one stderr line holding ``message``, no folder.

  Returns:
    The captured stdout.
  """
  with pytest.raises(SystemExit) as info:
    cli.main(argv)
  assert info.value.code not in (0, None)
  captured = capsys.readouterr()
  lines = captured.err.splitlines()
  assert len(lines) == 1, captured.err
  assert message in lines[0], lines[0]
  assert not os.path.exists(out)
  return captured.out


def _unused_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_n6_unreachable_coordinator_is_one_line_after_the_timeout(
    capsys, tmp_path):
  port = _unused_port()
  out = tmp_path / "run"
  start = time.monotonic()
  printed = _refused(capsys, _train(
      out, "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
      "--process-id", "1", "--coordinator-timeout", "2"),
      f"no coordinator answered at 127.0.0.1:{port} within 2 s", out)
  waited = time.monotonic() - start
  assert printed.splitlines()[0] == (
      f"waiting up to 2 s for the coordinator at 127.0.0.1:{port} "
      "(process 1 of 2)...")
  assert 2 <= waited < 30  # the stated timeout, not jax's 300 s


@pytest.mark.parametrize("address", [
    "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:http", "127.0.0.1:",
    ":12355", "nonsense"])
def test_n6_invalid_coordinator_port_is_refused_at_once(
    capsys, tmp_path, address):
  out = tmp_path / "run"
  start = time.monotonic()
  _refused(capsys, _train(
      out, "--coordinator", address, "--num-processes", "2",
      "--process-id", "1", "--coordinator-timeout", "2"),
      "--coordinator must be HOST:PORT with a port in 1..65535", out)
  assert time.monotonic() - start < 2  # refused, not waited for


def test_n6_bad_coordinator_timeout_is_refused(capsys, tmp_path):
  out = tmp_path / "run"
  for value in ("0", "-3", "soon"):
    _refused(capsys, _train(out, "--coordinator-timeout", value),
             "expected a positive whole number of seconds", out)


@pytest.mark.slow
def test_n6_coordinator_left_alone_exits_in_one_line_not_an_abort(tmp_path):
  # Process 0 waits in jax.distributed, which aborts the process at its own
  # deadline: only a separate process can show the watchdog's exit.
  port = _unused_port()
  out = tmp_path / "run"
  argv = _train(out, "--coordinator", f"127.0.0.1:{port}",
                "--num-processes", "2", "--process-id", "0",
                "--coordinator-timeout", "2")
  done = subprocess.run(
      [sys.executable, "-m", "bort_jax.experiments.cli", *argv],
      capture_output=True, text=True, timeout=120,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert done.returncode == 2, done.stderr[-2000:]
  assert done.stderr.splitlines() == [
      f"bort-jax train: error: the processes did not all meet at "
      f"127.0.0.1:{port} "
      "within 2 s (process 0 of 2); start all of them with the same "
      "--coordinator and --num-processes and each with its own "
      "--process-id, or raise --coordinator-timeout."]
  assert done.stdout.startswith(
      f"starting the coordinator at 127.0.0.1:{port}; waiting up to 2 s")
  assert not os.path.exists(out)


@pytest.mark.slow
def test_n6_processes_given_other_process_counts_are_refused(tmp_path):
  # JAX takes process 0's count: process 1, told there were 3 processes,
  # trained along silently.
  port = _unused_port()
  out = tmp_path / "run"
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  env.pop("XLA_FLAGS", None)
  workers = [subprocess.Popen(
      [sys.executable, "-m", "bort_jax.experiments.cli", *_train(
          out, "--coordinator", f"127.0.0.1:{port}", "--num-processes",
          str(count), "--process-id", str(i), "--coordinator-timeout",
          "60")],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
      for i, count in enumerate((2, 3))]
  try:
    done = [worker.communicate(timeout=180) for worker in workers]
  finally:
    for worker in workers:
      if worker.poll() is None:
        worker.kill()
        worker.wait()
  for worker, (_, err) in zip(workers, done):
    assert worker.returncode not in (0, None), err[-2000:]
    assert err.splitlines() == [
        "bort-jax train: error: Process 1 was given other launch flags "
        "than process 0 (--num-processes 3 vs 2); start every process "
        "with the same flags and data."], err[-2000:]
  assert not out.exists()


@pytest.mark.parametrize("seed", ["-1", str(2**32)])
def test_n8_seed_outside_numpy_range_is_refused_before_writing(
    capsys, tmp_path, seed):
  out = tmp_path / "run"
  _refused(capsys, _train(out, "--seed", seed),
           f"seed must be in 0..4294967295 (2**32 - 1, the range numpy "
           f"seeds take), got {seed}.", out)


def test_n8_demo_seed_outside_numpy_range_is_refused_before_writing(
    capsys, tmp_path):
  out = tmp_path / "demo"
  _refused(capsys, ["demo", "--quick", "--data", "digits", "--epochs", "1",
                    "--seed", "-1", "--out", str(out), "--offline",
                    "--no-progress"], "seed must be in 0..4294967295", out)


def test_n9_bort_every_beyond_int32_is_refused_before_writing(
    capsys, tmp_path):
  out = tmp_path / "run"
  _refused(capsys, _train(out, "--bort-every", str(2**40)),
           "bort_every must be at most 2147483647", out)


@pytest.mark.parametrize("extra, message", [
    (["--num-processes", "0", "--process-id", "0",
      "--coordinator", "127.0.0.1:12355"],
     "--num-processes must be an integer of at least 1, got 0."),
    (["--num-processes", "-1"],
     "--num-processes must be an integer of at least 1, got -1."),
    (["--num-processes", "2", "--process-id", "1"],
     "--num-processes 2 needs --coordinator HOST:PORT"),
    (["--num-processes", "2", "--coordinator", "127.0.0.1:12355"],
     "--num-processes 2 needs --process-id"),
    (["--num-processes", "2", "--process-id", "1", "--coordinator",
      "nonsense"], "--coordinator must be HOST:PORT"),
])
def test_m2_bad_launch_flags_are_one_line_before_writing(
    capsys, tmp_path, extra, message):
  out = tmp_path / "run"
  _refused(capsys, _train(out, *extra), message, out)


def test_m2_non_integer_process_count_in_environment_is_one_line(
    capsys, tmp_path, monkeypatch):
  monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
  out = tmp_path / "run"
  _refused(capsys, _train(out),
           "$JAX_NUM_PROCESSES must be an integer, got 'two'.", out)


def test_m7_recipe_with_another_optimizer_needs_lr(capsys, tmp_path):
  out = tmp_path / "run"
  _refused(capsys, _train(out, "--recipe", "recommended-coupled",
                          "--optimizer", "adamw"),
           "--recipe recommended-coupled tunes lr 0.05 for bort-sgd; "
           "--optimizer adamw would keep it. Give --lr too", out)


@pytest.mark.parametrize("extra, lr", [
    (["--optimizer", "sgd"], 0.05),  # the recipe's baseline: same base
    (["--optimizer", "adamw", "--lr", "0.002"], 0.002),
])
def test_m7_recipe_overrides_that_keep_a_tuned_lr_are_accepted(extra, lr):
  parser = cli.build_parser()
  args = parser.parse_args(_train("unused", "--recipe", "recommended-coupled",
                                  *extra))
  config = cli._config_from_args(parser, args)
  assert (config.optimizer, config.learning_rate) == (extra[1], lr)


def test_m7_recipe_given_twice_is_refused(capsys, tmp_path):
  out = tmp_path / "run"
  _refused(capsys, _train(out, "--recipe", "authors-mnist",
                          "--recipe", "recommended-coupled"),
           "--recipe given twice (authors-mnist and recommended-coupled)", out)


def test_m7_warmup_longer_than_the_run_is_refused(capsys, tmp_path):
  out = tmp_path / "run"
  _refused(capsys, _train(out, "--warmup", "1e9"),
           "warmup of 1e+09 epochs is longer than the run (1 epochs)", out)


def test_m7_train_limit_above_the_data_is_refused(capsys, tmp_path):
  out = tmp_path / "run"
  _refused(capsys, _train(out, "--train-limit", "100000"),
           "train_limit 100000 is above the 1347 training examples of "
           "'digits'", out)


def test_m7_gamma_that_is_zero_in_float32_is_refused(capsys, tmp_path):
  out = tmp_path / "run"
  _refused(capsys, _train(out, "--gamma", "1e-50"),
           "gamma 1e-50 is 0 in float32 (below its smallest normal, "
           "1.18e-38)", out)


def test_library_construction_error_is_one_line_before_writing(
    capsys, tmp_path, monkeypatch):
  def refuse(*args, **kwargs):
    raise ValueError("bort_adamw: a refused argument; pass another.\n"
                     "(a second line that the CLI must not print)")
  monkeypatch.setattr(bort_jax, "bort_adamw", refuse)
  out = tmp_path / "run"
  _refused(capsys, _train(out, "--optimizer", "bort-adamw"),
           "bort-jax train: error: bort_adamw: a refused argument; pass "
           "another.",
           out)
