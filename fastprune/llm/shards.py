"""Reading and writing safetensors shards one tensor at a time, without mapping whole files.

The format (https://github.com/huggingface/safetensors): an 8-byte little-endian
header length ``N``, ``N`` bytes of JSON (``{name: {"dtype", "shape",
"data_offsets": [begin, end]}, "__metadata__": {str: str}}``, offsets relative
to the end of the header), then the tensors' bytes, back to back.

:class:`ShardReader` parses and checks a header and reads one tensor with
``readinto`` straight into the tensor's memory: no file is memory-mapped, so
nothing but the tensors asked for becomes resident. :class:`ShardWriter`
writes a shard whose layout (names, dtypes, shapes) is known in advance: the
header first, then each tensor at its offset, in any order and as often as
needed (a resumed run rewrites the tensors of an unfinished block).
"""
from __future__ import annotations

import json
import os
import struct
import sys
import zlib
from typing import Dict, List, Optional, Sequence, Tuple

import torch

__all__ = ["DTYPES", "Entry", "ShardReader", "ShardWriter", "tensor_bytes", "write_tensors", "fsync_dir",
           "atomic_write_bytes"]

DTYPES: Dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
for _name, _attr in (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2"), ("U16", "uint16"),
                     ("U32", "uint32"), ("U64", "uint64")):
    if hasattr(torch, _attr):
        DTYPES[_name] = getattr(torch, _attr)
NAMES = {v: k for k, v in DTYPES.items()}

_MAX_HEADER = 100 * 2 ** 20


class Entry:
    """One tensor of a shard: ``dtype`` (safetensors name), ``shape``, byte offsets ``begin``/``end``
    relative to the data section."""

    __slots__ = ("name", "dtype", "shape", "begin", "end")

    def __init__(self, name: str, dtype: str, shape: Sequence[int], begin: int, end: int) -> None:
        self.name = name
        self.dtype = dtype
        self.shape = tuple(int(s) for s in shape)
        self.begin = int(begin)
        self.end = int(end)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


def _byte_view(t: torch.Tensor) -> memoryview:
    """The bytes of contiguous CPU tensor ``t`` (shared memory, no copy)."""
    flat = t.reshape(-1)
    if flat.element_size() != 1 or flat.dtype == torch.bool:
        flat = flat.view(torch.uint8)
    return memoryview(flat.numpy()).cast("B")


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """``t``'s bytes as safetensors stores them (little-endian, row-major); a view when ``t`` is a
    contiguous CPU tensor, else of a contiguous CPU copy."""
    if sys.byteorder != "little":  # pragma: no cover - every platform torch ships for is little-endian
        raise RuntimeError("safetensors shards are little-endian; this machine is not")
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    return _byte_view(t.contiguous())


class ShardReader:
    """The header of one safetensors file, checked, and reads of single tensors.

    Raises:
        ValueError: the file is not a valid safetensors file (header size,
            JSON, unknown dtype, offsets that overlap, leave gaps or run past
            the end, sizes that do not match the shapes).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise ValueError(f"{path}: not a safetensors file (shorter than 8 bytes)")
            (n,) = struct.unpack("<Q", head)
            if n > _MAX_HEADER or 8 + n > size:
                raise ValueError(f"{path}: not a safetensors file (header of {n} bytes in a {size}-byte file)")
            raw = f.read(n)
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: unreadable safetensors header ({e})") from None
        if not isinstance(header, dict):
            raise ValueError(f"{path}: the safetensors header is not a JSON object")
        self.data_start = 8 + n
        self.metadata = header.pop("__metadata__", None) or {}
        entries = []
        for name, info in header.items():
            try:
                entry = Entry(name, info["dtype"], info["shape"], *info["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"{path}: malformed header entry for {name!r}") from None
            if entry.dtype not in DTYPES:
                raise ValueError(f"{path}: tensor {name!r} has dtype {entry.dtype}, which torch cannot hold")
            numel = 1
            for s in entry.shape:
                numel *= s
            if entry.nbytes != numel * torch.empty((), dtype=entry.torch_dtype).element_size() or entry.begin < 0:
                raise ValueError(f"{path}: tensor {name!r}: offsets {entry.begin}..{entry.end} do not hold "
                                 f"shape {list(entry.shape)} of {entry.dtype}")
            entries.append(entry)
        entries.sort(key=lambda e: (e.begin, e.end))
        pos = 0
        for e in entries:
            if e.begin != pos:
                raise ValueError(f"{path}: tensor {e.name!r} starts at {e.begin}, expected {pos} (gap or overlap)")
            pos = e.end
        if self.data_start + pos != size:
            raise ValueError(f"{path}: the tensors end at byte {self.data_start + pos}, the file at {size}")
        self.entries: Dict[str, Entry] = {e.name: e for e in entries}
        self.order: List[str] = [e.name for e in entries]

    def read(self, name: str) -> torch.Tensor:
        """Tensor ``name``, read into fresh memory (nothing of the file stays mapped)."""
        e = self.entries[name]
        t = torch.empty(e.shape, dtype=e.torch_dtype)
        if e.nbytes:
            with open(self.path, "rb", buffering=0) as f:
                _read_exact(f, self.data_start + e.begin, _byte_view(t), self.path)
        return t

    def read_into(self, name: str, out: torch.Tensor) -> torch.Tensor:
        """Tensor ``name`` read into ``out`` (contiguous, on the CPU, of its dtype and shape)."""
        e = self.entries[name]
        if out.dtype != e.torch_dtype or tuple(out.shape) != e.shape or not out.is_contiguous() \
                or out.device.type != "cpu":
            raise ValueError(f"{name}: cannot read {e.dtype} {list(e.shape)} into {out.dtype} {list(out.shape)}")
        if e.nbytes:
            with open(self.path, "rb", buffering=0) as f:
                _read_exact(f, self.data_start + e.begin, _byte_view(out), self.path)
        return out

    def crc(self, name: str, buf: Optional[bytearray] = None) -> int:
        """CRC-32 of tensor ``name``'s bytes, read back in chunks of ``len(buf)`` (default 8 MiB)."""
        e = self.entries[name]
        crc, pos = 0, self.data_start + e.begin
        if buf is None:
            buf = bytearray(min(8 * 2 ** 20, max(e.nbytes, 1)))
        with open(self.path, "rb", buffering=0) as f:
            left = e.nbytes
            while left:
                n = min(left, len(buf))
                view = memoryview(buf)[:n]
                _read_exact(f, pos, view, self.path)
                crc = zlib.crc32(view, crc)
                pos += n
                left -= n
        return crc


