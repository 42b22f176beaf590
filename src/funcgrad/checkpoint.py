"""Checkpoints: params, optimizer state, step and metadata in one file, bit-exact and atomic.

A checkpoint is a zip file (readable with ``numpy.load`` too) holding one ``.npy`` entry per pytree
leaf and a ``manifest.json``::

    manifest.json        format name and version; step; metadata; the tree structure of each part
                         (params, opt_state, extra); and per leaf: its path
                         (``opt_state[0].mu['layers'][0]['W']``), shape, dtype, kind (jax/numpy
                         array, typed PRNG key, Python scalar), the entry holding it and the
                         SHA-256 of its bytes
    leaves/00000.npy     the leaves, in ``jax.tree.leaves`` order
    ...

No pickle anywhere: arrays are read with ``allow_pickle=False``, and the structure is JSON. Dtypes
NumPy's ``.npy`` cannot describe (bfloat16, float8) are stored as unsigned integers of the same
width and viewed back, typed PRNG keys as their ``jax.random.key_data`` plus the implementation
name, so every bit comes back. The file is written to a temporary file in the same directory,
fsync'ed and renamed over ``path``: a crash or error mid-save leaves the previous checkpoint intact.

Typical use::

    fg.checkpoint.save("run/ckpt.fgz", params, opt_state=opt_state, step=step,
                       metadata={"lr": 1e-3}, extra={"key": key})
    like = {"params": params, "opt_state": opt_state, "extra": {"key": key}}
    ckpt = fg.checkpoint.load("run/ckpt.fgz", like=like)
    params, opt_state, step = ckpt["params"], ckpt["opt_state"], ckpt["step"]
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from funcgrad.data.atomic import atomic_write

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "CheckpointError",
    "CheckpointMismatchError",
    "inspect",
    "load",
    "save",
]

FORMAT = "funcgrad.checkpoint"
FORMAT_VERSION = 1
PARTS = ("params", "opt_state", "extra")
_MANIFEST = "manifest.json"
_PYTHON_SCALARS = {bool: "bool", int: "int", float: "float", complex: "complex"}
_MAX_LISTED = 10


class CheckpointError(ValueError):
    """A checkpoint cannot be written or read: the message names the file and what is wrong."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint does not fit the template passed as ``like``: lists every mismatching path."""


def save(
    path: str | os.PathLike[str],
    params: Any,
    *,
    opt_state: Any = None,
    step: int = 0,
    metadata: Mapping[str, Any] | None = None,
    extra: Any = None,
) -> Path:
    """Write params, optimizer state, step, metadata and extra arrays to ``path`` atomically.

    Args:
      path: the checkpoint file (any name; parent directories are created). An existing file is
        replaced only once the new one is completely written.
      params: a pytree of arrays (nested dicts/lists/tuples/NamedTuples of ``jax.Array``,
        ``np.ndarray``, typed or raw PRNG keys, Python numbers).
      opt_state: the optimizer state pytree (e.g. optax's), or None.
      step: the training step, an integer.
      metadata: a JSON-serialisable dict (hyper-parameters, metrics). NumPy/JAX scalars are
        stored as Python numbers; tuples come back as lists.
      extra: any other pytree of arrays a run needs to resume, e.g. ``{"key": key}``.

    Returns the path written. Raises CheckpointError naming the offending leaf or value (a string
    leaf, an object array, a non-JSON metadata value) before anything is written.
    """
    path = Path(path)
    try:
        step = int(np.asarray(step).item()) if not isinstance(step, int) else step
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: step must be an integer, got {step!r}.") from e
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "step": step,
        "metadata": _metadata_json(path, metadata),
        "written_by": {"funcgrad": _version("funcgrad"), "jax": jax.__version__},
        "trees": {},
        "leaves": [],
    }
    arrays: list[np.ndarray] = []
    for part, tree in zip(PARTS, (params, opt_state, extra)):
        with_path = jax.tree_util.tree_flatten_with_path(tree)[0]
        counter = iter(range(len(arrays), len(arrays) + len(with_path)))
        manifest["trees"][part] = _encode_structure(tree, counter, path, part)
        for key_path, leaf in with_path:
            leaf_path = part + jax.tree_util.keystr(key_path)
            stored, record = _to_numpy(leaf, leaf_path, path)
            record["entry"] = f"leaves/{len(arrays):05d}.npy"
            record["sha256"] = _digest(stored)
            manifest["leaves"].append(record)
            arrays.append(stored)
    manifest_bytes = json.dumps(manifest).encode()
    with (
        atomic_write(path) as f,
        zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf,
    ):
        for record, array in zip(manifest["leaves"], arrays):
            _write_leaf(zf, record["entry"], array)
        zf.writestr(_MANIFEST, manifest_bytes)
    return path


