"""DBort's linear case: a Bort-constrained linear layer converges to PCA.

For one linear layer ``y = W x`` on centred data with covariance ``C``,
``mean(y²) = tr(W C Wᵀ) / k``, and maximising the DBort energy over
``W Wᵀ = cI`` is Ky Fan's problem: the row space converges to the top-k
principal subspace, and ``Wᵀ W x / c`` is the PCA reconstruction (Zhang et
al., ICLR 2023, DBort). This module is the experiment that shows it, with its
own full-batch loop; the loss itself lives in :mod:`bort_jax._src.dbort`.

- :func:`dbort_linear_optimizer`: Bort-SGD with the step sizes balanced
  against DBort (see docs/DBORT.md for why the published AdamW setting does
  not reach the PCA subspace).
- :func:`fit_dbort_linear`: trains a linear layer with Bort + DBort and
  returns its kernel; :func:`principal_cosines` measures the subspace.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from bort_jax._src import validation
from bort_jax._src.alias import bort_sgd
from bort_jax._src.dbort import DBORT_POWER
from bort_jax._src.dbort import dbort_loss
from bort_jax._src.diagnostics import matrix_orthogonality_error

Array = jax.Array


# ----------------------------------------------------------------------------
# The recipe: Bort-SGD balanced against DBort.


def _positive(name: str, value: Any, at_most: float | None = None) -> float:
  """A finite number > 0 (and ≤ at_most), as a float."""
  return validation.check_real(name, value, low=0, low_inclusive=False,
                               high=at_most)


def dbort_linear_optimizer(
    steps: int,
    *,
    learning_rate: float = 0.1,
    momentum: float = 0.95,
    constraint_step: float = 0.5,
    final_fraction: float = 0.01,
    amplitude: float = 1.0,
    weight: float | None = None,
    power: float = DBORT_POWER,
) -> optax.GradientTransformation:
  """Bort-SGD whose steps are balanced against the DBort loss.

  :func:`bort_jax.bort_sgd` (coupled ``l2-full`` correction, fixed amplitude
  ``c``, heavy-ball momentum) with two schedules over ``steps``:

  .. math::
    η_t = \\frac{c · \\mathrm{lr}_t}{λ p}, \\qquad
    γ_t = \\frac{s}{η_t\\, c}, \\qquad
    \\mathrm{lr}_t = \\text{cosine decay from lr to lr·final\\_fraction}.

  With SGD only two products matter. ``η_t λ p`` is the step on the
  normalised energy ``log mean(y²)`` (the DBort gradient is ``λ p ∇log E``),
  so ``lr`` is dimensionless and independent of the data's scale and of
  ``λ`` (the published ``λ p = 10⁻⁸`` is simply absorbed). ``η_t γ_t c = s``
  is the constraint's step: near ``W Wᵀ = cI`` the correction contracts a
  norm error by ``1 − 2s`` per (momentum-free) step, so ``s = 0.5`` is a
  one-step retraction and the constraint stays stable at any ``lr``. The
  fixed point's row space is the top-k principal subspace for every
  ``γ > 0``; only the row norms deviate from ``c``, by ``O(lr / s)``, which
  the decay of ``lr`` (and rise of ``γ``) shrinks to ``O(final_fraction)``.
  The momentum speeds up the slow rotations (rate ∝ the relative eigengap).

  Args:
    steps: the number of optimisation steps the schedules span.
    learning_rate: ``lr``, the initial step on ``log mean(y²)`` (in units of
      the amplitude).
    momentum: heavy-ball momentum ``μ``.
    constraint_step: ``s = η γ c``; keep it in ``(0, 1]``.
    final_fraction: ``lr`` decays to ``lr · final_fraction``.
    amplitude: ``c``, the target squared row norm.
    weight: the ``λ`` given to :func:`dbort_loss`; ``None`` for ``1 / p``
      (then the optax learning rate is ``c · lr_t`` itself).
    power: the ``p`` given to :func:`dbort_loss`.

  Returns:
    An :class:`optax.GradientTransformation` for ``nnx.Optimizer`` or
    ``optax`` loops; the loss must be :func:`dbort_loss` with the same
    ``weight`` and ``power`` (plus whatever else the model needs).

  Examples:
    >>> import jax, jax.numpy as jnp, numpy as np, optax
    >>> rng = np.random.default_rng(0)
    >>> x = jnp.asarray(rng.normal(size=(500, 6)) * [3, 2, 1, .3, .2, .1],
    ...                 jnp.float32)  # top-2 subspace: the first two axes
    >>> init = jax.nn.initializers.orthogonal()
    >>> params = {"kernel": init(jax.random.key(0), (6, 2))}
    >>> tx = dbort_linear_optimizer(300)
    >>> loss = lambda p: dbort_loss(x @ p["kernel"], weight=1e4, power=1e-4)
    >>> @jax.jit
    ... def step(params, state):
    ...   updates, state = tx.update(jax.grad(loss)(params), state, params)
    ...   return optax.apply_updates(params, updates), state
    >>> state = tx.init(params)
    >>> for _ in range(300):
    ...   params, state = step(params, state)
    >>> kernel = np.asarray(params["kernel"])  # Wᵀ W / c: projects on e1, e2
    >>> np.round(kernel @ kernel.T, 1) + 0.0
    array([[1., 0., 0., 0., 0., 0.],
           [0., 1., 0., 0., 0., 0.],
           [0., 0., 0., 0., 0., 0.],
           [0., 0., 0., 0., 0., 0.],
           [0., 0., 0., 0., 0., 0.],
           [0., 0., 0., 0., 0., 0.]], dtype=float32)
  """
  steps = validation.check_positive_int("steps", steps)
  learning_rate = _positive("learning_rate", learning_rate)
  momentum = validation.check_real("momentum", momentum, low=0, high=1,
                                  high_inclusive=False)
  # Larger steps overshoot the constraint (3 made the kernel NaN).
  constraint_step = _positive("constraint_step", constraint_step, 1.0)
  final_fraction = _positive("final_fraction", final_fraction, 1.0)
  amplitude = _positive("amplitude", amplitude)
  power = _positive("power", power)
  weight = 1.0 / power if weight is None else _positive("weight", weight)

  peak = learning_rate * amplitude / (weight * power)
  learning_rate_schedule = optax.cosine_decay_schedule(
      peak, steps, alpha=final_fraction
  )

  def gamma_schedule(count):
    return constraint_step / (learning_rate_schedule(count) * amplitude)

  return bort_sgd(
      learning_rate_schedule,
      momentum=float(momentum) if momentum > 0 else None,
      gamma=gamma_schedule,
      mode="l2-full",
      amplitude=amplitude,
  )


# ----------------------------------------------------------------------------
# The PCA claim: a linear layer trained with Bort + DBort.


def principal_cosines(a: Any, b: Any) -> Array:
  """Cosines of the principal angles between the column spaces of a and b.

  With ``Q_a``, ``Q_b`` orthonormal bases of the column spaces (from the
  SVD), the cosines are the singular values of ``Q_aᵀ Q_b``, largest first,
  clipped to ``[0, 1]``. All equal to 1 iff one space contains the other. A
  matrix of rank ``r`` below its ``k`` columns spans only ``r`` directions:
  the missing ones count as cosines of 0 (a collapsed kernel matches no
  subspace), with the rank cut at NumPy's ``matrix_rank`` tolerance. For a
  Flax kernel ``(d, k)`` the column space is the row space of Bort's
  ``W = kernelᵀ``.

  Args:
    a: a ``(d, k)`` matrix.
    b: a ``(d, l)`` matrix.

  Returns:
    ``min(d, k, l)`` cosines (no more than ``d`` directions exist), in
    descending order.

  Examples:
    >>> import jax.numpy as jnp
    >>> a = jnp.array([[1.0, 1.0], [1.0, -1.0], [0.0, 0.0]])  # span(e1, e2)
    >>> principal_cosines(a, jnp.eye(3, 2))
    Array([1., 1.], dtype=float32)
    >>> principal_cosines(a, jnp.array([[1.0], [0.0], [1.0]]))  # 45°
    Array([0.70710677], dtype=float32)
    >>> principal_cosines(jnp.zeros((3, 2)), jnp.eye(3, 2))  # no subspace
    Array([0., 0.], dtype=float32)
  """
  a, b = jnp.asarray(a), jnp.asarray(b)
  if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0]:
    raise ValueError(
        "principal_cosines expects matrices (d, k) and (d, l); got shapes "
        f"{a.shape} and {b.shape}."
    )
  dtype = jnp.promote_types(jnp.result_type(a, b), jnp.float32)

  def basis(x):  # the column space's orthonormal basis; rank-deficient
    # directions are zero columns
    u, sv, _ = jnp.linalg.svd(x.astype(dtype), full_matrices=False)
    tol = sv[..., :1] * max(x.shape) * jnp.finfo(dtype).eps
    return u * (sv > tol)

  cosines = jnp.linalg.svd(basis(a).T @ basis(b), compute_uv=False)
  return jnp.clip(cosines, 0.0, 1.0)


class DBortLinearFit(NamedTuple):
  """The result of :func:`fit_dbort_linear`.

  Attributes:
    kernel: the learned Flax kernel ``(d, k)``; Bort's ``W = kernelᵀ`` has
      rows spanning (≈) the top-k principal subspace, ``W Wᵀ ≈ cI``.
    amplitude: ``c``, the learned mean squared row norm of ``W`` (the
      target ``c`` up to the constraint's small slack), so that
      ``(x − mean) @ kernel @ kernel.T / c`` is the reconstruction.
    mean: the mean subtracted from the data (zeros when ``center=False``).
    steps: the number of optimisation steps taken.
    history: arrays with one value per step, before the step:
      ``"energy"`` (``mean(y²)`` of the data's outputs), ``"amplitude"``
      (``c̄``, the mean squared row norm of ``W``) and
      ``"orthogonality_error"`` (``‖W Wᵀ − c̄I‖_F / ‖c̄I‖_F``, as
      :func:`bort_jax.matrix_orthogonality_error`).
  """

  kernel: Array
  amplitude: float
  mean: Array
  steps: int
  history: dict[str, Array]


def _second_moment_root(x: np.ndarray, chunk: int = 8192,
                        mean: np.ndarray | float = 0.0) -> np.ndarray:
  """``R`` (d, d) with ``Rᵀ R / d = (x − mean)ᵀ (x − mean) / N``: d rows
  with the centred x's second moment.

  Centred and accumulated in float64 over row chunks, so x is never copied
  whole, and integer data are never centred in their own dtype (a uint8
  difference wraps around).
  """
  n, d = x.shape
  moment = np.zeros((d, d), np.float64)
  for start in range(0, n, chunk):
    rows = np.asarray(x[start:start + chunk], np.float64) - mean
    moment += rows.T @ rows
  moment /= n
  eigenvalues, eigenvectors = np.linalg.eigh(moment)
  root = (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ (
      eigenvectors.T
  )
  return math.sqrt(d) * root


def fit_dbort_linear(
    x: Any,
    k: int,
    *,
    steps: int = 2000,
    learning_rate: float = 0.1,
    momentum: float = 0.95,
    constraint_step: float = 0.5,
    final_fraction: float = 0.01,
    amplitude: float = 1.0,
    weight: float | None = None,
    power: float = DBORT_POWER,
    center: bool = True,
    compress: bool | None = None,
    seed: int = 0,
    optimizer: optax.GradientTransformation | None = None,
) -> DBortLinearFit:
  """Trains a k-output linear layer with Bort + DBort; it converges to PCA.

  A bias-free ``nnx.Linear(d, k)`` (kernel initialised orthogonal with
  squared column norms ``c``) is trained full-batch on the loss
  :func:`dbort_loss` of its outputs ``y = (x − mean) @ kernel`` with the
  optimizer :func:`dbort_linear_optimizer` (Bort-SGD, ``l2-full``, fixed
  ``c``). With ``W = kernelᵀ`` and ``C`` the data's covariance,

  .. math::
    \\max_{W Wᵀ = cI} \\log \\operatorname{tr}(W C Wᵀ)
    = \\log\\Big(c \\sum_{i \\le k} λ_i(C)\\Big)

  (Ky Fan), attained iff the rows of ``W`` span the top-k eigenvectors: the
  layer's row space converges to the PCA subspace and
  ``(x − mean) @ kernel @ kernel.T / c`` to the PCA reconstruction. The rows
  are principal directions only up to a rotation inside the subspace.

  The defaults need no tuning on standardised (or merely centred) data of
  any scale: the step on ``log mean(y²)`` is dimensionless. They converge
  when the relative eigengap ``(λ_k − λ_{k+1}) / Σ_{i≤k} λ_i`` is at least
  about ``2·10⁻³`` (e.g. sklearn digits, 64-d, ``k`` up to 16; MNIST, 784-d,
  ``k = 10``); for smaller gaps, raise ``steps``.

  For a linear layer the loss depends on the data only through its second
  moment, so with ``compress`` the layer is run on ``d`` rows ``R`` with
  ``Rᵀ R / d = xᵀ x / N`` (a symmetric square root): the same loss and
  gradients, exactly, at ``O(d² k)`` per step instead of ``O(N d k)``.

  Args:
    x: data ``(N, d)``.
    k: the number of outputs, ``1 ≤ k ≤ d``.
    steps: full-batch optimisation steps.
    learning_rate: see :func:`dbort_linear_optimizer`.
    momentum: see :func:`dbort_linear_optimizer`.
    constraint_step: see :func:`dbort_linear_optimizer`.
    final_fraction: see :func:`dbort_linear_optimizer`.
    amplitude: ``c``, the target squared row norm of ``W``.
    weight: DBort's ``λ``; ``None`` for ``1 / p`` (the optimizer compensates
      any other value exactly).
    power: DBort's ``p``.
    center: subtract the data's mean first (PCA's setting).
    compress: run on the second-moment root; ``None`` does so when ``N > d``.
    seed: seeds the kernel's initialisation.
    optimizer: replaces the recipe (then ``learning_rate``, ``momentum``,
      ``constraint_step`` and ``final_fraction`` are unused), e.g. to try
      the published Bort-AdamW setting; it must apply the Bort correction
      itself.

  Returns:
    A :class:`DBortLinearFit`.

  Raises:
    ValueError: data that are not real ``(N, d)`` numbers, not finite, or
      constant (one sample: nothing to fit); a bad setting.
    TypeError: a setting of the wrong type.
    FloatingPointError: the training diverged (the kernel is not finite).

  Examples:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(1000, 5)) * [3.0, 2.0, 1.0, 0.5, 0.2]
    >>> fit = fit_dbort_linear(x, 2, steps=300)
    >>> fit.kernel.shape, round(fit.amplitude, 2)
    ((5, 2), 1.0)
    >>> top2 = np.eye(5, 2)  # the principal axes are the coordinate axes
    >>> bool(principal_cosines(fit.kernel, top2).min() > 0.999)
    True

  References:
    Zhang, Zheng, Zhou, Lu, "Bort: Towards Explainable Neural Networks with
    Bounded Orthogonal Constraint", ICLR 2023 (DBort and its PCA limit).
    Ky Fan, "On a theorem of Weyl concerning eigenvalues of linear
    transformations", PNAS 1949.
  """
  data = np.asarray(x)
  if (jnp.issubdtype(data.dtype, jnp.floating)
      and not np.issubdtype(data.dtype, np.number)):
    data = data.astype(np.float32)  # bfloat16: ml_dtypes, not NumPy's
  if data.ndim != 2 or not (np.issubdtype(data.dtype, np.integer)
                            or np.issubdtype(data.dtype, np.floating)):
    # Complex data lost their imaginary part under a NumPy warning.
    raise ValueError(
        f"fit_dbort_linear expects real numeric data (N, d); got shape "
        f"{data.shape} and dtype {data.dtype}."
    )
  n, d = data.shape
  if n < 1 or d < 1:
    raise ValueError(f"fit_dbort_linear needs non-empty data; got {data.shape}.")
  k = validation.check_positive_int("k", k)
  if k > d:
    raise ValueError(f"k must be an integer in [1, d={d}], got {k}.")
  if not np.all(np.isfinite(data)):
    raise ValueError("fit_dbort_linear: the data contain NaN or inf.")
  steps = validation.check_positive_int("steps", steps)
  # "no" centred the data; 1.5 failed deep in Flax's Rngs; an optimizer
  # name failed at .init.
  center = validation.check_bool("center", center)
  if compress is not None:
    compress = validation.check_bool("compress", compress)
  seed = validation.check_nonnegative_int("seed", seed)
  if optimizer is not None:
    optimizer = validation.check_transformation(optimizer, "fit_dbort_linear")
  recipe = dbort_linear_optimizer(
      steps,
      learning_rate=learning_rate,
      momentum=momentum,
      constraint_step=constraint_step,
      final_fraction=final_fraction,
      amplitude=amplitude,
      weight=weight,
      power=power,
  )
  tx = recipe if optimizer is None else optimizer
  amplitude = float(amplitude)
  weight = 1.0 / power if weight is None else float(weight)

  mean = data.mean(axis=0, dtype=np.float64) if center else np.zeros(d)
  if compress is None:
    compress = n > d
  # Centred in float64: in the data's own dtype a uint8 difference wraps.
  batch = (_second_moment_root(data, mean=mean) if compress
           else np.asarray(data, np.float64) - mean)
  if not np.any(batch):
    # The loss is floored and its gradient zero: the random start came back.
    raise ValueError(
        "fit_dbort_linear: the data are constant (one sample, or equal rows"
        + (" after centring" if center else "") + "): there is no direction "
        "to fit.")
  batch = jnp.asarray(batch, jnp.float32)

  layer = nnx.Linear(
      d,
      k,
      use_bias=False,
      kernel_init=nnx.initializers.orthogonal(scale=math.sqrt(amplitude)),
      rngs=nnx.Rngs(seed),
  )
  graphdef, params = nnx.split(layer, nnx.Param)

  def loss_fn(params):
    outputs = nnx.merge(graphdef, params)(batch)
    return dbort_loss(outputs, weight=weight, power=power), outputs

  def step(carry, _):
    params, opt_state = carry
    grads, outputs = jax.grad(loss_fn, has_aux=True)(params)
    kernel = params["kernel"][...]
    logs = {
        "energy": jnp.mean(jnp.square(outputs)),
        "amplitude": jnp.mean(jnp.sum(jnp.square(kernel), axis=0)),
        "orthogonality_error": matrix_orthogonality_error(
            kernel.T
        ).constraint_error,
    }
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return (params, opt_state), logs

  @jax.jit
  def train(params):
    (params, _), history = jax.lax.scan(
        step, (params, tx.init(params)), length=steps
    )
    return params, history

  params, history = train(params)
  kernel = params["kernel"][...]
  if not bool(jnp.all(jnp.isfinite(kernel))):
    raise FloatingPointError(
        "fit_dbort_linear diverged: the kernel is not finite; lower "
        "learning_rate (or the optimizer's).")
  return DBortLinearFit(
      kernel=kernel,
      amplitude=float(jnp.mean(jnp.sum(jnp.square(kernel), axis=0))),
      mean=jnp.asarray(mean, jnp.float32),
      steps=steps,
      history=history,
  )
