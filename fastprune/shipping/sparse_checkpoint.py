"""Compressed checkpoints: safetensors files holding pruned tensors as a bitmask plus their values.

Layout (format ``fastprune.sparse/1``)
--------------------------------------
A checkpoint is one ``.safetensors`` file, or a directory holding
``model.safetensors`` or, when it is larger than ``max_shard_size``,
``model-00001-of-0000N.safetensors`` ... plus ``model.safetensors.index.json``
(the layout transformers uses: ``{"metadata": {"total_size": ...},
"weight_map": {stored name: file}}``). Every file is plain safetensors.

Each entry ``key`` of the state dict is stored either densely, under ``key``
itself, or sparsely, as

* ``key.bitmask``: ``uint8``, one bit per element in row-major order; element
  ``i`` is bit ``i % 8`` (least significant first) of byte ``i // 8``, padding
  bits 0 (the packed-mask format of :mod:`fastprune.ops`). A set bit marks a
  stored element.
* ``key.values``: the stored elements, 1-D, in the tensor's dtype and in
  row-major order; or, when all of them have the same bit pattern (0/1 masks),
  that one element.
* ``key.negzero`` (only when needed): a packed bitmask over the elements *not*
  stored, in order; a set bit means the element is ``-0.0`` rather than ``+0.0``.

An element is stored unless it is zero: for integer and bool tensors, all bits
zero; for floating-point tensors, ``+0.0`` or ``-0.0`` (a pruned weight is
``-0.0`` wherever ``orig * mask`` multiplied a negative weight by 0, which is
what ``torch.nn.utils.prune.remove`` leaves; ``key.negzero`` keeps that sign).
Everything else, NaN with its payload and infinities included, is stored with
its exact bits, so a round trip is bit for bit. A tensor is stored sparsely
only when that saves more than the extra header entries cost (256 bytes).

The safetensors header's ``__metadata__`` holds ``"format": "pt"``,
``"fastprune.format": "fastprune.sparse/1"`` and ``"fastprune.tensors"``, a
JSON object giving, for each state-dict key stored in the file and in the
state dict's order, its ``shape``, ``dtype`` (torch's name), ``encoding``
(``"dense"`` or ``"bitmask"``), ``nnz`` (stored elements), ``const``,
``negzero`` and ``crc32``: for each stored tensor of the entry (``key``, or
``key.bitmask``, ``key.values`` and ``key.negzero``), the CRC-32 (zlib's) of
its bytes as stored. :func:`load_sparse` checks them (``verify=True``), so a
flipped bit anywhere in the data is an error naming the file and the tensor
rather than weights silently shifted. Files written before the checksums
existed have no ``crc32`` and load unverified; readers that predate them
ignore the field. The index file's ``metadata`` also lists
``"fastprune.order"``: all keys in order.

Size of a tensor of ``N`` elements of ``b`` bytes at sparsity ``s``:
``N/8 + (1 - s) N b`` bytes (plus ``s N / 8`` when some zeros are ``-0.0``).
"""
from __future__ import annotations

import copy
import json
import math
import os
import re
import sys
import zlib
from collections import OrderedDict
from collections.abc import Mapping
from typing import Dict, List, Optional, Tuple, Union

import torch
from torch import nn

import numpy as np

from .. import ops
from .permanent import permanent_state_dict
from .state_dict import load_pruned_state_dict

__all__ = ["save_sparse", "load_sparse", "FORMAT"]

FORMAT = "fastprune.sparse/1"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_SIZE = "5GB"

Tensor = torch.Tensor

# Bytes the two or three extra header entries of a sparse tensor take: below
# that saving, a tensor is stored densely.
_HEADER_COST = 256

_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _safetensors():
    try:
        import safetensors
        import safetensors.torch
    except ImportError:
        raise ImportError(
            "save_sparse / load_sparse need the safetensors package: pip install 'fastprune[shipping]'"
        ) from None
    return safetensors


def _dtype_from_name(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r} in a fastprune sparse checkpoint")
    return dtype


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).rsplit(".", 1)[-1]


def _sign_bit(itemsize: int) -> int:
    """The sign bit of a float of ``itemsize`` bytes, as a value of the integer view's type."""
    return 0x80 if itemsize == 1 else -(1 << (8 * itemsize - 1))


