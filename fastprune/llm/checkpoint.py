"""``fastprune.llm.prune_checkpoint``: prune a checkpoint folder block by block, never loading the model.

The model is built on the meta device from the folder's config (parameters
only: buffers such as rotary frequencies are computed as usual). The walker
(:mod:`fastprune.llm.walker`) then runs on a :class:`CheckpointSource`, which
reads each block's tensors from the safetensors shards when its turn comes
(:class:`~fastprune.llm.shards.ShardReader`: one tensor at a time, no file
mapped) and puts the block back on the meta device afterwards, and a
:class:`ShardSink`, which writes the pruned tensors into the destination's
shards. The destination has the source's layout: the same shard files with
the same tensors in the same order (dtypes changed only with ``dtype=``), the
same index, and the source's other files (config, generation config,
tokenizer). Until the run ends the shards live in ``dst/.fastprune-run/``
with ``progress.json`` and the next block's inputs; a run killed at any
moment continues with ``resume=True``.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import time
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .._version import __version__
from ..core.targets import eval_mode
from .api import _check_device, _get_embeddings, _Job, data_parallel
from .blocks import find_blocks
from .checks import calibration_labels, check_calibration_fits
from .report import BlockReport, LayerReport, PruneReport
from .shards import ShardReader, ShardWriter, atomic_write_bytes, fsync_dir, write_tensors
from .stages import magnitude_layer
from .walker import (BlockSink, BlockSource, BlockTurn, MicroBatch, Walker, capture_inputs, fix_mmap_threshold,
                     trim_heap)

__all__ = ["prune_checkpoint", "CheckpointSource", "ShardSink", "SourceCheckpoint", "WORK_DIR"]

SAFE_SINGLE = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
WORK_DIR = ".fastprune-run"
PROGRESS = "progress.json"
_FORMAT = 1
# Files of other weight formats that are not copied to the destination (it holds the pruned safetensors).
_OTHER_WEIGHTS = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx")
_OTHER_INDEXES = ("pytorch_model.bin.index.json", "tf_model.h5.index.json", "flax_model.msgpack.index.json")


# ----------------------------------------------------------------------------
# The source folder
# ----------------------------------------------------------------------------


class SourceCheckpoint:
    """The safetensors files of a ``save_pretrained`` folder: which file holds which tensor.

    Raises:
        ValueError: no safetensors weights, an index naming a missing file or
            tensor, or a file that is not valid safetensors.
    """

    def __init__(self, folder: str) -> None:
        self.folder = folder
        single, index = os.path.join(folder, SAFE_SINGLE), os.path.join(folder, SAFE_INDEX)
        self.index: Optional[dict] = None
        if os.path.isfile(single):  # what from_pretrained reads first
            files = [SAFE_SINGLE]
        elif os.path.isfile(index):
            try:
                with open(index, encoding="utf-8") as f:
                    self.index = json.load(f)
                weight_map = self.index["weight_map"]
                files = sorted(set(weight_map.values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
                raise ValueError(f"src: unreadable {SAFE_INDEX} ({e})") from None
            for f in files:
                if not isinstance(f, str) or os.path.basename(f) != f or not os.path.isfile(os.path.join(folder, f)):
                    raise ValueError(f"src: {SAFE_INDEX} names the shard {f!r}, which is not in {folder!r}")
        else:
            other = [f for f in os.listdir(folder) if f.endswith((".bin", ".pt", ".pth"))]
            hint = (f" (it has {other[0]}: only safetensors checkpoints are streamed; load the model and "
                    f"save_pretrained it again, or use fastprune.llm.prune)") if other else ""
            raise ValueError(f"src: {folder!r} holds no {SAFE_SINGLE} nor {SAFE_INDEX}{hint}")
        self.files = files
        self.readers: Dict[str, ShardReader] = {}
        self.where: Dict[str, str] = {}
        for f in files:
            try:
                reader = ShardReader(os.path.join(folder, f))
            except ValueError as e:
                raise ValueError(f"src: {e}") from None
            self.readers[f] = reader
            for name in reader.order:
                if name in self.where:
                    raise ValueError(f"src: tensor {name!r} is in both {self.where[name]} and {f}")
                self.where[name] = f
        if self.index is not None:
            for name, f in self.index["weight_map"].items():
                if self.where.get(name) != f:
                    raise ValueError(f"src: {SAFE_INDEX} puts {name!r} in {f}, which does not hold it")

    def read(self, name: str) -> torch.Tensor:
        return self.readers[self.where[name]].read(name)

    def shape(self, name: str) -> Tuple[int, ...]:
        return self.readers[self.where[name]].entries[name].shape

    def fingerprint(self) -> str:
        """SHA-256 of the config and every shard's name, size and header (not the tensor bytes)."""
        h = hashlib.sha256()
        with open(os.path.join(self.folder, "config.json"), "rb") as f:
            h.update(f.read())
        for name in self.files:
            path = os.path.join(self.folder, name)
            reader = self.readers[name]
            h.update(name.encode())
            h.update(str(os.path.getsize(path)).encode())
            with open(path, "rb") as f:
                h.update(f.read(reader.data_start))
        return h.hexdigest()


