"""Test session set-up: 8 simulated CPU devices for the sharding tests.

XLA reads the flag once, when jax starts, so it is set here before any test
module imports jax. Unsharded tests still run on device 0 as usual.
"""

import os

_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