# The element-wise work runs in numpy (a dependency of fastprune): single
# threaded, it avoids the thread wake-up cost torch pays per op on a busy
# machine, and its packbits / compress are single C passes. Tensors are
# handled as integer views of their bits, so nothing is ever converted and
# NaN payloads and signed zeros pass through untouched.
_NP_INT_OF_SIZE = {1: np.uint8, 2: np.int16, 4: np.int32, 8: np.int64}


def _bits(t: Tensor) -> Optional["np.ndarray"]:
    """The flat CPU tensor ``t`` as a numpy array of integers of its own width (``None``: cannot be)."""
    if t.is_complex() or t.element_size() not in _INT_OF_SIZE or t.numel() == 0:
        return None
    return t.view(_INT_OF_SIZE[t.element_size()]).numpy()


def _pack(flags: "np.ndarray") -> Tensor:
    """Bool array -> the packed 1-bit format of :func:`fastprune.ops.pack_mask` (same bytes)."""
    return torch.from_numpy(np.packbits(flags, bitorder="little"))


def _unpack(packed: Tensor, n: int) -> "np.ndarray":
    return np.unpackbits(packed.numpy(), count=n, bitorder="little").view(np.bool_)


def _encode(key: str, tensor: Tensor, seen: set) -> Tuple[Dict[str, Tensor], dict]:
    """The stored tensors and the metadata entry of one state-dict entry."""
    t = tensor.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous()
    info = {"shape": list(t.shape), "dtype": _dtype_name(t.dtype), "encoding": "dense"}
    bits = _bits(t.reshape(-1))
    if bits is not None:
        n, item = bits.size, t.element_size()
        floating = t.is_floating_point()
        if floating:
            # +0.0 and -0.0 are not stored (the sign goes to .negzero), anything else is.
            magnitude = bits.dtype.type(0x7F if item == 1 else ~_sign_bit(item))
            stored = (bits & magnitude) != 0
        else:
            stored = bits != 0
        nnz = int(np.count_nonzero(stored))
        negzero = None
        if floating and nnz < n and bool((bits == bits.dtype.type(_sign_bit(item))).any()):
            negzero = np.compress(~stored, bits) != 0
        values = np.compress(stored, bits)
        const = nnz > 1 and bool((values == values[0]).all())
        size = ops.packed_numel(n) + (1 if const else nnz) * item
        size += ops.packed_numel(n - nnz) if negzero is not None else 0
        if size + _HEADER_COST < n * item:
            out = {
                key + ".bitmask": _pack(stored),
                key + ".values": torch.from_numpy(values[:1] if const else values).view(t.dtype),
            }
            if negzero is not None:
                out[key + ".negzero"] = _pack(negzero)
            info.update(encoding="bitmask", nnz=nnz, const=const, negzero=negzero is not None,
                        crc32={name: _crc32(part) for name, part in out.items()})
            return out, info
    storage = t.untyped_storage()
    if storage.data_ptr() in seen or storage.nbytes() != t.nbytes:
        # safetensors refuses tensors sharing memory with another one (tied
        # weights, views of a larger tensor): store a private copy.
        t = t.clone()
    seen.add(t.untyped_storage().data_ptr())
    info["crc32"] = {key: _crc32(t)}
    return {key: t}, info


def _crc32(t: Tensor) -> int:
    """CRC-32 (zlib's) of the bytes of the contiguous CPU tensor ``t``, as safetensors stores them."""
    if t.numel() == 0:
        return 0
    return zlib.crc32(t.reshape(-1).view(torch.uint8).numpy())


class _Reader:
    """The stored tensors of one open file, each checked against its CRC-32 when it is read."""

    def __init__(self, handle, fname: str, verify: bool) -> None:
        self.handle = handle
        self.fname = fname
        self.verify = verify

    def get(self, key: str, info: dict, name: str) -> Tensor:
        t = self.handle.get_tensor(name)
        sums = info.get("crc32")
        if self.verify and isinstance(sums, dict) and name in sums:
            actual = _crc32(t.contiguous())
            if actual != sums[name]:
                raise ValueError(
                    f"{self.fname}: tensor {key!r} is damaged: the checksum of its stored part {name!r} is "
                    f"CRC-32 {actual:08x}, the header says {int(sums[name]):08x} (a changed bit in the file; "
                    "load_sparse(..., verify=False) reads it anyway)"
                )
        return t