# ----------------------------------------------------------------------------
# The model on the meta device, and the source of its blocks
# ----------------------------------------------------------------------------


class _EmptyOnMeta(torch.overrides.TorchFunctionMode):
    """``torch.empty`` without a device makes meta tensors: how modules allocate their parameters
    (``nn.Linear``, ``nn.Embedding``, ``Conv1D``), so their memory is never allocated. Buffers
    computed with other factories (rotary frequencies) stay real."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.empty and kwargs.get("device") is None:
            kwargs["device"] = "meta"
        return func(*args, **kwargs)


@contextlib.contextmanager
def _meta_parameters(empty_on_meta: bool = True):
    """Parameters registered while active are put on the meta device; buffers are left real
    (rotary frequencies and the like are computed as usual, they are not in the checkpoint).

    With ``empty_on_meta``, parameters made with ``torch.empty`` are meta from the start:
    allocated on the CPU and then dropped, they would leave the allocator's heap as large as
    the model, in holes between the small objects made meanwhile, which the walk would then
    slowly fill (resident memory growing block after block)."""
    register = nn.Module.register_parameter

    def on_meta(self, name, param):
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(self, name, param)

    nn.Module.register_parameter = on_meta
    try:
        with (_EmptyOnMeta() if empty_on_meta else contextlib.nullcontext()):
            yield
    finally:
        nn.Module.register_parameter = register


def build_skeleton(config, dtype: Optional[torch.dtype]) -> nn.Module:
    """``AutoModelForCausalLM.from_config(config)`` with every parameter on the meta device."""
    from transformers import AutoModelForCausalLM

    kwargs = {"dtype": dtype} if dtype is not None else {}
    with _meta_parameters():
        model = AutoModelForCausalLM.from_config(config, **kwargs)
    if any(b.device.type == "meta" for b in model.buffers()):
        # A buffer made with torch.empty: build again, moving parameters to meta one by one.
        with _meta_parameters(empty_on_meta=False):
            model = AutoModelForCausalLM.from_config(config, **kwargs)
    return model.eval()


class _Slot:
    """One distinct tensor of the model (tied weights are one slot with several owners)."""

    __slots__ = ("owners", "keys", "files_keys", "shape", "dtype", "block", "is_param")

    def __init__(self, shape, dtype, is_param: bool) -> None:
        self.owners: List[Tuple[nn.Module, str, str]] = []  # (module, "_parameters" | "_buffers", name)
        self.keys: List[str] = []  # the model's names for it
        self.files_keys: List[str] = []  # its names in the checkpoint
        self.shape = tuple(shape)
        self.dtype = dtype
        self.block: Optional[int] = None
        self.is_param = is_param

    def current(self) -> torch.Tensor:
        module, kind, name = self.owners[0]
        return getattr(module, kind)[name]


def _slab_offsets(slots: Sequence[_Slot]) -> List[Tuple[int, int]]:
    """``(start, bytes)`` of each slot's tensor in one buffer, starts aligned to 64 bytes."""
    out, pos = [], 0
    for slot in slots:
        numel = 1
        for d in slot.shape:
            numel *= d
        nbytes = numel * torch.empty((), dtype=slot.dtype).element_size()
        out.append((pos, nbytes))
        pos += -(-nbytes // 64) * 64
    return out


class CheckpointSource(BlockSource):
    """Blocks materialised from a checkpoint's shards for their turn, and put back on the meta device.

    Args:
        checkpoint: the :class:`SourceCheckpoint`.
        model: the model built on the meta device (:func:`build_skeleton`).
        blocks: its blocks.
        prepare_outside: ``prepare_outside()`` called once the tensors outside
            the blocks are materialised for a capture (e.g. to prune the embeddings).

    Raises:
        ValueError: a parameter of the model has no tensor in the checkpoint, or
            one of another shape; blocks share weights.
    """

    def __init__(self, checkpoint: SourceCheckpoint, model: nn.Module, blocks: Sequence[nn.Module],
                 prepare_outside=None) -> None:
        self.checkpoint = checkpoint
        self.model = model
        self.blocks = list(blocks)
        self.prepare_outside = prepare_outside
        names = {id(m): n for n, m in model.named_modules()}
        prefixes = [names[id(b)] + "." for b in self.blocks]
        slots: Dict[int, _Slot] = {}
        for mod_name, mod in model.named_modules(remove_duplicate=False):
            for kind in ("_parameters", "_buffers"):
                for name, t in getattr(mod, kind).items():
                    if t is None or (kind == "_buffers" and name in mod._non_persistent_buffers_set):
                        continue
                    slot = slots.get(id(t))
                    if slot is None:
                        slot = slots[id(t)] = _Slot(t.shape, t.dtype, kind == "_parameters")
                    if not any(m is mod and n == name for m, _, n in slot.owners):
                        slot.owners.append((mod, kind, name))
                    key = f"{mod_name}.{name}" if mod_name else name
                    if key not in slot.keys:
                        slot.keys.append(key)
        base = getattr(model, "base_model_prefix", "") or ""
        self.slots: List[_Slot] = []
        mapped: Dict[str, _Slot] = {}
        for slot in slots.values():
            for key in slot.keys:
                found = self._checkpoint_name(key, base)
                if found is not None and found not in slot.files_keys:
                    slot.files_keys.append(found)
                    mapped[found] = slot
            if not slot.files_keys:
                if slot.is_param:
                    raise ValueError(f"src: the checkpoint has no tensor for {slot.keys[0]} "
                                     f"(names that transformers renames on loading are not supported)")
                continue  # a persistent buffer the checkpoint does not store keeps its initial value
            for found in slot.files_keys:
                if checkpoint.shape(found) != slot.shape:
                    raise ValueError(f"src: tensor {found} has shape {list(checkpoint.shape(found))}, "
                                     f"the model built from the config expects {list(slot.shape)}")
            owners = {i for key in slot.keys for i, p in enumerate(prefixes) if key.startswith(p)}
            if len(owners) > 1:
                raise ValueError(f"src: {slot.keys[0]} is shared by several blocks; such models are not streamed")
            inside = len(owners) == 1 and all(any(k.startswith(p) for p in prefixes) for k in slot.keys)
            if owners and not inside:
                raise ValueError(f"src: {slot.keys[0]} is shared between a block and the rest of the model; "
                                 f"such models are not streamed")
            slot.block = owners.pop() if owners else None
            self.slots.append(slot)
        self.by_checkpoint_name = mapped
        self.unmapped = [n for n in checkpoint.where if n not in mapped]  # copied unchanged
        self.block_slots = [[s for s in self.slots if s.block == i] for i in range(len(self.blocks))]
        self._slab: Optional[torch.Tensor] = None
        self.outside_slots = [s for s in self.slots if s.block is None]

    def _checkpoint_name(self, key: str, base: str) -> Optional[str]:
        where = self.checkpoint.where
        if key in where:
            return key
        if base and key.startswith(base + ".") and key[len(base) + 1:] in where:
            return key[len(base) + 1:]
        if base and f"{base}.{key}" in where:
            return f"{base}.{key}"
        return None

    # -- materialising ------------------------------------------------------

    def materialize(self, slots: Sequence[_Slot], device, slab: Optional[torch.Tensor] = None) -> None:
        """Reads ``slots`` from the checkpoint onto ``device``; on the CPU into views of ``slab``
        (bytes, laid out by :func:`_slab_offsets`) when given, else into new tensors."""
        offsets = _slab_offsets(slots) if slab is not None else None
        for j, slot in enumerate(slots):
            name = slot.files_keys[0]
            if offsets is not None and torch.device(device).type == "cpu":
                start, nbytes = offsets[j]
                t = slab[start:start + nbytes].view(slot.dtype).view(slot.shape)
                reader = self.checkpoint.readers[self.checkpoint.where[name]]
                if reader.entries[name].torch_dtype == slot.dtype:
                    reader.read_into(name, t)
                else:
                    t.copy_(reader.read(name))
            else:
                t = self.checkpoint.read(name)
                if t.dtype != slot.dtype:
                    t = t.to(slot.dtype)
                t = t.to(device)
            value = nn.Parameter(t, requires_grad=False) if slot.is_param else t
            for module, kind, attr in slot.owners:
                getattr(module, kind)[attr] = value

    def dematerialize(self, slots: Sequence[_Slot]) -> None:
        for slot in slots:
            t = torch.empty(slot.shape, dtype=slot.dtype, device="meta")
            value = nn.Parameter(t, requires_grad=False) if slot.is_param else t
            for module, kind, name in slot.owners:
                getattr(module, kind)[name] = value

    def load(self, i: int, device: torch.device) -> nn.Module:
        # Every block is read into the same buffer, allocated once: blocks' tensors allocated and
        # freed one block after the other, between the walk's smaller long-lived allocations, would
        # leave the allocator's heap in holes it cannot return (resident memory creeping up).
        if self._slab is None and torch.device(device).type == "cpu":
            size = max(sum(n for _, n in _slab_offsets(b)) for b in self.block_slots)
            self._slab = torch.empty(size, dtype=torch.uint8)
        self.materialize(self.block_slots[i], device, self._slab)
        return self.blocks[i]

    def release(self, i: int, block: nn.Module) -> None:
        self.dematerialize(self.block_slots[i])

    def capture(self, calls, device, indices=None) -> List[MicroBatch]:
        """Materialises what runs before the first block (the LM head excepted), captures, frees it."""
        head = _get_embeddings(self.model, "get_output_embeddings")
        head_w = getattr(head, "weight", None)
        emb = _get_embeddings(self.model, "get_input_embeddings")
        tied = head_w is not None and head_w is getattr(emb, "weight", None)
        slots = [s for s in self.outside_slots if tied or not any(m is head for m, _, _ in s.owners)]
        self.materialize(slots, "cpu")
        try:
            if self.prepare_outside is not None:
                self.prepare_outside()
            return capture_inputs(self.model, self.blocks, calls, device, indices)
        finally:
            self.dematerialize(slots)


# ----------------------------------------------------------------------------
# The destination folder
# ----------------------------------------------------------------------------


class _Destination:
    """The destination's shards (in the work folder until the end), progress record and inputs."""

    def __init__(self, dst: str, source: CheckpointSource) -> None:
        self.dst = dst
        self.work = os.path.join(dst, WORK_DIR)
        self.source = source
        ckpt = source.checkpoint
        self.writers: Dict[str, ShardWriter] = {}
        self.file_of: Dict[str, str] = {}
        for f in ckpt.files:
            reader = ckpt.readers[f]
            layout = []
            for name in reader.order:
                slot = source.by_checkpoint_name.get(name)
                e = reader.entries[name]
                layout.append((name, slot.dtype if slot is not None else e.torch_dtype, e.shape))
                self.file_of[name] = f
            self.writers[f] = ShardWriter(os.path.join(self.work, f), layout, reader.metadata)
        self.crc: Dict[str, int] = {}

    def open(self, create: bool) -> None:
        for f, w in self.writers.items():
            if create or os.path.exists(w.path):
                w.open(create)
            elif not os.path.isfile(os.path.join(self.dst, f)):  # moved into dst by an interrupted finish
                raise ValueError(f"dst: the shard {f} of the interrupted run is missing; start afresh")

    def close(self) -> None:
        for w in self.writers.values():
            w.close()

    def write_slots(self, slots: Sequence[_Slot]) -> None:
        for slot in slots:
            t = slot.current()
            for name in slot.files_keys:
                self.crc[name] = self.writers[self.file_of[name]].write(name, t)

    def copy_unmapped(self) -> None:
        for name in self.source.unmapped:
            self.crc[name] = self.writers[self.file_of[name]].write(name, self.source.checkpoint.read(name))

    def sync(self) -> None:
        for w in self.writers.values():
            w.sync()

    # -- progress -----------------------------------------------------------

    def progress_path(self) -> str:
        return os.path.join(self.work, PROGRESS)

    def read_progress(self) -> Optional[dict]:
        try:
            with open(self.progress_path(), encoding="utf-8") as f:
                return json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise ValueError(f"dst: unreadable progress record {self.progress_path()} ({e})") from None

    def write_progress(self, state: dict) -> None:
        state = dict(state, crc=self.crc)
        atomic_write_bytes(self.progress_path(), json.dumps(state, indent=1).encode("utf-8"))

    @staticmethod
    def inputs_name(i: int, part: Optional[Tuple[int, int]] = None) -> str:
        """The file of block ``i``'s inputs; ``part=(rank, world)``: one process's of a group."""
        return f"inputs-{i:05d}.safetensors" if part is None else f"inputs-{i:05d}.rank{part[0]}of{part[1]}.safetensors"

    def save_inputs(self, i: int, inputs: List[MicroBatch], part: Optional[Tuple[int, int]] = None) -> str:
        name = self.inputs_name(i, part)
        write_tensors(os.path.join(self.work, name), [(f"hidden.{mb.index}", mb.hidden) for mb in inputs])
        return name

    def load_inputs(self, names, inputs: List[MicroBatch]) -> None:
        """The saved hidden states of ``inputs``' micro-batches, from the file ``names`` or any of the
        files ``names`` (one per process of the run that saved them: any split of the micro-batches)."""
        names = [names] if isinstance(names, str) else list(names)
        readers = [ShardReader(os.path.join(self.work, n)) for n in names]
        name = ", ".join(names)
        for mb in inputs:
            key = f"hidden.{mb.index}"
            reader = next((r for r in readers if key in r.entries), None)
            if reader is None:
                raise ValueError(f"dst: the saved inputs {name} lack micro-batch {mb.index}")
            saved = reader.read(key)
            if saved.shape != mb.hidden.shape or saved.dtype != mb.hidden.dtype:
                raise ValueError(f"dst: the saved inputs of micro-batch {mb.index} do not match this run")
            mb.hidden = saved.to(mb.hidden.device)

    # -- the end ------------------------------------------------------------

    def finish(self, files_to_copy: Sequence[str], config_dtype: Optional[torch.dtype]) -> None:
        """Verifies every shard read back, moves them into ``dst``, writes the index and copies the other files."""
        from safetensors import safe_open

        ckpt = self.source.checkpoint
        buf = bytearray(8 * 2 ** 20)  # one buffer for reading every tensor back
        for f, w in self.writers.items():
            path = w.path if os.path.exists(w.path) else os.path.join(self.dst, f)
            with safe_open(path, "pt") as h:  # the format's own reader accepts the file
                if set(h.keys()) != set(w.entries):
                    raise RuntimeError(f"dst: {f} does not hold the tensors it should")
            reader = ShardReader(path)
            for name, e in w.entries.items():
                got = reader.entries.get(name)
                if got is None or (got.dtype, got.shape, got.begin, got.end) != (e.dtype, e.shape, e.begin, e.end):
                    raise RuntimeError(f"dst: {f}: the header of {name} differs from what was written")
                if name not in self.crc:
                    raise RuntimeError(f"dst: {name} was never written")
                if reader.crc(name, buf) != self.crc[name]:
                    raise RuntimeError(f"dst: {f}: {name} reads back different bytes than were written")
        for f, w in self.writers.items():
            if os.path.exists(w.path):
                os.replace(w.path, os.path.join(self.dst, f))
        fsync_dir(self.dst)
        if ckpt.index is not None:
            index = {"metadata": dict(ckpt.index.get("metadata") or {}), "weight_map": dict(ckpt.index["weight_map"])}
            index["metadata"]["total_size"] = sum(w.nbytes for w in self.writers.values())
            atomic_write_bytes(os.path.join(self.dst, SAFE_INDEX),
                               (json.dumps(index, indent=2, sort_keys=True) + "\n").encode("utf-8"))
        for f in files_to_copy:
            src_path, dst_path = os.path.join(ckpt.folder, f), os.path.join(self.dst, f)
            if f == "config.json" and config_dtype is not None:
                with open(src_path, encoding="utf-8") as fh:
                    config = json.load(fh)
                name = str(config_dtype).replace("torch.", "")
                config["dtype"] = name
                if "torch_dtype" in config:
                    config["torch_dtype"] = name
                atomic_write_bytes(dst_path, (json.dumps(config, indent=2, sort_keys=True) + "\n").encode("utf-8"))
            else:
                tmp = dst_path + ".tmp"
                shutil.copyfile(src_path, tmp)
                os.replace(tmp, dst_path)
        fsync_dir(self.dst)
        shutil.rmtree(self.work)


class ShardSink(BlockSink):
    """Writes each finished block's tensors into the destination's shards and flushes them."""

    def __init__(self, destination: _Destination) -> None:
        self.destination = destination

    def put(self, turn: BlockTurn) -> None:
        self.destination.write_slots(self.destination.source.block_slots[turn.index])
        self.destination.sync()


# ----------------------------------------------------------------------------
# prune_checkpoint
# ----------------------------------------------------------------------------


def _is_inside(path: str, folder: str) -> bool:
    return os.path.commonpath([path, folder]) == folder


def _calibration_digest(batches) -> Optional[str]:
    if batches is None:
        return None
    h = hashlib.sha256()
    for ids, mask in batches:
        ids = ids.to("cpu", torch.int64).contiguous()
        h.update(str(tuple(ids.shape)).encode())
        h.update(ids.numpy().tobytes())
        if mask is not None:
            h.update(b"mask")
            h.update((mask != 0).to("cpu", torch.uint8).contiguous().numpy().tobytes())
    return h.hexdigest()


def _files_to_copy(src: str) -> List[str]:
    out = []
    for f in sorted(os.listdir(src)):
        if not os.path.isfile(os.path.join(src, f)) or f in (SAFE_INDEX,) + _OTHER_INDEXES:
            continue
        if f.endswith(_OTHER_WEIGHTS):
            continue
        out.append(f)
    return out


def prune_checkpoint(
    src,
    dst,
    calibration=None,
    *,
    method: str = "wanda",
    sparsity: float = 0.5,
    pattern: str = "unstructured",
    layer_sparsity=None,
    batch_size: Optional[int] = None,
    resume: bool = False,
    progress: Optional[bool] = True,
    device=None,
    dtype: Optional[torch.dtype] = None,
    blocks: Optional[str] = None,
    owl_lambda: float = 0.08,
    owl_m: float = 5.0,
    blocksize: int = 128,
    percdamp: float = 0.01,
    measure_errors: Optional[bool] = None,
    prune_embeddings: bool = False,
    prune_lm_head: bool = False,
    distributed: Optional[bool] = None,
    group=None,
) -> PruneReport:
    """Prune a checkpoint folder block by block into another folder, never holding the whole model.

    ``src`` is what ``save_pretrained`` writes (``config.json`` and
    safetensors weights, one file or shards with ``model.safetensors.index.json``).
    The model is built on the meta device from the config; the embeddings
    and each block's tensors are read from the shards only for their turn
    (one tensor at a time, no file mapped), each block is pruned exactly as
    :func:`fastprune.llm.prune` prunes it, its outputs become the next block's
    inputs, and its tensors are written to ``dst`` and freed. Peak memory:
    one block with its statistics, the calibration hidden states, and the
    embeddings or LM head (whichever is larger), whatever the number of
    blocks. ``dst`` gets the same shard files, tensors and index as ``src``
    (dtypes changed only by ``dtype``) and ``src``'s other files (config,
    generation config, tokenizer); ``from_pretrained(dst)`` loads a model
    whose tensors are bit for bit those of ``prune()`` in memory. ``src`` is
    only read.

    While the run goes on, ``dst/.fastprune-run/`` holds the shards, the
    progress record (written atomically after each block: blocks done, CRC-32
    of every tensor written, options, reports) and the next block's inputs.
    If the run is killed (even with SIGKILL), calling again with
    ``resume=True`` and the same arguments continues after the last recorded
    block and produces the same bytes (on the same kind of device; the resumed
    run uses the thread count recorded by the first, since torch's linear
    algebra rounds differently with other counts). At the end every shard is read back
    and checked against the CRCs, moved into ``dst``, and the work folder removed.

    On Linux with glibc, the call fixes malloc's mmap threshold at 128 KiB
    (glibc's default value, which glibc otherwise raises as large blocks are
    freed) for the rest of the process, so that the memory of every block is
    returned to the system when the block is done; without it the resident
    size crept up by up to the checkpoint's size on small models.

    Args:
        src: the checkpoint folder (str or path).
        dst: the folder to write; must not exist, be empty, or (with
            ``resume``) hold an interrupted run; not inside ``src``.
        calibration, method, sparsity, pattern, layer_sparsity, batch_size,
            owl_lambda, owl_m, blocksize, percdamp, measure_errors,
            prune_embeddings, prune_lm_head: as for :func:`fastprune.llm.prune`.
        resume: continue the interrupted run in ``dst`` (refused if its
            options, calibration or source differ); with an empty or missing
            ``dst`` it starts afresh.
        progress: show progress bars.
        device: where the blocks are pruned (default ``"cpu"``).
        dtype: cast the floating-point weights to this dtype (default: the
            config's dtype, as ``from_pretrained`` loads them); the config
            written to ``dst`` says so.
        blocks: the attribute path of the decoder blocks when they are not
            found automatically (e.g. ``"model.layers"``).
        distributed, group: data-parallel calibration in a
            ``torch.distributed`` process group, as for
            :func:`fastprune.llm.prune`: every process reads ``src`` and makes
            the same call, process 0 writes ``dst`` (shards, progress
            record); each process records the next block's inputs of its own
            micro-batches (``inputs-NNNNN.rank<r>of<W>.safetensors``), and a
            run resumes with any number of processes, or one. ``dst`` must be
            a folder every process sees.

    Returns:
        a :class:`PruneReport` as :func:`fastprune.llm.prune` returns it, with
        ``masks=None`` (the masks are the zeros in ``dst``); after a resume it
        covers the whole run, ``seconds`` only this call. In a process group:
        the same report on every process.

    Raises:
        TypeError, ValueError, IndexError: bad arguments, a missing or
            unsupported ``src``, ``dst`` inside ``src``, a non-empty ``dst``
            without ``resume``, a resume with different options; raised
            before anything is written (in a process group: on every process).
        fastprune.distributed.ShardedInputError: the processes of a group
            disagree on ``src``, ``dst``, the calibration or the options.
        RuntimeError: a shard does not read back what was written.

    Example::

        >>> report = fastprune.llm.prune_checkpoint("llama-7b", "llama-7b-wanda", ids,
        ...                                         method="wanda", sparsity=0.5)
        >>> # killed? the same call with resume=True continues where it stopped
    """
    start_time = time.perf_counter()
    # -- every check first: nothing is written before they pass ---------------
    # In a process group every process checks, then all agree (an error on one is raised on all).
    dp = data_parallel(distributed, group)
    try:
        for value, what in ((src, "src"), (dst, "dst")):
            if not isinstance(value, (str, os.PathLike)):
                raise TypeError(f"{what} must be a path (str or os.PathLike), got {type(value).__name__}")
        if not isinstance(resume, bool):
            raise TypeError(f"resume must be a bool, got {type(resume).__name__}")
        if blocks is not None and not isinstance(blocks, str):
            raise TypeError(f"blocks must be None or an attribute path (str), got {type(blocks).__name__}")
        if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
            raise TypeError(f"dtype must be None or a floating-point torch.dtype, got {dtype!r}")
        src, dst = os.path.abspath(os.fspath(src)), os.path.abspath(os.fspath(dst))
        if not os.path.isdir(src):
            raise ValueError(f"src: {src!r} is not a folder")
        if not os.path.isfile(os.path.join(src, "config.json")):
            raise ValueError(f"src: {src!r} has no config.json (expected a save_pretrained folder)")
        real_src, real_dst = os.path.realpath(src), os.path.realpath(dst)
        if _is_inside(real_dst, real_src):
            raise ValueError(f"dst: {dst!r} is {'src itself' if real_dst == real_src else 'inside src'}; "
                             f"the source is never written, choose a folder outside it")
        if _is_inside(real_src, real_dst):
            raise ValueError(f"dst: {dst!r} contains src; choose a folder outside it")
        if os.path.exists(dst) and not os.path.isdir(dst):
            raise ValueError(f"dst: {dst!r} is a file, not a folder")
        existing = os.listdir(dst) if os.path.isdir(dst) else []
        if existing and not resume:
            raise ValueError(f"dst: {dst!r} is not empty; pass resume=True to continue an interrupted run "
                             f"there, or choose an empty folder")
        if existing and not os.path.isfile(os.path.join(dst, WORK_DIR, PROGRESS)):
            raise ValueError(f"dst: {dst!r} is not empty and holds no interrupted run to resume "
                             f"(no {WORK_DIR}/{PROGRESS})")
        job = _Job.check(method=method, sparsity=sparsity, pattern=pattern, layer_sparsity=layer_sparsity,
                         owl_lambda=owl_lambda, owl_m=owl_m, blocksize=blocksize, percdamp=percdamp,
                         measure_errors=measure_errors)
        try:
            import transformers
        except ImportError as e:  # an optional dependency of fastprune
            raise ImportError(f"prune_checkpoint builds the model from its config with transformers ({e}); "
                              f"pip install transformers") from None
        checkpoint = SourceCheckpoint(src)
        with _quiet_transformers(transformers):
            try:
                config = transformers.AutoConfig.from_pretrained(src, local_files_only=True)
            except Exception as e:  # noqa: BLE001 - whatever transformers raises, one line naming src
                raise ValueError(f"src: cannot read the config of {src!r}: {str(e).splitlines()[0]}") from None
            build_dtype = dtype
            if build_dtype is None and getattr(config, "dtype", None) is None:
                floats = [e.torch_dtype for r in checkpoint.readers.values() for e in r.entries.values()
                          if e.torch_dtype.is_floating_point]
                build_dtype = floats[0] if floats else None  # what from_pretrained(dtype="auto") picks
            try:
                model = build_skeleton(config, build_dtype)
            except Exception as e:  # noqa: BLE001
                raise ValueError(f"src: cannot build a causal LM from the config of {src!r}: "
                                 f"{str(e).splitlines()[0]}") from None
        block_list = find_blocks(model, blocks)
        job.plan_model(model, block_list, prune_embeddings, prune_lm_head)
        calls = job.calibration_calls(calibration, batch_size, model)
        if job.batches:  # token ids and lengths against the skeleton's tables (shapes only)
            check_calibration_fits(model, job.batches, calibration_labels(calibration, len(job.batches)))
        device = _check_device("cpu" if device is None else device)
        emb = _get_embeddings(model, "get_input_embeddings")
        first = [l for l in job.outside if l.module is emb]
        head = [l for l in job.outside if l.module is not emb]

        def prune_embeddings_now():
            for l in first:
                keep, _ = magnitude_layer(l, job.per_layer.get(l.name, job.sparsity), job.nm)
                l.module.weight.masked_fill_(~keep, 0)

        source = CheckpointSource(checkpoint, model, block_list, prepare_outside=prune_embeddings_now)
        options = {
            "format": _FORMAT, "fastprune": __version__, "source": checkpoint.fingerprint(),
            "method": job.method, "sparsity": job.sparsity, "pattern": job.pattern,
            "layer_sparsity": (None if job.layer_sparsity is None else job.layer_sparsity if isinstance(
                job.layer_sparsity, str) else sorted([type(k).__name__, k, float(v)] for k, v in job.layer_sparsity.items())),
            "owl_lambda": job.owl_lambda, "owl_m": job.owl_m, "blocksize": job.blocksize, "percdamp": job.percdamp,
            "measure_errors": job.measure_errors, "prune_embeddings": bool(prune_embeddings),
            "prune_lm_head": bool(prune_lm_head), "batch_size": job.batch_size if calls is not None else None,
            "dtype": None if dtype is None else str(dtype), "device": device.type, "blocks": len(block_list),
            "calibration": _calibration_digest(job.batches if calls is not None else None),
        }
        destination = _Destination(dst, source)
        state = destination.read_progress() if existing else None
        if state is not None:
            theirs = state.get("options", {})
            differ = [k for k in options if theirs.get(k) != options[k]]
            if differ:
                shown = ", ".join(f"{k}: {theirs.get(k)!r} there, {options[k]!r} here" for k in differ
                                  if k not in ("calibration", "source")) or ""
                named = ", ".join(differ)
                raise ValueError(f"resume: the run in {dst!r} was started with different options ({named}"
                                 f"{'; ' + shown if shown else ''}); pass the same arguments, or start afresh "
                                 f"in an empty folder")
        files_to_copy = _files_to_copy(src)
    except Exception as e:
        if dp is None:
            raise
        dp.agree_inputs(None, None, None, error=e)  # raises it on every process
    writer = dp is None or dp.rank == 0  # the one process that writes dst
    if dp is not None:
        dp.agree_inputs(dict(options, dst=dst, resume_from=None if state is None else state.get("blocks_done")),
                        job.batches if calls is not None else None, model)
        progress = progress and writer
    step = dp.run if dp is not None else (lambda f: f())

    # -- the work ---------------------------------------------------------------
    fix_mmap_threshold()
    fresh = state is None
    created = [p for p in (dst, destination.work) if not os.path.exists(p)]
    threads = torch.get_num_threads()
    if fresh:
        if writer:
            os.makedirs(destination.work, exist_ok=True)
        state = {"options": options, "threads": threads, "outside": None, "owl": None, "blocks_done": 0,
                 "inputs": None, "layers": [], "blocks": []}
    else:
        destination.crc = {k: int(v) for k, v in state.get("crc", {}).items()}
        if state.get("threads", threads) != threads:
            # The thread count changes how torch's linear algebra rounds (SparseGPT's solves): the
            # resumed blocks are computed as the interrupted run computed the others.
            warnings.warn(f"resume: running with {state['threads']} threads, as the interrupted run did "
                          f"(this process has {threads}), so that the result is the same to the bit")
            torch.set_num_threads(state["threads"])
    report = PruneReport(method=job.method, pattern=job.pattern, sparsity=job.sparsity, mode="inplace")
    # In a process group only the writer touches dst's shards and progress record; every step that
    # writes is followed by an agreement (step), so an error writing is raised on every process.
    def record():
        if writer:
            destination.write_progress(state)

    try:
        def opening():
            if not writer:
                return
            if fresh:  # recorded first: a run killed from here on is recognised as one to resume
                destination.write_progress(state)
            # Until the tensors outside the blocks are recorded, nothing in the shards is worth keeping
            # (a kill may even have left them half created): they are (re)created.
            destination.open(create=state["outside"] is None)

        step(opening)
        with torch.no_grad(), eval_mode(model):
            if state["outside"] is None:
                def outside():
                    state["outside"] = _write_outside(source, destination if writer else None, job, first, head)
                    record()

                step(outside)
            outside_reports = [LayerReport(*r) for r in state["outside"]]
            report.layers.extend(r for r in outside_reports if r.name in {l.name for l in first})
            walker = Walker(source, job.plan, calls, device=device, sink=ShardSink(destination) if writer else None,
                            progress=progress, reducer=dp.reducer() if dp is not None else None,
                            scheduler=dp.scheduler() if dp is not None else None)
            if job.layer_sparsity == "owl":
                if state["owl"] is None:
                    job.owl_targets(walker)
                    state["owl"] = list(job.per_block)
                    step(record)
                job.per_block = list(state["owl"])
            done = state["blocks_done"]
            report.layers.extend(LayerReport(*r) for r in state["layers"])
            report.blocks.extend(BlockReport(*b) for b in state["blocks"])
            inputs = None
            if done < len(block_list) and calls is not None and job.prune_forward:
                inputs = walker.capture()
                if done > 0:
                    step(lambda: destination.load_inputs(state["inputs"], inputs))

            def written(i, next_inputs):
                old = state["inputs"]
                if dp is None:
                    state["inputs"] = destination.save_inputs(i + 1, next_inputs) if next_inputs is not None else None
                else:  # each process its own micro-batches' inputs, all saved before the record names them
                    part = (dp.rank, dp.world)
                    step(lambda: destination.save_inputs(i + 1, next_inputs, part) if next_inputs is not None else None)
                    state["inputs"] = None if next_inputs is None else [
                        destination.inputs_name(i + 1, (r, dp.world)) for r in range(dp.world)]
                state["blocks_done"] = i + 1
                state["layers"] = [_layer_row(l) for l in report.layers if l.block is not None]
                state["blocks"] = [[b.index, b.target, b.seconds] for b in report.blocks]
                step(record)
                if writer and old is not None:
                    current = state["inputs"] if isinstance(state["inputs"], list) else [state["inputs"]]
                    for name in ([old] if isinstance(old, str) else old):
                        if name not in current and os.path.exists(os.path.join(destination.work, name)):
                            os.remove(os.path.join(destination.work, name))

            if done < len(block_list):
                job.walk(walker, report, keep_dense=False, start=done, inputs=inputs, on_block_written=written)
            report.layers.extend(r for r in outside_reports if r.name in {l.name for l in head})

        def finish():
            if writer:
                destination.close()
                destination.finish(files_to_copy, dtype)

        step(finish)
    except BaseException:
        if writer:
            destination.close()
            if fresh and state["blocks_done"] == 0:  # nothing worth resuming: leave dst as it was
                for p in reversed(created):
                    shutil.rmtree(p, ignore_errors=True)
        raise
    finally:
        torch.set_num_threads(threads)
        trim_heap()
    report.seconds = time.perf_counter() - start_time
    if dp is not None:
        dp.same_report(report)
    return report


def _layer_row(l: LayerReport) -> list:
    return [l.name, l.block, list(l.shape), l.sparsity, l.error]


def _write_outside(source: CheckpointSource, destination: Optional[_Destination], job: _Job, first,
                   head) -> List[list]:
    """Writes every tensor outside the blocks (embeddings and LM head pruned when asked), one group
    at a time: the embeddings and the rest, then the LM head. Returns their report rows
    (``destination=None``: the rows only, for the processes of a group that do not write)."""
    rows = []
    out_head = _get_embeddings(source.model, "get_output_embeddings")
    emb = _get_embeddings(source.model, "get_input_embeddings")
    tied = (out_head is not None and emb is not None and getattr(out_head, "weight", None) is not None
            and out_head.weight is getattr(emb, "weight", None))
    is_head = (lambda s: not tied and out_head is not None and any(m is out_head for m, _, _ in s.owners))
    groups = [[s for s in source.outside_slots if not is_head(s)], [s for s in source.outside_slots if is_head(s)]]
    for g, slots in enumerate(groups):
        source.materialize(slots, "cpu")
        try:
            for l in (first if g == 0 else head):
                keep, rep = magnitude_layer(l, job.per_layer.get(l.name, job.sparsity), job.nm)
                l.module.weight.masked_fill_(~keep, 0)
                rows.append(_layer_row(rep))
            if destination is not None:
                destination.write_slots(slots)
        finally:
            source.dematerialize(slots)
    if destination is not None:
        destination.copy_unmapped()
        destination.sync()
    return rows


@contextlib.contextmanager
def _quiet_transformers(transformers):
    """transformers' warnings and progress bars off while the skeleton is built (one call's worth)."""
    logging = transformers.utils.logging
    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)
