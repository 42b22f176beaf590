"""Checkpoints round-trip every bit, are written atomically, and say what is wrong with a file."""

import io
import json
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from funcgrad import checkpoint
from funcgrad.checkpoint import CheckpointError, CheckpointMismatchError

F32 = jnp.float32  # explicit, so the tests mean the same with JAX_ENABLE_X64=1


def make_params(hidden=8):
    k1, k2 = jax.random.split(jax.random.key(0))
    return {
        "layers": [
            {"W": jax.random.normal(k1, (4, hidden), F32), "b": jnp.zeros(hidden, F32)},
            {"W": jax.random.normal(k2, (hidden, 3), F32), "b": jnp.zeros(3, F32)},
        ],
        "scale": jnp.asarray(1.5, jnp.bfloat16),
    }


def loss(params, x):
    h = jnp.tanh(x @ params["layers"][0]["W"] + params["layers"][0]["b"])
    y = h @ params["layers"][1]["W"] + params["layers"][1]["b"]
    return jnp.mean(y**2) * params["scale"].astype(jnp.float32)


OPTIMIZER = optax.adam(1e-2)


@jax.jit
def train_step(params, opt_state, key):
    key, sub = jax.random.split(key)
    x = jax.random.normal(sub, (16, 4), F32)
    grads = jax.grad(loss)(params, x)
    updates, opt_state = OPTIMIZER.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, key


def trained_state(steps=3):
    params, key = make_params(), jax.random.key(42)
    opt_state = OPTIMIZER.init(params)
    for _ in range(steps):
        params, opt_state, key = train_step(params, opt_state, key)
    return params, opt_state, key


def assert_bit_equal(a, b):
    leaves_a, tree_a = jax.tree.flatten(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b):
        assert type(x) is type(y)
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            assert x.dtype == y.dtype
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()


def test_round_trip_with_template_restores_exact_types_and_bits(tmp_path):
    params, opt_state, key = trained_state()
    extra = {"key": key, "raw_key": jax.random.PRNGKey(7), "keys": jax.random.split(key, 3)}
    path = checkpoint.save(
        tmp_path / "ckpt.fgz",
        params,
        opt_state=opt_state,
        step=3,
        metadata={"lr": 1e-2, "model": "mlp", "sizes": [4, 8, 3], "loss": np.float32(0.25)},
        extra=extra,
    )
    like = {"params": params, "opt_state": opt_state, "extra": extra}
    restored = checkpoint.load(path, like=like)
    assert set(restored) == {"params", "opt_state", "step", "metadata", "extra"}
    assert restored["step"] == 3
    assert restored["metadata"] == {"lr": 1e-2, "model": "mlp", "sizes": [4, 8, 3], "loss": 0.25}
    assert_bit_equal(restored["params"], params)
    assert_bit_equal(restored["opt_state"], opt_state)
    assert_bit_equal(restored["extra"], extra)
    adam = restored["opt_state"][0]
    assert type(adam).__name__ == "ScaleByAdamState" and int(adam.count) == 3
    # The restored key draws the same numbers.
    np.testing.assert_array_equal(
        jax.random.normal(restored["extra"]["key"], (5,)), jax.random.normal(key, (5,))
    )


def test_resuming_reproduces_the_uninterrupted_run_exactly(tmp_path):
    params, opt_state, key = trained_state(steps=2)
    checkpoint.save(tmp_path / "c", params, opt_state=opt_state, step=2, extra={"key": key})
    for _ in range(2):
        params, opt_state, key = train_step(params, opt_state, key)

    like = {"params": params, "opt_state": opt_state, "extra": {"key": key}}
    ckpt = checkpoint.load(tmp_path / "c", like=like)
    p, s, k = ckpt["params"], ckpt["opt_state"], ckpt["extra"]["key"]
    for _ in range(2):
        p, s, k = train_step(p, s, k)
    assert_bit_equal((p, s, k), (params, opt_state, key))