def _decode(key: str, info: dict, reader: "_Reader") -> Tensor:
    def get(name):
        return reader.get(key, info, name)

    dtype = _dtype_from_name(info["dtype"])
    shape = [int(s) for s in info["shape"]]
    if info["encoding"] == "dense":
        t = get(key)
        if t.dtype != dtype or list(t.shape) != shape:
            raise ValueError(f"tensor {key!r}: stored as {t.dtype} {list(t.shape)}, the header says {dtype} {shape}")
        return t
    if info["encoding"] != "bitmask":
        raise ValueError(f"tensor {key!r}: unknown encoding {info['encoding']!r}")
    n = math.prod(shape)
    packed = get(key + ".bitmask")
    values = get(key + ".values")
    if packed.dtype != torch.uint8 or packed.numel() != ops.packed_numel(n) or values.dtype != dtype:
        raise ValueError(f"tensor {key!r}: corrupt bitmask or values (dtype/size do not match the header)")
    stored = _unpack(packed, n)
    nnz = int(np.count_nonzero(stored))
    if nnz != int(info["nnz"]):
        raise ValueError(f"tensor {key!r}: the bitmask has {nnz} set bits, the header says nnz {info['nnz']}")
    expected = min(nnz, 1) if info.get("const") else nnz
    if values.numel() != expected:
        what = f"const=True: one value for all {nnz} set bits" if info.get("const") else f"one per set bit ({nnz})"
        raise ValueError(f"tensor {key!r}: {values.numel()} values are stored, the header says {expected} "
                         f"({what})")
    vbits = _bits(values.reshape(-1))
    item = values.element_size()
    out = np.zeros(n, dtype=_NP_INT_OF_SIZE[item])
    if nnz:
        out[stored] = vbits[0] if info.get("const") else vbits
    if info.get("negzero"):
        neg = _unpack(get(key + ".negzero"), n - nnz)
        out[np.flatnonzero(~stored)[neg]] = out.dtype.type(_sign_bit(item))
    return torch.from_numpy(out).view(dtype).reshape(shape)


# ----------------------------------------------------------------------------
# Saving
# ----------------------------------------------------------------------------

_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
               "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def _parse_size(value, arg: str = "max_shard_size") -> int:
    if isinstance(value, bool):
        raise TypeError(f"{arg} must be an int (bytes) or a str like '5GB', got bool")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"{arg} must be positive, got {value}")
        return value
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", value)
        if m and m.group(2).upper() in _SIZE_UNITS:
            size = int(float(m.group(1)) * _SIZE_UNITS[m.group(2).upper()])
            if size > 0:
                return size
        raise ValueError(f"{arg}={value!r} is not a size such as '500MB', '5GB' or a number of bytes")
    raise TypeError(f"{arg} must be an int (bytes) or a str like '5GB', got {type(value).__name__}")


def _state_to_save(obj) -> "OrderedDict[str, Tensor]":
    if isinstance(obj, nn.Module):
        state = permanent_state_dict(obj)
    elif isinstance(obj, Mapping):
        state = obj
    else:
        raise TypeError(f"model_or_state_dict must be an nn.Module or a mapping of names to tensors, got {type(obj).__name__}")
    out = OrderedDict()
    for key, value in state.items():
        if not isinstance(key, str):
            raise TypeError(f"state dict keys must be str, got {type(key).__name__} ({key!r})")
        if not isinstance(value, Tensor):
            raise TypeError(f"state_dict[{key!r}] must be a tensor, got {type(value).__name__}")
        if value.layout != torch.strided:
            raise ValueError(f"state_dict[{key!r}] has layout {value.layout}; only dense tensors can be saved")
        if value.device.type == "meta":
            raise ValueError(f"state_dict[{key!r}] is on the meta device and holds no data")
        out[key] = value
    for key in out:
        for suffix in (".bitmask", ".values", ".negzero"):
            if key.endswith(suffix) and key[: -len(suffix)] in out:
                raise ValueError(
                    f"state dict keys {key!r} and {key[: -len(suffix)]!r} would collide in the sparse layout"
                )
    return out


