"""A run folder's lock is exclusive when processes open and close it in a loop.

Red-team v2 finding N3: ``RunFolder.close`` unlinked the lock file, and a
process that had opened the old file then locked an unlinked inode while a
newcomer locked a new one, so two processes held the folder at once.
"""

import json
import os
import subprocess
import sys

from bort_jax.experiments import workdir

# The workers import workdir.py alone (bort_jax's __init__ would import jax,
# seconds per process on a loaded CI machine); stub packages point at the
# folders of the module this test imported, so they run the same code.
_WORKER = r"""
import json, os, sys, time, types
package_dir, path, go, seconds = sys.argv[1:5]
for name, folder in (("bort_jax", os.path.dirname(package_dir)),
                     ("bort_jax.experiments", package_dir)):
  module = types.ModuleType(name)
  module.__path__ = [folder]
  sys.modules[name] = module
from bort_jax.experiments import workdir
print("ready", flush=True)
while not os.path.exists(go):
  time.sleep(0.001)
end = time.monotonic() + float(seconds)
holds = overlaps = refusals = 0
while time.monotonic() < end:
  try:
    folder = workdir.RunFolder.open(path)
  except workdir.RunDirectoryError:
    refusals += 1
    continue
  # Whoever holds the folder owns this marker; O_EXCL fails if another does.
  marker = os.path.join(path, "holder")
  try:
    fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
  except FileExistsError:
    overlaps += 1
  else:
    holds += 1
    os.close(fd)
    time.sleep(0.0005)
    os.unlink(marker)
  folder.close()
print(json.dumps({"holds": holds, "overlaps": overlaps,
                  "refusals": refusals}), flush=True)
"""


def test_n3_open_and_close_in_a_loop_from_four_processes_is_exclusive(
    tmp_path):
  path, go = tmp_path / "run", tmp_path / "go"
  package_dir = os.path.dirname(os.path.abspath(workdir.__file__))
  workers = [
      subprocess.Popen([sys.executable, "-c", _WORKER, package_dir, str(path),
                        str(go), "2"], stdout=subprocess.PIPE, text=True)
      for _ in range(4)]
  try:
    for worker in workers:
      assert worker.stdout.readline().strip() == "ready"
    go.touch()  # all four start churning together
    results = [json.loads(worker.communicate(timeout=60)[0])
               for worker in workers]
  finally:
    for worker in workers:
      if worker.poll() is None:
        worker.kill()
        worker.wait()
  assert all(worker.returncode == 0 for worker in workers)
  # Each process got the folder, and was refused while another held it.
  assert all(r["holds"] > 0 for r in results), results
  assert sum(r["refusals"] for r in results) > 0, results
  assert sum(r["overlaps"] for r in results) == 0, results
  assert not os.path.exists(path / workdir.LOCK_NAME)
