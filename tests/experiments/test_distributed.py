"""Multi-process training: 2 processes × 4 CPU devices against 1 × 8.

The two-process runs start real ``jax.distributed`` processes on localhost
(gloo collectives, a free port on 127.0.0.1) with ``_distributed_worker.py``;
the one-process reference runs here, on the 8 simulated devices of
``tests/conftest.py``, with the same data-parallel layout and the same global
batches.
"""

import argparse
import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from bort_jax.experiments import data as data_lib
from bort_jax.experiments import distributed
from bort_jax.experiments import launch
from bort_jax.experiments import signals
from bort_jax.experiments import steps
from bort_jax.experiments.config import TrainConfig
from bort_jax.experiments.loop import train

WORKER = os.path.join(os.path.dirname(__file__), "_distributed_worker.py")

# 1347 digits / 128 = 10 steps per epoch, 20 in all; 16 rows per device.
# Without the start: on the constraint, l1-fullrow takes the signs of
# residuals at rounding level, which other reduction orders (sharded
# params, other device counts) set apart; test_sharding checks the start's
# landing under sharding.
CONFIG = TrainConfig(data="digits", model="mlp", width=32, epochs=2,
                     batch_size=128, learning_rate=1e-2, warmup=0.5,
                     optimizer="bort-adamw", mode="l1-fullrow",
                     amplitude="ada", gamma=0.1,
                     bort_start_on_constraint=False)


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(tmp_path, run_dir, *, processes=2, devices=4, max_steps=None,
            resume=False, parallel=True, shard_params=False, timeout=600,
            check=True, overrides=None, data_change=None):
  """Runs the worker on ``processes`` processes; returns each one's output.

  ``overrides``: ``{process id: config fields}`` that process runs with;
  ``data_change``: ``{process id: "pixel" | "no_test"}``, how its data
  differ (see the worker).
  With ``check=False``, returns the return codes and the outputs instead.
  """
  spec = {"port": _free_port(), "processes": processes, "devices": devices,
          "config": CONFIG.to_dict(), "run_dir": str(run_dir),
          "overrides": {str(k): v for k, v in (overrides or {}).items()},
          "data_change": {str(k): v for k, v in (data_change or {}).items()},
          "max_steps": max_steps, "resume": resume, "parallel": parallel,
          "shard_params": shard_params,
          "out": str(tmp_path / f"{run_dir.name}-{max_steps}-{resume}"
                     "-{process}.npz")}
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["JAX_PLATFORMS"] = "cpu"
  workers = [subprocess.Popen(
      [sys.executable, WORKER, json.dumps(spec), str(i)], env=env,
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(processes)]
  outputs = []
  try:
    for worker in workers:
      outputs.append(worker.communicate(timeout=timeout)[0])
  finally:
    for worker in workers:
      if worker.poll() is None:
        worker.kill()
        worker.wait()
  if not check:
    return [(worker.returncode, text) for worker, text in zip(workers, outputs)]
  for i, (worker, text) in enumerate(zip(workers, outputs)):
    assert worker.returncode == 0, f"process {i} failed:\n{text[-4000:]}"
  results = []
  for i in range(processes):
    path = spec["out"].format(process=i)
    with np.load(path) as arrays:
      leaves = [arrays[f"leaf{j}"] for j in range(len(arrays.files))]
    with open(path + ".json") as f:
      results.append((leaves, json.load(f)))
  return results


def _leaves(result):
  leaves = (jax.tree.leaves(nnx.state(result.model))
            + jax.tree.leaves(nnx.state(result.optimizer)))
  return [np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(
      x.dtype, jax.dtypes.prng_key) else x) for x in leaves]


def _assert_close(leaves, reference):
  assert len(leaves) == len(reference)
  for x, y in zip(leaves, reference):
    assert x.shape == y.shape and x.dtype == y.dtype
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)


def _without_times(history):
  times = ("step_time_ms", "epoch_time_s", "wall_time_s")
  return [{k: v for k, v in r.items() if k not in times} for r in history]


