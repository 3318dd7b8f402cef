"""DBort: the data-aware output-energy term of Bort, as a loss and a module.

DBort (Zhang, Zheng, Zhou, Lu, "Bort: Towards Explainable Neural Networks
with Bounded Orthogonal Constraint", ICLR 2023) adds ``−λ Σ_l (mean y_l²)^p``
to the task loss, over the outputs ``y_l`` of chosen layers. Two ways to
name the layers:

- wrap them in :class:`DBort` (a module in the spirit of ``nnx.SpectralNorm``
  that records its output energy as a :class:`DBortEnergy`, a subclass of
  ``nnx.Intermediate``) and call :func:`dbort_term` in the training step; it
  reads the energies through ``nnx.capture``;
- or, for models that cannot be wrapped, collect the outputs of any
  submodules with :func:`dbort_outputs` and hand them to :func:`dbort_loss`.

The linear case, where DBort with Bort converges to PCA, is the experiment
:func:`fit_dbort_linear` with its optimizer :func:`dbort_linear_optimizer`
and the measure :func:`principal_cosines`. See docs/DBORT.md.

Examples:
  >>> import jax.numpy as jnp
  >>> from flax import nnx
  >>> from bort_jax import dbort
  >>> model = nnx.Sequential(nnx.Linear(4, 8, rngs=nnx.Rngs(0)), nnx.relu,
  ...                        dbort.DBort(nnx.Linear(8, 3, rngs=nnx.Rngs(1))))
  >>> term = dbort.dbort_term(model, jnp.ones((2, 4)), weight=1e-3, power=0.1)
  >>> term.output.shape, sorted(term.energies)
  ((2, 3), ['layers/2'])
"""

from bort_jax._src.dbort import DBORT_POWER
from bort_jax._src.dbort import DBORT_WEIGHT
from bort_jax._src.dbort import DBort
from bort_jax._src.dbort import dbort_energies
from bort_jax._src.dbort import dbort_loss
from bort_jax._src.dbort import dbort_outputs
from bort_jax._src.dbort import dbort_term
from bort_jax._src.dbort import DBortEnergy
from bort_jax._src.dbort import DBortTerm
from bort_jax._src.dbort_pca import dbort_linear_optimizer
from bort_jax._src.dbort_pca import DBortLinearFit
from bort_jax._src.dbort_pca import fit_dbort_linear
from bort_jax._src.dbort_pca import principal_cosines

__all__ = (
    "DBORT_POWER",
    "DBORT_WEIGHT",
    "DBort",
    "DBortEnergy",
    "DBortLinearFit",
    "DBortTerm",
    "dbort_energies",
    "dbort_linear_optimizer",
    "dbort_loss",
    "dbort_outputs",
    "dbort_term",
    "fit_dbort_linear",
    "principal_cosines",
)
