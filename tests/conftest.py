"""Test session set-up: 8 simulated CPU devices for the sharding tests.

``jax_num_cpu_devices`` takes effect when the CPU backend starts, so it is set
here, before any test touches a device. Unsharded tests still run on device 0.
"""

import jax

jax.config.update("jax_num_cpu_devices", 8)