def _assert_same_history(history, reference):
  history, reference = _without_times(history), _without_times(reference)
  assert [r["step"] for r in history] == [r["step"] for r in reference]
  for r, s in zip(history, reference):
    for key, value in s.items():
      if isinstance(value, float):
        np.testing.assert_allclose(r[key], value, rtol=1e-4, atol=1e-6,
                                   err_msg=key)
      else:
        assert r[key] == value, key


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """One process, 8 devices, the data-parallel layout: the whole run."""
  assert jax.device_count() == 8
  run_dir = tmp_path_factory.mktemp("reference") / "run"
  return train(CONFIG, str(run_dir), dataset=data_lib.load_splits("digits"),
               parallel=distributed.DataParallel())


def test_layout_on_one_process():
  layout = distributed.DataParallel()
  assert layout.size == 8 and layout.primary and not layout.multiprocess
  assert layout.local_rows(128) == slice(0, 128)
  order = np.random.default_rng(0).permutation(1000)[:128].astype(np.int32)
  index = layout.batch_index(order)
  np.testing.assert_array_equal(np.asarray(index), order)
  assert index.sharding == layout.batch
  assert [s.data.shape for s in index.addressable_shards] == [(16,)] * 8
  with pytest.raises(launch.DistributedError, match="multiple of 8"):
    layout.check_batch_size(100)
  with pytest.raises(ValueError, match="boom"):
    layout.on_primary(lambda: (_ for _ in ()).throw(ValueError("boom")), int)
  assert layout.on_primary(lambda: 3, lambda r: r + 1) == (3, 4)


def test_flags_and_environment(monkeypatch):
  parser = argparse.ArgumentParser()
  launch.add_arguments(parser)
  for name in launch.ENVIRONMENT.values():
    monkeypatch.delenv(name, raising=False)
  assert distributed.initialize(parser.parse_args([])) is None
  layout = distributed.initialize(parser.parse_args(["--data-parallel"]))
  assert layout.size == jax.device_count()
  started = []
  monkeypatch.setattr(distributed, "start", lambda *a: started.append(a))
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
  monkeypatch.setenv("JAX_PROCESS_ID", "2")
  distributed.initialize(parser.parse_args([]))
  sharded = distributed.initialize(parser.parse_args(
      ["--process-id", "3", "--shard-params"]))
  assert started == [("10.0.0.1:1234", 4, 2), ("10.0.0.1:1234", 4, 3)]
  assert sharded.shard_params
  monkeypatch.delenv("JAX_NUM_PROCESSES")
  alone = distributed.initialize(parser.parse_args(["--shard-params"]))
  assert alone.shard_params and alone.size == jax.device_count()
  assert len(started) == 2  # --shard-params alone starts no jax.distributed


def test_start_refuses_a_process_id_out_of_range():
  with pytest.raises(launch.DistributedError, match="outside 0..1"):
    distributed.start("127.0.0.1:1", 2, 2)


def test_stop_requests_are_agreed_every_few_steps():
  asked = []

  def agree(flag):
    asked.append(flag)
    return True  # another process was signalled

  stop = signals.StopRequest(agree=agree)
  assert not stop.should_stop(signals.AGREE_EVERY - 1) and not asked
  assert stop.should_stop(signals.AGREE_EVERY) and asked == [False]
  assert stop.stopping and stop.requested is None
  lone = signals.StopRequest()
  assert not lone.should_stop(1)
  lone.requested = "SIGTERM"
  assert lone.should_stop(1) and lone.stopping


def test_train_refuses_a_batch_that_does_not_split():
  config = TrainConfig(data="digits", model="mlp", width=8, epochs=1,
                       batch_size=100)
  with pytest.raises(launch.DistributedError, match="multiple of 8"):
    train(config, parallel=distributed.DataParallel())


@pytest.mark.slow
def test_data_parallel_matches_one_device(reference):
  """The layout changes where rows are computed, not the result."""
  plain = train(CONFIG, dataset=data_lib.load_splits("digits"))
  _assert_close(_leaves(plain), _leaves(reference))
  _assert_same_history(plain.history, reference.history)