def test_special_values_and_dtypes_survive_bit_for_bit(tmp_path):
    special = np.array([np.nan, -np.nan, -0.0, np.inf, -np.inf, 1e-45, 3.4e38], np.float32)
    special = np.append(special, np.frombuffer(b"\x01\x00\xc0\x7f", np.float32))  # NaN payload
    tree = {
        "f32": special,
        "f64": np.array([np.pi, -0.0, 5e-324]),
        "i32": np.array([-(2**31), 2**31 - 1], np.int32),
        "u32": np.array([0, 2**32 - 1], np.uint32),
        "bf16": jnp.array([1.0, -0.0, jnp.nan, 3.3e38], jnp.bfloat16),
        "f16": jnp.array([65504.0, 6e-8], jnp.float16),
        "bool": np.array([True, False]),
        "c64": np.array([1 + 2j], np.complex64),
        "scalar": np.float32(2.5),
        "int": 7,
        "float": 0.1,
        "flag": True,
        "empty": np.zeros((0, 3), np.float32),
        "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        "none": None,
        "nested": ({"a": jnp.ones(2, jnp.int8)}, [jnp.uint8(3)]),
    }
    checkpoint.save(tmp_path / "c", tree)
    assert_bit_equal(checkpoint.load(tmp_path / "c", like={"params": tree})["params"], tree)
    plain = checkpoint.load(tmp_path / "c")["params"]  # no template: same kinds of leaves
    assert_bit_equal(plain, tree)


def test_without_template_namedtuples_become_dicts(tmp_path):
    params, opt_state, _ = trained_state(steps=1)
    checkpoint.save(tmp_path / "c", params, opt_state=opt_state)
    ckpt = checkpoint.load(tmp_path / "c")
    adam, empty = ckpt["opt_state"]
    assert set(adam) == {"count", "mu", "nu"} and empty == {}
    assert_bit_equal(adam["mu"], opt_state[0].mu)
    assert ckpt["step"] == 0 and ckpt["metadata"] == {} and ckpt["extra"] is None


def test_template_of_shapes_gives_jax_arrays(tmp_path):
    params, opt_state, _ = trained_state(steps=1)
    checkpoint.save(tmp_path / "c", params, opt_state=opt_state)
    like = jax.eval_shape(lambda: {"params": make_params(), "opt_state": OPTIMIZER.init(params)})
    ckpt = checkpoint.load(tmp_path / "c", like=like)
    assert_bit_equal(ckpt["params"], params)
    assert_bit_equal(ckpt["opt_state"], opt_state)


def test_checkpoint_is_a_plain_npz_without_pickles(tmp_path):
    params, _, _ = trained_state(steps=1)
    checkpoint.save(tmp_path / "c.npz", params, step=5)
    with zipfile.ZipFile(tmp_path / "c.npz") as zf:
        manifest = json.loads(zf.read("manifest.json"))
    assert manifest["format"] == "funcgrad.checkpoint" and manifest["step"] == 5
    entries = {r["path"]: r["entry"].removesuffix(".npy") for r in manifest["leaves"]}
    assert list(entries) == [  # jax.tree.leaves order
        "params['layers'][0]['W']",
        "params['layers'][0]['b']",
        "params['layers'][1]['W']",
        "params['layers'][1]['b']",
        "params['scale']",
    ]
    with np.load(tmp_path / "c.npz", allow_pickle=False) as npz:
        np.testing.assert_array_equal(
            npz[entries["params['layers'][0]['W']"]], params["layers"][0]["W"]
        )
        scale = npz[entries["params['scale']"]]
    assert scale.dtype == np.uint16  # bfloat16, stored as its bits
    assert scale.view(jnp.bfloat16) == params["scale"]

    info = checkpoint.inspect(tmp_path / "c.npz")
    assert info["step"] == 5
    assert info["leaves"]["params['layers'][0]['W']"] == ((4, 8), "float32")
    assert info["leaves"]["params['scale']"] == ((), "bfloat16")