def save_sparse(
    model_or_state_dict: Union[nn.Module, Mapping],
    path: Union[str, os.PathLike],
    *,
    max_shard_size: Union[int, str, None] = None,
    metadata: Optional[Dict[str, str]] = None,
) -> List[str]:
    """Save a pruned model or a state dict as compressed safetensors.

    Every tensor with enough zeros is stored as a 1-bit mask plus its non-zero
    values (see the module docstring for the exact layout), the others densely;
    :func:`load_sparse` gives back every tensor bit for bit.

    Args:
        model_or_state_dict: an ``nn.Module``, whose pruning is saved made
            permanent (each pruned ``name`` holds ``orig * mask``, the
            ``_orig`` / ``_mask`` pair is not stored; ``MaskSet``-pruned weights
            are plain parameters with zeros anyway), so that the file loads
            strictly into an unpruned model of the same architecture; or a
            mapping of names to tensors, saved exactly as given (``_orig`` /
            ``_mask`` pairs included; :func:`load_sparse` with a model
            re-creates that pruning).
        path: a file name ending in ``.safetensors`` (one file), or a
            directory (created if needed) that receives ``model.safetensors``
            or, above ``max_shard_size``, numbered shards and
            ``model.safetensors.index.json``; for a transformers model also
            ``config.json`` and ``generation_config.json`` (as
            ``save_pretrained`` writes them), so that
            :func:`load_sparse_pretrained` opens the folder as the model.
        max_shard_size: largest size of one shard, bytes or a string such as
            ``"2GB"`` (default ``"5GB"``; directories only). A tensor larger
            than this gets a shard of its own.
        metadata: extra ``str -> str`` entries for every file's header.

    Returns:
        the paths of the files written.

    Raises:
        TypeError / ValueError: a bad argument or a tensor that cannot be
            saved (meta, sparse layout, non-tensor entry); checked before
            any file is written.

    Example::

        import tempfile
        model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 8))
        fastprune.sparsify_(model, 0.9)
        with tempfile.TemporaryDirectory() as ckpt:
            fastprune.save_sparse(model, ckpt)          # ~ 0.1 x dense + N/8 bytes
            fresh = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 8))
            fastprune.load_sparse(ckpt, model=fresh)
        assert torch.equal(fresh[0].weight, model[0].weight)
    """
    st = _safetensors()
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    path = os.fspath(path)
    single_file = path.endswith(".safetensors")
    if single_file and max_shard_size is not None:
        raise ValueError("max_shard_size needs a directory path; a path ending in .safetensors is one file")
    limit = _parse_size(DEFAULT_MAX_SHARD_SIZE if max_shard_size is None else max_shard_size)
    if metadata is not None:
        if not isinstance(metadata, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise TypeError("metadata must be a dict of str to str")
        reserved = [k for k in metadata if k == "format" or k.startswith("fastprune.")]
        if reserved:
            raise ValueError(f"metadata keys {reserved} are reserved")
    state = _state_to_save(model_or_state_dict)

    if single_file:
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, exist_ok=True)
    else:
        os.makedirs(path, exist_ok=True)

    def header(infos_):
        meta = dict(metadata or {})
        meta.update({"format": "pt", "fastprune.format": FORMAT, "fastprune.tensors": json.dumps(infos_)})
        return meta

    if single_file:
        tensors: Dict[str, Tensor] = {}
        infos: "OrderedDict[str, dict]" = OrderedDict()
        seen: set = set()
        for key, value in state.items():
            stored, infos[key] = _encode(key, value, seen)
            tensors.update(stored)
        st.torch.save_file(tensors, path, metadata=header(infos))
        return [path]

    temp_names: List[str] = []
    try:
        shards = _write_shards(st, state, path, limit, header, temp_names)
    except BaseException:
        for name in temp_names:
            if os.path.exists(name):
                os.remove(name)
        raise
    written = _finish_directory(path, state, temp_names, shards)
    if _is_transformers_model(model_or_state_dict):
        written += _save_configs(model_or_state_dict, path)
    return written