def load(path: str | os.PathLike[str], *, like: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Return ``{"params", "opt_state", "step", "metadata", "extra"}`` read from a checkpoint.

    Args:
      path: a file written by ``save``.
      like: a template such as ``{"params": params, "opt_state": opt_state}`` (any subset of
        ``"params"``, ``"opt_state"``, ``"extra"``; leaves may be arrays or
        ``jax.ShapeDtypeStruct``). The parts it names come back with exactly the template's tree
        types (optax NamedTuples, tuples vs lists, custom pytree nodes), as the same kind of leaf
        (``jax.Array`` placed with the template leaf's sharding, NumPy array, typed key, Python
        scalar), after checking structure, shapes and dtypes.

    Without ``like`` (and for parts ``like`` does not name) trees come back as saved, except that
    NamedTuples and custom pytree nodes become dicts keyed by field name: pass ``like`` to get an
    optax state you can hand back to the optimizer. Arrays come back as the kind they were saved as
    (a 64-bit ``jax.Array`` saved with x64 enabled comes back as a NumPy array, with a warning, if
    x64 is now disabled, so no bits are lost).

    Raises:
      FileNotFoundError: no file at ``path``.
      CheckpointError: the file is truncated, corrupted, not a checkpoint, or from a newer format
        (the message names the file and, for a bad leaf, its path).
      CheckpointMismatchError: the checkpoint does not fit ``like``; the message lists each
        mismatching path, e.g. ``opt_state[0].mu['W']: expected shape (784, 64), found (784, 32)``.
    """
    path = Path(path)
    if like is not None:
        unknown = set(like) - set(PARTS)
        if unknown:
            raise ValueError(
                f"like= may only name {', '.join(PARTS)}; got unknown key(s) {sorted(unknown)}."
            )
    manifest, leaves = _read(path)
    result: dict[str, Any] = {
        "step": manifest["step"],
        "metadata": manifest["metadata"],
    }
    problems: list[str] = []
    for part in PARTS:
        if like is not None and part in like:
            result[part] = _restore_like(part, like[part], manifest, leaves, problems)
        else:
            result[part] = _decode_structure(manifest["trees"][part], leaves, manifest, path)
    if problems:
        listed = problems[:_MAX_LISTED]
        more = (
            f"\n  ... and {len(problems) - _MAX_LISTED} more" if len(problems) > len(listed) else ""
        )
        raise CheckpointMismatchError(
            f"{path} does not match the template passed as like= "
            f"({len(problems)} mismatch{'es' if len(problems) > 1 else ''}):\n  "
            + "\n  ".join(listed)
            + more
            + "\nThe checkpoint was written for a different model or optimizer configuration; "
            "build the template with the same configuration, or load without like= to inspect it."
        )
    return {key: result[key] for key in ("params", "opt_state", "step", "metadata", "extra")}


def inspect(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Return a checkpoint's step, metadata and leaf shapes/dtypes, without reading arrays."""
    path = Path(path)
    manifest = _read_manifest(path)
    return {
        "step": manifest["step"],
        "metadata": manifest["metadata"],
        "version": manifest["version"],
        "written_by": manifest.get("written_by", {}),
        "leaves": {r["path"]: (tuple(r["shape"]), r["dtype"]) for r in manifest["leaves"]},
    }


# ---------------------------------------------------------------------------------------------
# Saving


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _metadata_json(path: Path, metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise CheckpointError(f"{path}: metadata must be a dict, got {type(metadata).__name__}.")

    def scalar(value: Any) -> Any:
        if isinstance(value, np.generic | np.ndarray | jax.Array) and np.ndim(value) == 0:
            return np.asarray(value).item()
        raise TypeError(f"{type(value).__name__} {value!r}")

    try:
        return json.loads(json.dumps(dict(metadata), default=scalar))
    except (TypeError, ValueError) as e:
        raise CheckpointError(
            f"{path}: metadata must be JSON-serialisable (str keys; numbers, strings, bools, None, "
            f"lists and dicts of them), but it holds {e}. Store arrays in extra= instead."
        ) from e


def _kind_of_node(node: Any) -> str:
    if node is None:
        return "none"
    treedef = jax.tree_util.tree_structure(node)
    if treedef.num_nodes == 1 and treedef.num_leaves == 1:  # not an empty container
        return "leaf"
    if isinstance(node, dict):
        return "dict"
    if isinstance(node, tuple) and hasattr(type(node), "_fields"):
        return "namedtuple"
    if type(node) is list:
        return "list"
    if type(node) is tuple:
        return "tuple"
    return "node"


def _children(node: Any) -> list[tuple[Any, Any]]:
    """(key entry, child) pairs of one pytree node, in flattening order."""
    pairs = jax.tree_util.tree_flatten_with_path(node, is_leaf=lambda x: x is not node)[0]
    return [(key_path[0], child) for key_path, child in pairs]


def _key_label(key: Any) -> Any:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return getattr(key, attr)
    return str(key)


def _encode_structure(node: Any, counter: Any, path: Path, where: str) -> Any:
    """JSON description of a pytree's structure; leaves become ``{"leaf": index}``."""
    kind = _kind_of_node(node)
    if kind == "none":
        return None
    if kind == "leaf":
        return {"leaf": next(counter)}
    children = _children(node)

    def enc(key: Any, child: Any) -> Any:
        return _encode_structure(child, counter, path, where + jax.tree_util.keystr((key,)))

    if kind == "dict":
        items = []
        for key, child in children:
            k = key.key
            if not isinstance(k, str | int) or isinstance(k, bool):
                raise CheckpointError(
                    f"{path}: {where} has a dict key {k!r} of type {type(k).__name__}; "
                    "checkpoints store str or int keys only."
                )
            items.append([k, enc(key, child)])
        return {"dict": items}
    if kind in ("list", "tuple"):
        return {kind: [enc(key, child) for key, child in children]}
    cls = type(node)
    name = f"{cls.__module__}.{cls.__qualname__}"
    if kind == "namedtuple":
        return {"namedtuple": name, "fields": [[key.name, enc(key, c)] for key, c in children]}
    return {"node": name, "children": [[str(_key_label(k)), enc(k, c)] for k, c in children]}


def _to_numpy(leaf: Any, leaf_path: str, path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """The array to store for a leaf, and its manifest record (what the user sees)."""
    record: dict[str, Any] = {"path": leaf_path}
    if isinstance(leaf, jax.Array):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            record.update(kind="key", impl=str(jax.random.key_impl(leaf)))
            array = np.asarray(jax.random.key_data(leaf))
        else:
            record["kind"] = "jax"
            array = np.asarray(leaf)
        record.update(shape=list(leaf.shape), dtype=str(leaf.dtype))
    elif isinstance(leaf, np.ndarray | np.generic):
        record["kind"] = "numpy" if isinstance(leaf, np.ndarray) else "numpy_scalar"
        array = np.asarray(leaf)
        record.update(shape=list(array.shape), dtype=str(array.dtype))
    elif type(leaf) in _PYTHON_SCALARS:
        record.update(kind="python", shape=[], dtype=_PYTHON_SCALARS[type(leaf)])
        try:
            array = np.asarray(leaf)
        except OverflowError as e:
            raise CheckpointError(f"{path}: {leaf_path} = {leaf} does not fit in int64.") from e
    else:
        raise CheckpointError(
            f"{path}: {leaf_path} is a {type(leaf).__name__}, not an array; checkpoints hold "
            "arrays and numbers only. Put other values in metadata=."
        )
    if array.dtype.hasobject:
        raise CheckpointError(
            f"{path}: {leaf_path} is an object array; checkpoints hold numeric arrays only."
        )
    if array.dtype.kind == "V":  # bfloat16, float8_*: .npy cannot describe them
        array = array.view(f"u{array.dtype.itemsize}")
    record["stored"] = {"shape": list(array.shape), "dtype": array.dtype.str}
    return _contiguous(array), record


def _contiguous(array: np.ndarray) -> np.ndarray:
    # Not np.ascontiguousarray: it turns 0-d arrays into 1-d ones.
    return array if array.flags.c_contiguous else array.copy(order="C")


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(_contiguous(array).reshape(-1).view(np.uint8)).hexdigest()


def _write_leaf(zf: zipfile.ZipFile, entry: str, array: np.ndarray) -> None:
    with zf.open(entry, "w", force_zip64=array.nbytes > 2**31) as out:
        np.lib.format.write_array(out, array, allow_pickle=False)


# ---------------------------------------------------------------------------------------------
# Loading


def _corrupt(path: Path, what: str) -> CheckpointError:
    return CheckpointError(
        f"{path}: {what}. The file is truncated or corrupted (e.g. a copy cut short, or a disk "
        "error); it cannot be loaded. Load an earlier checkpoint or a backup copy."
    )


def _check_manifest(path: Path, manifest: Any) -> dict[str, Any]:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a funcgrad checkpoint (unknown manifest format).")
    version = manifest.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version!r}, but this funcgrad reads versions up "
            f"to {FORMAT_VERSION}; upgrade funcgrad to load it."
        )
    for key, kind in (("step", int), ("metadata", dict), ("trees", dict), ("leaves", list)):
        if not isinstance(manifest.get(key), kind):
            raise _corrupt(path, f"the manifest's {key!r} entry is missing or malformed")
    for record in manifest["leaves"]:
        ok = isinstance(record, dict) and all(
            k in record for k in ("path", "kind", "shape", "dtype", "stored", "entry", "sha256")
        )
        if not ok:
            raise _corrupt(path, "the manifest's leaf list is malformed")
    return manifest


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        with zipfile.ZipFile(path) as zf:
            return _check_manifest(path, json.loads(zf.read(_MANIFEST)))
    except KeyError:
        raise CheckpointError(
            f"{path}: a zip file without {_MANIFEST}: not a funcgrad checkpoint."
        ) from None
    except zipfile.BadZipFile as e:
        raise _corrupt(path, f"not a readable zip file ({e})") from e
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _corrupt(path, f"its manifest is not valid JSON ({e})") from e


def _read(path: Path) -> tuple[dict[str, Any], list[np.ndarray]]:
    """The validated manifest and the stored arrays (each checked against its SHA-256)."""
    manifest = _read_manifest(path)
    leaves = []
    with zipfile.ZipFile(path) as zf:
        for record in manifest["leaves"]:
            try:
                with zf.open(record["entry"]) as f:
                    array = np.lib.format.read_array(f, allow_pickle=False)
            except KeyError:
                raise _corrupt(
                    path, f"the entry {record['entry']} holding {record['path']} is missing"
                ) from None
            except (zipfile.BadZipFile, EOFError, ValueError, OSError) as e:
                raise _corrupt(
                    path, f"reading {record['path']} failed ({type(e).__name__}: {e})"
                ) from e
            stored = record["stored"]
            if list(array.shape) != stored["shape"] or array.dtype.str != stored["dtype"]:
                raise _corrupt(
                    path,
                    f"{record['path']} holds {array.dtype.str}{list(array.shape)}, "
                    f"the manifest says {stored['dtype']}{stored['shape']}",
                )
            if _digest(array) != record["sha256"]:
                raise _corrupt(path, f"the bytes of {record['path']} fail their SHA-256 check")
            leaves.append(array)
    return manifest, leaves


def _user_array(record: dict[str, Any], stored: np.ndarray) -> np.ndarray:
    """The stored array viewed as the dtype the user saved (bfloat16 etc. were stored as uint)."""
    if record["kind"] in ("key", "python"):
        return stored
    dtype = jnp.dtype(record["dtype"])
    return stored if stored.dtype == dtype else stored.view(dtype)


def _leaf_as_saved(record: dict[str, Any], stored: np.ndarray) -> Any:
    kind = record["kind"]
    array = _user_array(record, stored)
    if kind == "python":
        return {"bool": bool, "int": int, "float": float, "complex": complex}[record["dtype"]](
            array.item()
        )
    if kind == "numpy_scalar":
        return array[()]
    if kind == "numpy":
        return array
    if kind == "key":
        return jax.random.wrap_key_data(jnp.asarray(array), impl=record["impl"])
    if jax.dtypes.canonicalize_dtype(array.dtype) != array.dtype:
        warnings.warn(
            f"{record['path']} was saved as a {array.dtype} jax.Array, but 64-bit types are "
            "disabled (jax_enable_x64 is off): returning it as a NumPy array to keep its bits.",
            stacklevel=4,
        )
        return array
    return jnp.asarray(array)


def _decode_structure(
    node: Any, leaves: list[np.ndarray], manifest: dict[str, Any], path: Path
) -> Any:
    try:
        if node is None:
            return None
        if "leaf" in node:
            index = node["leaf"]
            return _leaf_as_saved(manifest["leaves"][index], leaves[index])
        if "dict" in node:
            return {k: _decode_structure(c, leaves, manifest, path) for k, c in node["dict"]}
        if "list" in node:
            return [_decode_structure(c, leaves, manifest, path) for c in node["list"]]
        if "tuple" in node:
            return tuple(_decode_structure(c, leaves, manifest, path) for c in node["tuple"])
        pairs = node.get("fields", node.get("children"))
        return {k: _decode_structure(c, leaves, manifest, path) for k, c in pairs}
    except (KeyError, TypeError, ValueError, IndexError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise _corrupt(path, f"its tree structure is malformed ({type(e).__name__}: {e})") from e


def _expected(template_leaf: Any) -> tuple[tuple[int, ...], str] | None:
    """(shape, dtype name as recorded by save) of a template leaf, or None if it has none."""
    if type(template_leaf) in _PYTHON_SCALARS:
        return (), _PYTHON_SCALARS[type(template_leaf)]
    if hasattr(template_leaf, "shape") and hasattr(template_leaf, "dtype"):
        return tuple(template_leaf.shape), str(template_leaf.dtype)
    return None


def _restore_like(
    part: str,
    template: Any,
    manifest: dict[str, Any],
    leaves: list[np.ndarray],
    problems: list[str],
) -> Any:
    with_path, treedef = jax.tree_util.tree_flatten_with_path(template)
    wanted = [part + jax.tree_util.keystr(key_path) for key_path, _ in with_path]
    saved = {
        r["path"]: i
        for i, r in enumerate(manifest["leaves"])
        if r["path"] == part or r["path"].startswith((part + "[", part + "."))
    }
    missing = [p for p in wanted if p not in saved]
    unexpected = [p for p in saved if p not in set(wanted)]
    if missing or unexpected:
        problems += [f"{p}: in the template, not in the checkpoint" for p in missing]
        problems += [f"{p}: in the checkpoint, not in the template" for p in unexpected]
        return None
    restored = []
    for (_, template_leaf), leaf_path in zip(with_path, wanted):
        record = manifest["leaves"][saved[leaf_path]]
        found = (tuple(record["shape"]), record["dtype"])
        expected = _expected(template_leaf)
        if expected is None:
            problems.append(
                f"{leaf_path}: the template leaf is a {type(template_leaf).__name__}, "
                "not an array, ShapeDtypeStruct or number"
            )
            continue
        if expected[0] != found[0]:
            problems.append(f"{leaf_path}: expected shape {expected[0]}, found {found[0]}")
        if expected[1] != found[1]:
            problems.append(f"{leaf_path}: expected dtype {expected[1]}, found {found[1]}")
        if expected == found:
            restored.append(_leaf_like(template_leaf, record, leaves[saved[leaf_path]]))
    if len(restored) != len(wanted):
        return None
    return jax.tree_util.tree_unflatten(treedef, restored)


def _leaf_like(template_leaf: Any, record: dict[str, Any], stored: np.ndarray) -> Any:
    """The saved leaf as the same kind of object as the template leaf."""
    if type(template_leaf) in _PYTHON_SCALARS:
        return type(template_leaf)(stored.item())
    array = _user_array(record, stored)
    if isinstance(template_leaf, np.ndarray):
        return array
    if isinstance(template_leaf, np.generic):
        return array[()]
    if record["kind"] == "key":
        value = jax.random.wrap_key_data(jnp.asarray(array), impl=record["impl"])
    else:
        value = jnp.asarray(array)
    sharding = getattr(template_leaf, "sharding", None)
    return jax.device_put(value, sharding) if sharding is not None else value
