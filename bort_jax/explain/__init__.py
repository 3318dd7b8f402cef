"""Explainability for Bort-trained networks: inversion, saliency, attacks.

A bounded-orthogonal layer (``W Wᵀ = cI``) is inverted by its scaled
transpose, so a network of such layers can be *backtracked* from any hidden
layer to its input. This package builds the paper's tools on that:

- layer inversion and network backtracking (:func:`backtrack`),
- backtracking saliency and gradient baselines, Deletion/Insertion AUC,
- contribution maps of bias-free piecewise-linear MLPs,
- explainable adversarial examples by latent editing (vs FGSM and PGD),
- figures (matplotlib, optional).

The models to backtrack live in :mod:`bort_jax.models.invertible` and
:mod:`bort_jax.models.simple_cnn` (the authors' SimpleCNN). Each layer type's
inverse is found by :func:`layer_inverse`, a ``functools.singledispatch``
function; :func:`register_inverse` adds one.

References:
  Zhang, Zheng, Zhou, Lu, "Bort: Towards Explainable Neural Networks with
  Bounded Orthogonal Constraint", ICLR 2023; Zhang, Rao, Zhou, Lu,
  "Alignment-Invertibility Regularization for Explainable Neural Networks",
  IEEE TPAMI 2026.
"""

from bort_jax.explain.adversarial import attack_success_rate
from bort_jax.explain.adversarial import fgsm_l2
from bort_jax.explain.adversarial import latent_edit_attack
from bort_jax.explain.adversarial import perturbation_norms
from bort_jax.explain.adversarial import pgd_l2
from bort_jax.explain.adversarial import runner_up_classes
from bort_jax.explain.backtracking import backtrack
from bort_jax.explain.backtracking import forward_cache
from bort_jax.explain.backtracking import model_layers
from bort_jax.explain.backtracking import reconstruct
from bort_jax.explain.contribution import contribution_map
from bort_jax.explain.figures import plot_adversarial
from bort_jax.explain.figures import plot_gram
from bort_jax.explain.figures import plot_reconstructions
from bort_jax.explain.figures import plot_saliency
from bort_jax.explain.figures import save_figure
from bort_jax.explain.invert import invert_avg_pool
from bort_jax.explain.invert import invert_conv
from bort_jax.explain.invert import invert_dense
from bort_jax.explain.invert import invert_leaky_relu
from bort_jax.explain.invert import invert_relu
from bort_jax.explain.invert import unit_scales
from bort_jax.explain.inverses import invert_layer
from bort_jax.explain.inverses import layer_inverse
from bort_jax.explain.inverses import register_inverse
from bort_jax.explain.metrics import cosine_gram
from bort_jax.explain.metrics import deletion_auc
from bort_jax.explain.metrics import deletion_curve
from bort_jax.explain.metrics import gaussian_blur
from bort_jax.explain.metrics import insertion_auc
from bort_jax.explain.metrics import insertion_curve
from bort_jax.explain.metrics import PerturbationCurve
from bort_jax.explain.metrics import psnr
from bort_jax.explain.metrics import reconstruction_mse
from bort_jax.explain.saliency import attribution_map
from bort_jax.explain.saliency import backtrack_saliency
from bort_jax.explain.saliency import gradient_saliency
from bort_jax.explain.saliency import integrated_gradients
from bort_jax.explain.saliency import integrated_gradients_saliency
from bort_jax.explain.saliency import normalize_map

__all__ = (
    "PerturbationCurve",
    "attack_success_rate",
    "attribution_map",
    "backtrack",
    "backtrack_saliency",
    "contribution_map",
    "cosine_gram",
    "deletion_auc",
    "deletion_curve",
    "fgsm_l2",
    "forward_cache",
    "gaussian_blur",
    "gradient_saliency",
    "insertion_auc",
    "insertion_curve",
    "integrated_gradients",
    "integrated_gradients_saliency",
    "invert_avg_pool",
    "invert_conv",
    "invert_dense",
    "invert_layer",
    "invert_leaky_relu",
    "invert_relu",
    "latent_edit_attack",
    "layer_inverse",
    "model_layers",
    "normalize_map",
    "perturbation_norms",
    "pgd_l2",
    "plot_adversarial",
    "plot_gram",
    "plot_reconstructions",
    "plot_saliency",
    "psnr",
    "reconstruct",
    "reconstruction_mse",
    "register_inverse",
    "runner_up_classes",
    "save_figure",
    "unit_scales",
)