@pytest.mark.slow
def test_two_processes_match_one_process_with_eight_devices(
    reference, tmp_path):
  run_dir = tmp_path / "two"
  results = _launch(tmp_path, run_dir)
  for leaves, info in results:
    assert info["process_count"] == 2 and info["device_count"] == 8
    assert info["step"] == 20 and info["finished"]
    _assert_close(leaves, _leaves(reference))
    _assert_same_history(info["history"], reference.history)
  assert results[0][1]["log"] and not results[1][1]["log"]  # process 0 logs
  assert sorted(os.listdir(run_dir)) == [
      "checkpoints", "config.json", "metrics.csv", "metrics.json",
      "tensorboard"]
  # Only process 0 writes the event files.
  assert len(os.listdir(run_dir / "tensorboard")) == 1
  assert sorted(os.listdir(run_dir / "checkpoints")) == ["10", "20"]
  with open(run_dir / "metrics.json") as f:
    assert len(json.load(f)["history"]) == 3
  # Process 0's refusal (a run is there; no --resume) stops the other one.
  (code0, text0), (code1, text1) = _launch(tmp_path, run_dir, check=False)
  assert code0 and "RunDirectoryError" in text0 and "--resume" in text0
  assert code1 and "Process 0 stopped the run: RunDirectoryError" in text1


@pytest.mark.slow
def test_interrupted_two_process_run_resumes_to_the_same_result(
    reference, tmp_path):
  run_dir = tmp_path / "resumed"
  first = _launch(tmp_path, run_dir, max_steps=7)
  assert [info["step"] for _, info in first] == [7, 7]
  assert not first[0][1]["finished"]
  assert sorted(os.listdir(run_dir / "checkpoints")) == ["0", "7"]
  second = _launch(tmp_path, run_dir, resume=True)
  for leaves, info in second:
    assert info["step"] == 20 and info["finished"]
    _assert_close(leaves, _leaves(reference))
    _assert_same_history(info["history"], reference.history)


@pytest.mark.slow
def test_one_device_per_process_saves_and_resumes(reference, tmp_path):
  # One process per GPU: the state placed from device arrays could not be
  # saved (orbax: "An argument array had 2 shard(s)"), at the first
  # checkpoint.
  run_dir = tmp_path / "one-each"
  first = _launch(tmp_path, run_dir, devices=1, max_steps=7)
  assert [info["device_count"] for _, info in first] == [2, 2]
  assert sorted(os.listdir(run_dir / "checkpoints")) == ["0", "7"]
  for leaves, info in _launch(tmp_path, run_dir, devices=1, resume=True):
    assert info["step"] == 20 and info["finished"]
    _assert_close(leaves, _leaves(reference))
    _assert_same_history(info["history"], reference.history)


@pytest.mark.slow
@pytest.mark.parametrize("field, value", [("learning_rate", 2e-2),
                                          ("seed", 1)])
def test_processes_given_other_settings_are_refused(tmp_path, field, value):
  # Each process applies its own update to its copy of the state: another
  # learning rate trained copies that drifted apart, silently (exit 0), and
  # another seed failed deep inside jax.device_put.
  run_dir = tmp_path / "run"
  outputs = _launch(tmp_path, run_dir, devices=1, check=False,
                    overrides={1: {field: value}})
  for code, text in outputs:
    assert code != 0
    assert (f"DistributedError: Process 1 was given other settings than "
            f"process 0 ({field} {value!r} vs {getattr(CONFIG, field)!r})"
            in text), text[-2000:]
  assert not run_dir.exists()


@pytest.mark.slow
def test_processes_given_other_data_are_refused_before_it_is_placed(
    tmp_path):
  # jax.device_put compared the placed arrays first: a JAX assertion and
  # pages of arrays, not one line.
  outputs = _launch(tmp_path, tmp_path / "run", devices=1, check=False,
                    data_change={1: "pixel"}, timeout=120)
  for code, text in outputs:
    assert code != 0
    assert ("DistributedError: Process 1 was given other data than process "
            "0 (train_images " in text), text[-2000:]


