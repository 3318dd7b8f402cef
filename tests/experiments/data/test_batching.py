"""bort_jax.experiments.data.batching: one epoch of minibatches."""

import hypothesis
from hypothesis import strategies as st
import numpy as np
import pytest

from bort_jax.experiments import data


def _epoch(n, batch_size, **kwargs):
  x = np.arange(n)
  y = -np.arange(n)
  out = list(data.batches(x, y, batch_size, **kwargs))
  for xb, yb in out:
    np.testing.assert_array_equal(yb, -xb)  # pairs stay together
  return [xb for xb, _ in out]


def test_batches_cover_each_example_once():
  parts = _epoch(10, 3, seed=0)
  assert [len(p) for p in parts] == [3, 3, 3, 1]
  np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(10))
  assert not np.array_equal(np.concatenate(parts), np.arange(10))


def test_batches_drop_remainder():
  parts = _epoch(10, 3, seed=0, drop_remainder=True)
  assert [len(p) for p in parts] == [3, 3, 3]
  assert len(np.unique(np.concatenate(parts))) == 9
  assert _epoch(2, 3, drop_remainder=True) == []


def test_batches_are_deterministic_for_a_seed():
  same = [np.concatenate(_epoch(50, 8, seed=7)) for _ in range(2)]
  np.testing.assert_array_equal(*same)
  other = np.concatenate(_epoch(50, 8, seed=8))
  assert not np.array_equal(same[0], other)


def test_batches_generator_advances_between_epochs():
  rng = np.random.default_rng(0)
  first = np.concatenate(_epoch(50, 8, seed=rng))
  second = np.concatenate(_epoch(50, 8, seed=rng))
  assert not np.array_equal(first, second)
  rng = np.random.default_rng(0)
  np.testing.assert_array_equal(np.concatenate(_epoch(50, 8, seed=rng)), first)


def test_batches_without_shuffle_keep_order():
  parts = _epoch(7, 2, shuffle=False)
  np.testing.assert_array_equal(np.concatenate(parts), np.arange(7))


def test_batches_of_images():
  x = np.zeros((5, 8, 8, 1), np.float32)
  y = np.arange(5, dtype=np.int32)
  (xb, yb), _ = data.batches(x, y, 4, seed=0)
  assert xb.shape == (4, 8, 8, 1) and yb.dtype == np.int32


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True, "4"])
def test_batches_reject_bad_batch_size(batch_size):
  with pytest.raises(ValueError, match="batch_size"):
    data.batches(np.arange(4), np.arange(4), batch_size)  # fails at the call


def test_batches_reject_mismatched_lengths():
  with pytest.raises(ValueError, match="x has 4 examples but y has 3"):
    data.batches(np.arange(4), np.arange(3), 2)


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(
    n=st.integers(0, 40),
    batch_size=st.integers(1, 12),
    drop=st.booleans(),
    shuffle=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_batches_property(n, batch_size, drop, shuffle, seed):
  parts = _epoch(n, batch_size, seed=seed, drop_remainder=drop, shuffle=shuffle)
  sizes = [len(p) for p in parts]
  assert all(s == batch_size for s in sizes[:-1])
  seen = np.concatenate(parts) if parts else np.array([], int)
  assert len(np.unique(seen)) == len(seen)
  if drop:
    assert sizes == [batch_size] * (n // batch_size)
  else:
    np.testing.assert_array_equal(np.sort(seen), np.arange(n))