def _read_exact(f, offset: int, view: memoryview, path: str) -> None:
    f.seek(offset)
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            raise ValueError(f"{path}: file ends before byte {offset + len(view)}")
        got += n


class ShardWriter:
    """Writes one safetensors file whose tensors (names, dtypes, shapes, order) are fixed up front.

    ``create()`` writes the header and sizes the file; ``write(name, tensor)``
    puts a tensor's bytes at its offset and returns their CRC-32; ``sync()``
    flushes to disk. The file is valid once every tensor has been written.
    """

    def __init__(self, path: str, layout: Sequence[Tuple[str, torch.dtype, Sequence[int]]],
                 metadata: Optional[Dict[str, str]] = None) -> None:
        self.path = path
        header: Dict[str, object] = {}
        if metadata:
            header["__metadata__"] = dict(metadata)
        self.entries: Dict[str, Entry] = {}
        pos = 0
        for name, dtype, shape in layout:
            if dtype not in NAMES:
                raise ValueError(f"{name}: dtype {dtype} cannot be stored in safetensors")
            numel = 1
            for s in shape:
                numel *= int(s)
            end = pos + numel * torch.empty((), dtype=dtype).element_size()
            self.entries[name] = Entry(name, NAMES[dtype], shape, pos, end)
            header[name] = {"dtype": NAMES[dtype], "shape": [int(s) for s in shape], "data_offsets": [pos, end]}
            pos = end
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        raw += b" " * (-len(raw) % 8)  # the data section starts 8-aligned, as safetensors writes it
        self.header = struct.pack("<Q", len(raw)) + raw
        self.data_start = len(self.header)
        self.size = self.data_start + pos
        self._fd: Optional[int] = None

    @property
    def nbytes(self) -> int:
        """Bytes of tensor data in the file."""
        return self.size - self.data_start

    def open(self, create: bool) -> None:
        """Opens the file; ``create`` (re)writes the header and sets the size, else the file must
        already have this writer's header and size (a resumed run)."""
        if create:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0), 0o644)
            _write_exact(fd, 0, memoryview(self.header), self.path)
            os.ftruncate(fd, self.size)
        else:
            fd = os.open(self.path, os.O_RDWR | getattr(os, "O_BINARY", 0))
            if os.fstat(fd).st_size != self.size or _pread(fd, len(self.header), 0) != self.header:
                os.close(fd)
                raise ValueError(f"{self.path}: does not have the layout this run writes")
        self._fd = fd

    def write(self, name: str, tensor: torch.Tensor) -> int:
        """Writes ``tensor`` as entry ``name``; returns the CRC-32 of its bytes."""
        e = self.entries[name]
        if tuple(tensor.shape) != e.shape or tensor.dtype != e.torch_dtype:
            raise ValueError(f"{name}: expected {e.dtype} {list(e.shape)}, got {tensor.dtype} {list(tensor.shape)}")
        view = tensor_bytes(tensor)
        _write_exact(self._fd, self.data_start + e.begin, view, self.path)
        return zlib.crc32(view)

    def sync(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _pwrite(fd: int, data, offset: int) -> int:
    if hasattr(os, "pwrite"):
        return os.pwrite(fd, data, offset)
    os.lseek(fd, offset, os.SEEK_SET)  # pragma: no cover - Windows
    return os.write(fd, data)


def _pread(fd: int, n: int, offset: int) -> bytes:
    if hasattr(os, "pread"):
        return os.pread(fd, n, offset)
    os.lseek(fd, offset, os.SEEK_SET)  # pragma: no cover - Windows
    return os.read(fd, n)


def _write_exact(fd: int, offset: int, view: memoryview, path: str) -> None:
    done = 0
    while done < len(view):
        n = _pwrite(fd, view[done:], offset + done)
        if n <= 0:  # pragma: no cover - pwrite raises on errors
            raise OSError(f"{path}: short write")
        done += n


def fsync_dir(path: str) -> None:
    """Makes the renames inside folder ``path`` durable (where the platform allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Writes ``data`` to ``path`` so that a crash leaves either the old file or the new one:
    a temporary file in the same folder, fsync, ``os.replace``, fsync of the folder."""
    tmp = f"{path}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0), 0o644)
    try:
        _write_exact(fd, 0, memoryview(data), tmp)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def write_tensors(path: str, tensors: Sequence[Tuple[str, torch.Tensor]],
                  metadata: Optional[Dict[str, str]] = None) -> None:
    """A complete safetensors file of ``tensors``, written atomically (see :func:`atomic_write_bytes`)."""
    writer = ShardWriter(f"{path}.tmp-{os.getpid()}", [(n, t.dtype, tuple(t.shape)) for n, t in tensors], metadata)
    writer.open(create=True)
    try:
        for name, t in tensors:
            writer.write(name, t)
        writer.sync()
    finally:
        writer.close()
    os.replace(writer.path, path)
    fsync_dir(os.path.dirname(os.path.abspath(path)))