def _is_transformers_model(obj) -> bool:
    """A transformers ``PreTrainedModel`` (transformers is imported already if it is one)."""
    transformers = sys.modules.get("transformers")
    base = getattr(transformers, "PreTrainedModel", None) if transformers is not None else None
    return base is not None and isinstance(obj, base)


def _save_configs(model, path: str) -> List[str]:
    """``config.json`` (and ``generation_config.json`` for generative models) as ``save_pretrained``
    writes them, so that :func:`~fastprune.shipping.load_sparse_pretrained` rebuilds the model.

    Like ``save_pretrained`` the config records the model's class and dtype; they
    are set on a copy, so the model's own config is left as it was.
    """
    config = copy.deepcopy(model.config)
    config.architectures = [type(model).__name__]
    dtype = getattr(model, "dtype", None)
    if isinstance(dtype, torch.dtype):
        config.dtype = _dtype_name(dtype)
    config.save_pretrained(path)
    written = [os.path.join(path, "config.json")]
    generation = getattr(model, "generation_config", None)
    can_generate = getattr(model, "can_generate", None)
    if generation is not None and callable(can_generate) and can_generate():
        generation.save_pretrained(path)
        written.append(os.path.join(path, "generation_config.json"))
    return written


def _write_shards(st, state, path, limit, header, temp_names) -> List[Tuple[List[str], int]]:
    """Encode and write shards as soon as they are full (memory stays one shard).

    They are written under temporary names (``temp_names`` is filled as they
    appear) and renamed once their count is known. Returns, per shard, its
    stored tensor names and its size in bytes.
    """
    shards: List[Tuple[List[str], int]] = []
    tensors: Dict[str, Tensor] = {}
    infos: "OrderedDict[str, dict]" = OrderedDict()
    size = 0
    seen: set = set()

    def flush():
        nonlocal tensors, infos, size
        name = os.path.join(path, f".fastprune-shard-{len(temp_names):05d}.tmp")
        temp_names.append(name)
        st.torch.save_file(tensors, name, metadata=header(infos))
        shards.append((list(tensors), size))
        tensors, infos, size = {}, OrderedDict(), 0

    for key, value in state.items():
        stored, info = _encode(key, value, seen)
        nbytes = sum(t.numel() * t.element_size() for t in stored.values())
        if tensors and size + nbytes > limit:
            flush()
        tensors.update(stored)
        infos[key] = info
        size += nbytes
    if tensors or not shards:
        flush()
    return shards


_SHARD_NAME = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")


