"""Explainability for Bort-trained networks (placeholder during development)."""
