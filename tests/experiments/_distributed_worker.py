"""One process of a test's multi-process training run (see test_distributed).

Usage: python _distributed_worker.py SPEC_JSON PROCESS_ID (imports nothing
until run, so that collecting it for doctests starts no backend)

``SPEC_JSON`` holds the coordinator's port, the process count, the CPU device
count per process, the config (and each process's overrides of it, and
changes of its data: ``data_change``), the run folder, ``max_steps``, ``resume``,
whether to run data-parallel (``parallel``) and to shard the state
(``shard_params``), and where to save the final state (``.npz``; process 0 also writes the history as
JSON next to it).
"""

import json
import sys


def state_arrays(result):
  """The model's and the optimizer's leaves, by position, as host arrays."""
  import jax
  import numpy as np
  from flax import nnx
  from jax.experimental import multihost_utils
  leaves = (jax.tree.leaves(nnx.state(result.model))
            + jax.tree.leaves(nnx.state(result.optimizer)))
  out = {}
  for i, x in enumerate(leaves):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      x = jax.random.key_data(x)
    if x.is_fully_replicated:  # this process's copy is the value
      out[f"leaf{i}"] = np.asarray(x.addressable_data(0))
    else:  # sharded over the processes: gather the whole array
      out[f"leaf{i}"] = np.asarray(
          multihost_utils.process_allgather(x, tiled=True))
  return out


def main():
  spec = json.loads(sys.argv[1])
  process_id = int(sys.argv[2])
  import jax
  jax.config.update("jax_num_cpu_devices", spec["devices"])  # before devices
  from bort_jax.experiments import distributed
  if spec["processes"] > 1:
    distributed.start(f"127.0.0.1:{spec['port']}", spec["processes"],
                      process_id)
  import numpy as np
  from flax import nnx
  from bort_jax.experiments import data as data_lib
  from bort_jax.experiments.config import TrainConfig
  from bort_jax.experiments.loop import train

  config = TrainConfig.from_dict(
      {**spec["config"], **spec["overrides"].get(str(process_id), {})})
  parallel = (distributed.DataParallel(
      shard_params=spec.get("shard_params", False))
      if spec["parallel"] else None)
  lines = []
  dataset = data_lib.load_splits(config.data)
  change = spec.get("data_change", {}).get(str(process_id))
  if change == "pixel":  # one pixel of the first training image
    images = dataset.train.images.copy()
    images[0, 0, 0, 0] += 0.5
    dataset = data_lib.Dataset(data_lib.Split(images, dataset.train.labels),
                               dataset.test)
  elif change == "no_test":
    dataset = data_lib.Dataset(dataset.train, data_lib.Split(
        dataset.test.images[:0], dataset.test.labels[:0]))
  result = train(config, spec["run_dir"], dataset=dataset,
                 resume=spec["resume"], max_steps=spec["max_steps"],
                 parallel=parallel, log=lines.append)
  out = spec["out"].format(process=process_id)
  np.savez(out, **state_arrays(result))
  with open(out + ".json", "w") as f:
    json.dump({"step": result.step, "finished": result.finished,
               "history": result.history, "log": lines,
               "process_count": jax.process_count(),
               "sharded_leaves": sum(
                   not x.is_fully_replicated for x in jax.tree.leaves(
                       (nnx.state(result.model),
                        nnx.state(result.optimizer)))),
               "device_count": jax.device_count()}, f)


if __name__ == "__main__":
  main()
