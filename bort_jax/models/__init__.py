"""Flax NNX models that work with Bort's default parameter selection."""