@pytest.mark.slow
def test_a_process_that_fails_to_load_its_data_stops_the_others(tmp_path):
  # The others waited for it in a collective until JAX's shutdown timeout
  # (300 s) aborted them all.
  (code0, text0), (code1, text1) = _launch(
      tmp_path, tmp_path / "run", devices=1, check=False,
      data_change={1: "no_test"}, timeout=120)
  assert code1 and "DataError: The test set of 'digits' is empty." in text1
  assert code0 and ("DistributedError: Process 1 stopped the run: "
                    "DataError: The test set of 'digits' is empty." in text0)


def test_check_alike_names_the_process_and_entries_that_differ(monkeypatch):
  # The gathers of two processes, the second given other data.
  mine = {"test": {"sha256": "a"}, "train": {"sha256": "b"}}
  other = {"test": {"sha256": "a"}, "train": {"sha256": "c"}}
  theirs = json.dumps({"value": other}, sort_keys=True).encode()

  def allgather(x):
    x = np.asarray(x)
    if x.ndim == 0:  # the sizes
      return np.stack([x, np.int32(len(theirs))])
    other = np.zeros_like(x)
    other[:len(theirs)] = np.frombuffer(theirs, np.uint8)
    return np.stack([x, other])

  monkeypatch.setattr(distributed.multihost_utils, "process_allgather",
                      allgather)
  layout = distributed.DataParallel()
  layout.check_alike("data", mine)  # one process: nothing to compare
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  with pytest.raises(launch.DistributedError, match=(
      r"^Process 1 was given other data than process 0 \(train "
      r"\{'sha256': 'c'\} vs \{'sha256': 'b'\}\); start every process "
      r"with the same flags and data\.$")):
    layout.check_alike("data", mine)
  layout.check_alike("data", other)  # alike: accepted
  # A process that failed tells the others, then raises its own error.
  with pytest.raises(KeyError, match="lost"):
    layout.check_alike("data", error=KeyError("lost"))


def test_sharded_params_split_the_state_and_train_as_replicated():
  layout = distributed.DataParallel(shard_params=True)
  spec = lambda shape: layout.state_sharding(np.zeros(shape)).spec
  assert spec((64, 32)) == P("data") and spec((3, 3, 4, 16)) == P(
      None, None, None, "data")
  assert spec((10,)) == P() and spec(()) == P()  # nothing 8 divides
  # Without the start: on the constraint, l1-fullrow takes the signs of
  # residuals at rounding level, which sharded and replicated reductions
  # set apart (test_start_on_constraint checks the sharded landing).
  config = TrainConfig(data="digits", model="mlp", width=32, epochs=1,
                       batch_size=128, learning_rate=1e-2,
                       optimizer="bort-adamw", gamma=0.1,
                       bort_start_on_constraint=False)
  digits = data_lib.load_splits("digits")
  plain = train(config, dataset=digits, max_steps=4,
                parallel=distributed.DataParallel())
  compiled = steps.train_step._cache_size()
  sharded = train(config, dataset=digits, max_steps=4, parallel=layout)
  # One compilation for the sharded layout: the step returns the state in
  # the shardings it was given, so later steps reuse it.
  assert steps.train_step._cache_size() == compiled + 1
  _assert_close(_leaves(sharded), _leaves(plain))
  for state in (nnx.state(sharded.model, nnx.Param),
                nnx.state(sharded.optimizer)):
    for x in jax.tree.leaves(state):
      assert x.sharding == layout.state_sharding(x), x.shape
  kernel = sharded.model.hidden[0].kernel[...]
  assert {s.data.shape for s in kernel.addressable_shards} == {(8, 32)}


@pytest.mark.slow
def test_two_processes_with_sharded_params_resume_to_the_same_result(
    reference, tmp_path):
  run_dir = tmp_path / "sharded"
  first = _launch(tmp_path, run_dir, max_steps=7, shard_params=True)
  assert [info["step"] for _, info in first] == [7, 7]
  second = _launch(tmp_path, run_dir, resume=True, shard_params=True)
  for leaves, info in second:
    assert info["step"] == 20 and info["finished"]
    assert info["sharded_leaves"] >= 8  # kernels, biases and their moments
    _assert_close(leaves, _leaves(reference))
    _assert_same_history(info["history"], reference.history)