def _finish_directory(path, state, temp_names, shards) -> List[str]:
    """Give the shards their final names, write the index, drop files of an earlier save."""
    count = len(temp_names)
    if count == 1:
        final_names = [SINGLE_FILE]
    else:
        final_names = [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
    for tmp, fname in zip(temp_names, final_names):
        os.replace(tmp, os.path.join(path, fname))
    written = [os.path.join(path, f) for f in final_names]
    index_path = os.path.join(path, INDEX_FILE)
    if count > 1:
        weight_map = {n: fname for (names, _), fname in zip(shards, final_names) for n in names}
        index = {
            "metadata": {
                "total_size": sum(size for _, size in shards),
                "fastprune.format": FORMAT,
                "fastprune.order": list(state.keys()),
            },
            "weight_map": weight_map,
        }
        with open(index_path, "w", encoding="utf-8") as f:
            json.dump(index, f, indent=2)
        written.append(index_path)
    # An earlier save into the same directory may have left a single file, an
    # index, or shards numbered for another count; none of them belongs here now.
    keep = set(os.path.basename(w) for w in written)
    for f in os.listdir(path):
        if f not in keep and (f in (SINGLE_FILE, INDEX_FILE) or _SHARD_NAME.fullmatch(f)):
            os.remove(os.path.join(path, f))
    return written


# ----------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------


class _Index:
    """What ``model.safetensors.index.json`` says: the shards, which tensors each holds, the key order."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except ValueError as e:  # JSONDecodeError, bad UTF-8
            raise ValueError(f"{path}: not a valid index file ({e})") from None
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
            raise ValueError(f"{path}: weight_map must be an object of stored tensor names to shard files")
        metadata = data.get("metadata") or {}
        order = metadata.get("fastprune.order") if isinstance(metadata, dict) else None
        if order is not None and not (isinstance(order, list) and all(isinstance(k, str) for k in order)):
            raise ValueError(f"{path}: metadata's fastprune.order must be a list of keys")
        self.weight_map = weight_map
        self.order = order
        folder = os.path.dirname(path)
        self.files = [os.path.join(folder, f) for f in sorted(set(weight_map.values()))]
        for f in self.files:
            if not os.path.isfile(f):
                raise FileNotFoundError(f"{path}: lists the shard {os.path.basename(f)}, which does not exist")

    def check_shard(self, fname: str, stored) -> None:
        """Every tensor stored in the shard ``fname`` is listed for it in the weight map, and the reverse."""
        base = os.path.basename(fname)
        stored = set(stored)
        listed = {k for k, v in self.weight_map.items() if v == base}
        if stored - listed:
            raise ValueError(f"{self.path}: weight_map does not list {sorted(stored - listed)}, stored in {base}")
        if listed - stored:
            raise ValueError(f"{self.path}: weight_map places {sorted(listed - stored)} in {base}, "
                             "which does not hold them")


def _files_of(path: str) -> Tuple[List[str], Optional["_Index"]]:
    if os.path.isfile(path):
        return [path], None
    if not os.path.isdir(path):
        raise FileNotFoundError(f"path={path!r}: no such file or directory")
    index = os.path.join(path, INDEX_FILE)
    if os.path.isfile(index):
        idx = _Index(index)
        return idx.files, idx
    single = os.path.join(path, SINGLE_FILE)
    if os.path.isfile(single):
        return [single], None
    raise FileNotFoundError(f"path={path!r} holds neither {SINGLE_FILE} nor {INDEX_FILE}")


def _parts(key: str, info: dict) -> List[str]:
    """The stored tensors an entry of ``fastprune.tensors`` is made of."""
    if info.get("encoding") == "bitmask":
        return [key + ".bitmask", key + ".values"] + ([key + ".negzero"] if info.get("negzero") else [])
    return [key]


def _read_infos(meta: dict, fname: str, stored) -> "OrderedDict[str, dict]":
    """The header's ``fastprune.tensors``, checked: well formed, and accounting for every stored tensor."""
    try:
        infos = json.loads(meta.get("fastprune.tensors", ""), object_pairs_hook=OrderedDict)
    except ValueError as e:
        raise ValueError(f"{fname}: the header's fastprune.tensors is not valid JSON ({e})") from None
    if not isinstance(infos, dict):
        raise ValueError(f"{fname}: the header's fastprune.tensors is a {type(infos).__name__}, not an object")
    for key, info in infos.items():
        problem = None
        if not isinstance(info, dict):
            problem = f"a {type(info).__name__}, not an object"
        elif not isinstance(info.get("shape"), list) or not all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in info["shape"]):
            problem = f"shape {info.get('shape')!r} is not a list of sizes"
        elif not isinstance(info.get("dtype"), str):
            problem = f"dtype {info.get('dtype')!r} is not a dtype name"
        elif info.get("encoding") not in ("dense", "bitmask"):
            problem = f"unknown encoding {info.get('encoding')!r}"
        elif info["encoding"] == "bitmask" and (not isinstance(info.get("nnz"), int) or isinstance(info["nnz"], bool)):
            problem = f"nnz {info.get('nnz')!r} is not a count"
        if problem:
            raise ValueError(f"{fname}: tensor {key!r}: the header entry is damaged: {problem}")
    used = {name: key for key, info in infos.items() for name in _parts(key, info)}
    orphans = [name for name in stored if name not in used]
    if orphans:
        raise ValueError(
            f"{fname}: stored tensors {sorted(orphans)} belong to no entry of the header's fastprune.tensors "
            "(a damaged or edited header: loading would silently leave them out)"
        )
    stored = set(stored)
    missing = [(name, key) for name, key in used.items() if name not in stored]
    if missing:
        name, key = missing[0]
        raise ValueError(f"{fname}: tensor {key!r} needs the stored tensor {name!r}, which the file lacks")
    return infos


