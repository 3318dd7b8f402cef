"""The bort_jax application: data, models by name, the training loop, the CLI.

Optional: it needs the ``app`` extra (``pip install "bort_jax[app]"``), and
``import bort_jax`` never loads it.
"""