# --- atomicity ---------------------------------------------------------------------------------


def test_a_failure_mid_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    params, opt_state, _ = trained_state(steps=1)
    path = checkpoint.save(tmp_path / "ckpt", params, opt_state=opt_state, step=1)
    before = path.read_bytes()

    calls = []
    real_write = checkpoint._write_leaf

    def failing_write(zf, entry, array):
        calls.append(entry)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        real_write(zf, entry, array)

    monkeypatch.setattr(checkpoint, "_write_leaf", failing_write)
    later = jax.tree.map(lambda x: x + 1, params)
    with pytest.raises(OSError, match="No space left"):
        checkpoint.save(path, later, opt_state=opt_state, step=2)
    assert len(calls) == 3  # it failed part-way through writing
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary file left over
    assert checkpoint.load(path)["step"] == 1


def test_bad_input_is_refused_before_anything_is_written(tmp_path):
    path = tmp_path / "ckpt"
    with pytest.raises(CheckpointError, match=r"params\['name'\] is a str, not an array"):
        checkpoint.save(path, {"w": jnp.ones(2), "name": "mlp"})
    with pytest.raises(CheckpointError, match=r"metadata must be JSON-serialisable.*ndarray"):
        checkpoint.save(path, {"w": jnp.ones(2)}, metadata={"curve": np.ones(3)})
    with pytest.raises(CheckpointError, match=r"params\['x'\] is an object array"):
        checkpoint.save(path, {"x": np.array([None, 1])})
    with pytest.raises(CheckpointError, match=r"dict key \(1, 2\) of type tuple"):
        checkpoint.save(path, {(1, 2): jnp.ones(1)})
    assert list(tmp_path.iterdir()) == []


# --- corrupted files ---------------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path):
    params, opt_state, _ = trained_state(steps=1)
    path = checkpoint.save(tmp_path / "ckpt.fgz", params, opt_state=opt_state, step=1)
    return path, params, opt_state


def test_truncated_file(saved):
    path, *_ = saved
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted") as info:
        checkpoint.load(path)
    assert str(path) in str(info.value)


def test_flipped_bit_in_an_array(saved):
    path, params, _ = saved
    data = bytearray(path.read_bytes())
    w = np.asarray(params["layers"][0]["W"]).tobytes()
    offset = bytes(data).index(w)  # the stored bytes of params['layers'][0]['W']
    data[offset + 5] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="truncated or corrupted") as info:
        checkpoint.load(path)
    assert str(path) in str(info.value)
    assert "reading params['layers'][0]['W'] failed" in str(info.value)


def test_an_array_replaced_inside_the_zip_fails_its_checksum(saved, tmp_path):
    path, *_ = saved
    edited = tmp_path / "edited"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(edited, "w") as dst:
        manifest = json.loads(src.read("manifest.json"))
        target = next(r for r in manifest["leaves"] if r["path"] == "params['layers'][1]['b']")
        for item in src.infolist():
            body = src.read(item)
            if item.filename == target["entry"]:  # same shape and dtype, other values, valid CRC
                buffer = io.BytesIO()
                np.save(buffer, np.ones(3, np.float32))
                body = buffer.getvalue()
            dst.writestr(item, body)
    with pytest.raises(CheckpointError, match=r"params\['layers'\]\[1\]\['b'\] fail their SHA-256"):
        checkpoint.load(edited)


def test_not_a_checkpoint(tmp_path):
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"this is not a zip file at all" * 10)
    with pytest.raises(CheckpointError, match="not a readable zip file") as info:
        checkpoint.load(garbage)
    assert str(garbage) in str(info.value)
    other_zip = tmp_path / "weights.npz"
    np.savez(other_zip, w=np.ones(3))
    with pytest.raises(CheckpointError, match=r"without manifest\.json: not a funcgrad checkpoint"):
        checkpoint.load(other_zip)
    with pytest.raises(FileNotFoundError):
        checkpoint.load(tmp_path / "missing")


