"""Flax NNX models that work with Bort's default parameter selection.

Every Linear/Conv weight is a leaf named ``kernel`` in Flax layout, so
``bort_jax.add_bort_correction`` and ``orthogonality_error`` find them
without configuration. The backtrackable ones (:mod:`bort_jax.explain`) are
built from :mod:`bort_jax.models.invertible`: :class:`InvertibleMLP`,
:class:`InvertibleCNN` and the authors' :class:`SimpleCNN`.
"""

from bort_jax.models.invertible import AvgPool
from bort_jax.models.invertible import Flatten
from bort_jax.models.invertible import GlobalMaxPool
from bort_jax.models.invertible import InvertibleCNN
from bort_jax.models.invertible import InvertibleMLP
from bort_jax.models.invertible import InvertibleSequential
from bort_jax.models.invertible import LeakyReLU
from bort_jax.models.invertible import ReLU
from bort_jax.models.mlp import MLP
from bort_jax.models.resnet import BasicBlock
from bort_jax.models.resnet import ResNet
from bort_jax.models.resnet import resnet18
from bort_jax.models.simple_cnn import conv_fan_ins
from bort_jax.models.simple_cnn import SimpleCNN
from bort_jax.models.simple_cnn import simple_cnn_widths
from bort_jax.models.vit import ViT

__all__ = (
    "AvgPool",
    "BasicBlock",
    "Flatten",
    "GlobalMaxPool",
    "InvertibleCNN",
    "InvertibleMLP",
    "InvertibleSequential",
    "LeakyReLU",
    "MLP",
    "ReLU",
    "ResNet",
    "SimpleCNN",
    "ViT",
    "conv_fan_ins",
    "resnet18",
    "simple_cnn_widths",
)