def _open(st, fname: str):
    """``safe_open`` of ``fname``; a file safetensors cannot read is a ValueError naming it."""
    try:
        return st.safe_open(fname, framework="pt", device="cpu")
    except OSError:
        raise
    except Exception as e:  # safetensors' SafetensorError: an empty, truncated or garbled file
        size = os.path.getsize(fname) if os.path.exists(fname) else 0
        raise ValueError(
            f"{fname}: not a readable safetensors file ({size} bytes; truncated, empty or damaged?): {e}"
        ) from None


def load_sparse(
    path: Union[str, os.PathLike],
    model: Optional[nn.Module] = None,
    *,
    strict: bool = True,
    device: Union[str, torch.device] = "cpu",
    verify: bool = True,
):
    """Read a checkpoint written by :func:`save_sparse` (or any safetensors checkpoint).

    Args:
        path: the ``.safetensors`` file or the directory given to :func:`save_sparse`.
        model: if given, the state dict is loaded into it with
            :func:`fastprune.load_pruned_state_dict` (so ``_orig`` / ``_mask``
            pairs re-create their pruning), checked before anything changes.
        strict: passed to the load into ``model``.
        device: where the tensors are created.
        verify: check every stored tensor against the CRC-32 its file's
            header records (files written before fastprune stored checksums
            have none and are read unverified). ``False`` skips the check.

    Returns:
        the state dict (an ``OrderedDict`` in the saved order, every tensor
        bit for bit as saved) when ``model`` is ``None``; otherwise the
        ``missing_keys`` / ``unexpected_keys`` tuple of the load.

    Raises:
        FileNotFoundError: nothing loadable at ``path``.
        ValueError: naming the file (and the tensor): a damaged file (a
            checksum that does not match, sizes or dtypes that contradict the
            header), a truncated or empty file.
        TypeError: ``model`` is not an ``nn.Module``, ``verify`` not a bool.

    Example::

        import tempfile
        model = nn.Sequential(nn.Linear(16, 4))
        fastprune.sparsify_(model, 0.5)
        with tempfile.TemporaryDirectory() as ckpt:
            fastprune.save_sparse(model, ckpt)
            sd = fastprune.load_sparse(ckpt)                 # a state dict
            fresh = nn.Sequential(nn.Linear(16, 4))
            fastprune.load_sparse(ckpt, model=fresh)         # or straight into a model
        assert torch.equal(sd["0.weight"], model[0].weight.detach())
    """
    st = _safetensors()
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module or None, got {type(model).__name__}")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    if not isinstance(verify, bool):
        raise TypeError(f"verify must be a bool, got {type(verify).__name__}")
    files, index = _files_of(os.fspath(path))
    device = str(torch.device(device))
    state: Dict[str, Tensor] = {}
    file_order: List[str] = []
    for fname in files:
        # Decoded on the CPU (numpy unpacks the bits), then moved.
        with _open(st, fname) as f:
            if index is not None:
                index.check_shard(fname, f.keys())
            meta = f.metadata() or {}
            if meta.get("fastprune.format") is None:
                # A plain safetensors file: every tensor is stored densely.
                for k in f.keys():
                    state[k] = f.get_tensor(k)
                    file_order.append(k)
                continue
            if meta["fastprune.format"] != FORMAT:
                raise ValueError(f"{fname}: format {meta['fastprune.format']!r}, this version reads {FORMAT!r}")
            infos = _read_infos(meta, fname, f.keys())
            reader = _Reader(f, fname, verify)
            for key, info in infos.items():
                try:
                    state[key] = _decode(key, info, reader)
                except ValueError as e:
                    raise ValueError(str(e) if str(e).startswith(fname) else f"{fname}: {e}") from None
                file_order.append(key)
    keys = index.order if index is not None and index.order is not None else file_order
    if set(keys) != set(state) or len(keys) != len(state):
        missing = [k for k in keys if k not in state]
        extra = [k for k in state if k not in set(keys)]
        raise ValueError(
            f"{index.path if index is not None else path}: the index's fastprune.order and the shards disagree"
            + (f"; no shard listed in weight_map holds {missing}" if missing else "")
            + (f"; fastprune.order leaves out {extra}" if extra else "")
            + ("; fastprune.order lists a key twice" if not missing and not extra else "")
        )
    out = OrderedDict((k, state[k] if device == "cpu" else state[k].to(device)) for k in keys)
    if model is None:
        return out
    return load_pruned_state_dict(model, out, strict=strict)
