"""Synthetic data sets, stratified splits and shuffled minibatches, all from explicit keys."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcgrad import data
from funcgrad.data.batching import _stable_argsort_uint32

N = 101  # one size throughout: each generator compiles once per size

CLASSIFICATION = {
    "two_moons": (data.two_moons, 2),
    "xor": (data.xor, 2),
    "circles": (data.circles, 2),
    "spirals": (data.spirals, 2),
    "spirals3": (lambda key, n: data.spirals(key, n, num_classes=3), 3),
}


@pytest.mark.parametrize("name", CLASSIFICATION)
def test_classification_sets_shapes_dtypes_and_balance(name):
    make, num_classes = CLASSIFICATION[name]
    x, y = make(jax.random.key(0), N)
    assert x.shape == (N, 2) and x.dtype == jnp.float32
    assert y.shape == (N,) and y.dtype == jnp.int32
    counts = np.bincount(np.asarray(y), minlength=num_classes)
    assert counts.max() - counts.min() <= 1 and counts.sum() == N
    assert np.isfinite(np.asarray(x)).all()


@pytest.mark.parametrize("name", CLASSIFICATION)
def test_same_key_same_data_other_key_other_data(name):
    make, _ = CLASSIFICATION[name]
    a, b = make(jax.random.key(1), N), make(jax.random.key(1), N)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    other = make(jax.random.key(2), N)
    assert not np.array_equal(other[0], a[0])


def test_raw_uint32_keys_work_too():
    typed = data.two_moons(jax.random.key(1), N)
    raw = data.two_moons(jax.random.PRNGKey(1), N)
    np.testing.assert_array_equal(raw[0], typed[0])


def test_two_moons_geometry():
    x, y = data.two_moons(jax.random.key(0), N, noise=0.0)
    upper, lower = np.asarray(x[y == 0]), np.asarray(x[y == 1])
    np.testing.assert_allclose(np.hypot(upper[:, 0], upper[:, 1]), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.hypot(lower[:, 0] - 1, lower[:, 1] - 0.5), 1.0, atol=1e-6)
    assert (upper[:, 1] >= 0).all() and (lower[:, 1] <= 0.5).all()


def test_xor_without_noise_is_the_truth_table():
    x, y = data.xor(jax.random.key(0), 8, noise=0.0)
    np.testing.assert_array_equal(np.asarray(y), (np.asarray(x[:, 0] * x[:, 1]) < 0).astype(int))
    assert {tuple(p) for p in np.asarray(x).tolist()} == {(1, 1), (-1, -1), (1, -1), (-1, 1)}


def test_circles_radii():
    x, y = data.circles(jax.random.key(0), N, noise=0.0, factor=0.3)
    r = np.hypot(*np.asarray(x).T)
    np.testing.assert_allclose(r[np.asarray(y) == 0], 1.0, atol=1e-6)
    np.testing.assert_allclose(r[np.asarray(y) == 1], 0.3, atol=1e-6)


def test_spirals_radius_grows_along_each_arm():
    x, y = data.spirals(jax.random.key(0), N, num_classes=3, noise=0.0)
    for c in range(3):
        r = np.hypot(*np.asarray(x[y == c]).T)
        assert r[0] == 0 and np.isclose(r[-1], 1) and (np.diff(r) > 0).all()


def test_linear_regression_recovers_its_parameters():
    x, y = data.linear_regression(jax.random.key(0), 2000, dim=3, noise=0.1)
    assert x.shape == (2000, 3) and y.shape == (2000,)
    assert x.dtype == y.dtype == jnp.float32
    design = np.c_[np.asarray(x), np.ones(2000)]
    fit = np.linalg.lstsq(design, np.asarray(y), rcond=None)[0]
    np.testing.assert_allclose(fit, [2.0, -1.0, 0.5, 0.5], atol=0.02)
    x, y = data.linear_regression(jax.random.key(0), 5, w=jnp.array([3.0]), b=0.0, noise=0.0)
    np.testing.assert_allclose(y, 3 * x[:, 0], rtol=1e-6)


def test_generators_reject_bad_arguments():
    with pytest.raises(ValueError, match="noise is a standard deviation"):
        data.two_moons(jax.random.key(0), 10, noise=-1)
    with pytest.raises(ValueError, match="factor is the inner radius"):
        data.circles(jax.random.key(0), 10, factor=1.5)
    with pytest.raises(ValueError, match="n=1 is too small for 2 classes"):
        data.xor(jax.random.key(0), 1)
    with pytest.raises(ValueError, match=r"w must have shape \(dim,\) = \(2,\)"):
        data.linear_regression(jax.random.key(0), 5, dim=2, w=jnp.ones(3))


# --- train/validation split --------------------------------------------------------------------


def unbalanced(n_per_class=(300, 90, 10)):
    y = np.repeat(np.arange(len(n_per_class)), n_per_class).astype(np.int32)
    x = np.arange(len(y), dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    return x, y


def test_stratified_split_keeps_class_ratios():
    x, y = unbalanced()
    (x_tr, y_tr), (x_val, y_val) = data.train_val_split(jax.random.key(0), x, y, 0.2)
    assert len(x_val) == 80 and len(x_tr) == 320
    np.testing.assert_array_equal(np.bincount(y_val), [60, 18, 2])
    np.testing.assert_array_equal(np.bincount(y_tr), [240, 72, 8])
    # Every example lands in exactly one set, with its own label.
    ids = np.concatenate([x_tr[:, 0], x_val[:, 0]]).astype(int)
    np.testing.assert_array_equal(np.sort(ids), np.arange(400))
    np.testing.assert_array_equal(np.concatenate([y_tr, y_val]), y[ids])
    assert isinstance(x_tr, np.ndarray)  # NumPy in, NumPy out


def test_stratified_split_apportions_remainders_to_the_exact_total():
    x, y = unbalanced((7, 7, 7))
    (_, y_tr), (_, y_val) = data.train_val_split(jax.random.key(3), x, y, 0.6)
    assert len(y_val) == round(21 * 0.6) == 13  # quotas of 4.2 each: one class gets the 13th
    assert sorted(np.bincount(y_val).tolist()) == [4, 4, 5]
    assert sorted(np.bincount(y_tr).tolist()) == [2, 3, 3]


def test_split_is_shuffled_and_reproducible():
    x, y = unbalanced()
    a = data.train_val_split(jax.random.key(5), jnp.asarray(x), jnp.asarray(y), 0.25)
    b = data.train_val_split(jax.random.key(5), jnp.asarray(x), jnp.asarray(y), 0.25)
    c = data.train_val_split(jax.random.key(6), jnp.asarray(x), jnp.asarray(y), 0.25)
    np.testing.assert_array_equal(a[1][0], b[1][0])
    assert not np.array_equal(a[1][0], c[1][0])
    assert isinstance(a[0][0], jax.Array)
    assert not (np.diff(np.asarray(a[0][1])) >= 0).all()  # not left sorted by class


def test_unstratified_split_accepts_any_targets():
    x, _ = unbalanced()
    targets = np.random.default_rng(0).normal(size=(400, 2))
    (x_tr, t_tr), (x_val, t_val) = data.train_val_split(
        jax.random.key(0), x, targets, 0.1, stratify=False
    )
    assert len(x_val) == 40 and t_val.shape == (40, 2) and len(x_tr) == 360
    np.testing.assert_array_equal(t_tr, targets[x_tr[:, 0].astype(int)])


def test_split_errors_say_what_to_do():
    x, y = unbalanced()
    with pytest.raises(ValueError, match=r"val_fraction must be in \(0, 1\)"):
        data.train_val_split(jax.random.key(0), x, y, 1.0)
    with pytest.raises(ValueError, match=r"pass y\.argmax"):
        data.train_val_split(jax.random.key(0), x, np.eye(3)[y], 0.2)
    with pytest.raises(ValueError, match="same number of examples, got 400 and 399"):
        data.train_val_split(jax.random.key(0), x, y[:-1], 0.2)
    with pytest.raises(ValueError, match="empty validation set"):
        data.train_val_split(jax.random.key(0), x[:3], y[:3], 0.1)


# --- minibatches -------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 2, 2048, 2049, 60_000, 100_003])
@pytest.mark.parametrize("make_key", [jax.random.key, jax.random.PRNGKey])
def test_host_permutation_is_jax_random_permutation(n, make_key):
    # 2048 -> 2049 is where jax.random.permutation goes from one sorting round to two.
    for seed in range(3):
        key = jax.random.fold_in(make_key(seed), n)
        want = np.asarray(jax.random.permutation(key, n))
        got = data.permutation(key, n)
        assert isinstance(got, np.ndarray) and got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("spread", [1, 3, 70_000, 2**32])
def test_radix_argsort_is_numpy_stable_argsort(spread):
    # Many ties (spread 1 or 3), ties only in the high or low half, and full-range keys: the two
    # 16-bit passes must give exactly NumPy's stable order.
    rng = np.random.default_rng(spread)
    keys = rng.integers(0, spread, size=5000, dtype=np.uint64).astype(np.uint32)
    if spread == 70_000:
        keys |= np.uint32(0xABCD0000)  # equal high halves
    np.testing.assert_array_equal(_stable_argsort_uint32(keys), np.argsort(keys, kind="stable"))


def test_host_permutation_follows_x64_dtype_and_rejects_bad_sizes():
    with jax.enable_x64(True):
        key = jax.random.key(3)
        want = np.asarray(jax.random.permutation(key, 5000))
        got = data.permutation(key, 5000)
    assert got.dtype == want.dtype == np.int64
    np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="n must be in"):
        data.permutation(jax.random.key(0), -1)


@pytest.mark.parametrize("as_jax", [False, True])
def test_batches_cover_the_data_without_repeats(as_jax):
    x = np.arange(100, dtype=np.float32)[:, None] * np.ones((1, 4), np.float32)
    y = np.arange(100, dtype=np.int32)
    if as_jax:
        x, y = jnp.asarray(x), jnp.asarray(y)
    xb, yb = data.batches(jax.random.key(0), x, y, 10)
    assert xb.shape == (10, 10, 4) and yb.shape == (10, 10)
    assert isinstance(xb, jax.Array) == as_jax
    np.testing.assert_array_equal(np.sort(np.asarray(yb).ravel()), np.arange(100))
    np.testing.assert_array_equal(np.asarray(xb)[..., 0], np.asarray(yb))  # pairs stay together
    assert not np.array_equal(np.asarray(yb).ravel(), np.arange(100))  # shuffled


def test_drop_remainder_drops_a_different_tail_each_epoch():
    x, y = np.zeros((103, 2), np.float32), np.arange(103)
    seen = []
    for epoch in range(2):
        _, yb = data.batches(jax.random.fold_in(jax.random.key(0), epoch), x, y, 25)
        assert yb.shape == (4, 25)
        assert len(np.unique(yb)) == 100
        seen.append(set(range(103)) - set(np.asarray(yb).ravel().tolist()))
    assert seen[0] != seen[1]
    with pytest.raises(ValueError, match="use iter_batches"):
        data.batches(jax.random.key(0), x, y, 25, drop_remainder=False)
    xb, _ = data.batches(jax.random.key(0), x[:100], y[:100], 25, drop_remainder=False)
    assert xb.shape == (4, 25, 2)


def test_batches_under_jit_and_scan():
    x = jnp.arange(64, dtype=jnp.float32).reshape(32, 2)
    y = jnp.arange(32)

    @jax.jit
    def epoch_sum(key):
        xb, yb = data.batches(key, x, y, 8)
        total, _ = jax.lax.scan(lambda c, b: (c + b[0].sum() + b[1].sum(), None), 0.0, (xb, yb))
        return total

    assert float(epoch_sum(jax.random.key(0))) == float(x.sum() + y.sum())
    eager = data.batches(jax.random.key(7), x, y, 8)
    traced = jax.jit(lambda k: data.batches(k, x, y, 8))(jax.random.key(7))
    np.testing.assert_array_equal(eager[1], traced[1])


def test_iter_batches_matches_batches_and_keeps_the_short_tail():
    x, y = np.arange(23, dtype=np.float32), np.arange(23)
    key = jax.random.key(4)
    pieces = list(data.iter_batches(key, x, y, 5))
    assert [len(b[1]) for b in pieces] == [5, 5, 5, 5, 3]
    np.testing.assert_array_equal(np.sort(np.concatenate([b[1] for b in pieces])), np.arange(23))
    _, yb = data.batches(key, x, y, 5)
    np.testing.assert_array_equal(np.stack([b[1] for b in pieces[:4]]), yb)
    assert len(list(data.iter_batches(key, x, y, 5, drop_remainder=True))) == 4
    assert data.num_batches(23, 5) == 4 and data.num_batches(23, 5, drop_remainder=False) == 5


def test_batch_errors():
    x, y = np.zeros((10, 2)), np.zeros(10)
    with pytest.raises(ValueError, match="larger than the 10 examples"):
        data.batches(jax.random.key(0), x, y, 11)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        data.batches(jax.random.key(0), x, y, 0)