def test_checkpoint_from_a_newer_format_asks_to_upgrade(saved, tmp_path):
    path, *_ = saved
    newer = tmp_path / "newer"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(newer, "w") as dst:
        for item in src.infolist():
            body = src.read(item)
            if item.filename == "manifest.json":
                manifest = json.loads(body)
                manifest["version"] = checkpoint.FORMAT_VERSION + 1
                body = json.dumps(manifest).encode()
            dst.writestr(item, body)
    with pytest.raises(CheckpointError, match="upgrade funcgrad"):
        checkpoint.load(newer)


# --- templates that do not fit -----------------------------------------------------------------


def test_shape_mismatch_names_every_path(tmp_path):
    params = {"layers": [{"W": jnp.zeros((784, 32)), "b": jnp.zeros(32)}]}
    checkpoint.save(tmp_path / "c", params, opt_state=OPTIMIZER.init(params))
    wider = {"layers": [{"W": jnp.zeros((784, 64)), "b": jnp.zeros(64)}]}
    with pytest.raises(CheckpointMismatchError) as info:
        checkpoint.load(tmp_path / "c", like={"params": wider, "opt_state": OPTIMIZER.init(wider)})
    message = str(info.value)
    assert "params['layers'][0]['W']: expected shape (784, 64), found (784, 32)" in message
    assert "opt_state[0].mu['layers'][0]['W']: expected shape (784, 64), found (784, 32)" in message
    assert "opt_state[0].nu['layers'][0]['b']: expected shape (64,), found (32,)" in message
    assert "(6 mismatches)" in message and str(tmp_path / "c") in message


def test_structure_and_dtype_mismatches(tmp_path):
    params = {"W": jnp.zeros((2, 3), F32), "b": jnp.zeros(3, F32)}
    checkpoint.save(tmp_path / "c", params, extra={"key": jax.random.PRNGKey(0)})
    renamed = {"W": jnp.zeros((2, 3)), "bias": jnp.zeros(3)}
    with pytest.raises(CheckpointMismatchError) as info:
        checkpoint.load(tmp_path / "c", like={"params": renamed})
    assert "params['bias']: in the template, not in the checkpoint" in str(info.value)
    assert "params['b']: in the checkpoint, not in the template" in str(info.value)

    half = {"W": jnp.zeros((2, 3), jnp.float16), "b": jnp.zeros(3, F32)}
    with pytest.raises(
        CheckpointMismatchError, match=r"params\['W'\]: expected dtype float16, found float32"
    ):
        checkpoint.load(tmp_path / "c", like={"params": half})

    typed = {"key": jax.random.key(0)}  # saved as a raw uint32 key
    with pytest.raises(
        CheckpointMismatchError, match=r"extra\['key'\]: expected shape \(\), found \(2,\)"
    ):
        checkpoint.load(tmp_path / "c", like={"extra": typed})

    with pytest.raises(
        CheckpointMismatchError, match=r"opt_state.*in the template, not in the checkpoint"
    ):
        checkpoint.load(tmp_path / "c", like={"opt_state": OPTIMIZER.init(params)})
    with pytest.raises(ValueError, match="like= may only name"):
        checkpoint.load(tmp_path / "c", like={"parameters": params})


def test_64_bit_jax_arrays_keep_their_bits_when_x64_is_off(tmp_path):
    with jax.enable_x64(True):
        value = jnp.array([np.pi, 1e-310], jnp.float64)
        checkpoint.save(tmp_path / "c", {"w": value})
        assert_bit_equal(checkpoint.load(tmp_path / "c")["params"], {"w": value})
    if jax.config.jax_enable_x64:
        pytest.skip("x64 is enabled for the whole session (JAX_ENABLE_X64)")
    with pytest.warns(UserWarning, match=r"params\['w'\] was saved as a float64 jax.Array"):
        w = checkpoint.load(tmp_path / "c")["params"]["w"]
    assert isinstance(w, np.ndarray) and w.tobytes() == np.asarray(value).tobytes()
