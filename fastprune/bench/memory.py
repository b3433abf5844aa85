"""Memory: the peak of one call, what is available, and what torch's baseline will need.

On CPU the peak of a call is the peak resident set size during the call minus
the resident set size just before it: :class:`PeakMemory` resets the kernel's
high-water mark (``VmHWM``) by writing ``5`` to ``/proc/self/clear_refs`` right
before the call and reads ``VmHWM`` right after (Linux only). On CUDA it is
``torch.cuda.max_memory_allocated()`` minus the memory allocated before.

:func:`fresh_allocations` runs before every timed run of a case or a floor, so
that every run's new tensors are new memory, as in a process's first call: on
CPU the C library hands its free heap pages back to the kernel
(``malloc_trim(0)``; the next run's tensors are pages the kernel zero-fills on
first touch), on CUDA the caching allocator is emptied (fresh ``cudaMalloc``).
Without it, later runs of a case could reuse the pages an earlier run freed
while its floor's runs could not (or the other way round), depending only on
the allocator's history.
"""
from __future__ import annotations

import ctypes
import ctypes.util
from typing import Optional, Sequence, Tuple

import torch

from .cases import GLOBAL_CASES
from .floors import Floor
from .models import model_numel

__all__ = [
    "TORCH_GLOBAL_COPIES",
    "current_memory",
    "PeakMemory",
    "available_memory",
    "torch_need",
    "torch_fits",
    "synchronize",
    "fresh_allocations",
    "floor_fits",
]

# torch.nn.utils.prune.global_unstructured holds about this many copies of the
# model at its peak (flattened scores, ones, default mask, clone, |w|, topk
# values, per-layer masks and pruned weights): 11.2x was measured at 105M fp32
# parameters on CPU, plus 12 bytes per pruned unit for topk's indices and values.
TORCH_GLOBAL_COPIES = 12.0


def _proc_status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def synchronize(device: torch.device) -> None:
    """Wait for ``device``'s queued work (a no-op on CPU), so that a clock read after it is meaningful."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _malloc_trim():
    """glibc's ``malloc_trim``, or ``None`` where the C library has none (macOS, musl)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_MALLOC_TRIM = _malloc_trim()


def fresh_allocations(device: torch.device) -> None:
    """Before a timed run: give freed memory back, so that the run allocates new memory as a first call does.

    On CPU (glibc), ``malloc_trim(0)`` returns the free pages of the C
    library's heap to the kernel: the run's new tensors are then pages the
    kernel zero-fills on first touch, whatever earlier runs freed (elsewhere it
    does nothing). On CUDA the caching allocator's free blocks go back to the
    driver (``torch.cuda.empty_cache()``): the run's new tensors are fresh
    ``cudaMalloc`` allocations. Memory still in use (the model, what a run
    still holds) is kept.

    Args:
        device: the benchmark's device.

    Example::

        >>> fresh_allocations(torch.device("cpu"))
    """
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
    elif _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def current_memory(device: torch.device) -> int:
    """Bytes in use now: this process's resident set (CPU) or the CUDA caching allocator's allocated bytes.

    Raises:
        RuntimeError: on CPU, where ``/proc/self/status`` has no ``VmRSS`` line.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.memory_allocated(device)
    return _proc_status_kb("VmRSS") * 1024


class PeakMemory:
    """Context manager: the peak memory of its block above what was in use when it started.

    Args:
        device: where to measure (CPU: resident set size, Linux only; CUDA: the
            caching allocator).

    After the block, ``peak`` holds the number of bytes.

    Raises:
        OSError: on CPU where ``/proc/self/clear_refs`` cannot be written.

    Example::

        >>> with PeakMemory(torch.device("cpu")) as pm:
        ...     x = torch.ones(2**20)
        >>> pm.peak >= 0
        True
    """

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.base = 0
        self.peak = 0

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
            self.base = current_memory(self.device)
        return self

    def __exit__(self, *exc) -> bool:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.base
        else:
            self.peak = _proc_status_kb("VmHWM") * 1024 - self.base
        return False


def available_memory(device: torch.device) -> int:
    """Bytes that a new allocation can still get: ``MemAvailable`` (CPU) or the device's free memory (CUDA)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def torch_need(case: str, model_bytes: int, numel: int, amount: float, largest_layer_bytes: int) -> int:
    """Estimated peak of torch's call for ``case`` above the model itself, in bytes.

    Args:
        case: a benchmark case (see :data:`fastprune.bench.cases.CASES`).
        model_bytes: bytes of the model's weights.
        numel: number of weights.
        amount: fraction pruned.
        largest_layer_bytes: bytes of the largest layer's weight.

    Returns:
        the estimate: :data:`TORCH_GLOBAL_COPIES` copies of the model for the
        global cases, a mask and a pruned weight per layer plus one layer's
        temporaries for the per-layer ones.
    """
    k = round(amount * numel)
    if case in GLOBAL_CASES:
        return int(TORCH_GLOBAL_COPIES * model_bytes + 12 * k)
    return int(2 * model_bytes + 6 * largest_layer_bytes)


def torch_fits(
    case: str,
    shapes: Sequence[Tuple[int, int]],
    dtype: torch.dtype,
    amount: float,
    device: torch.device,
    *,
    model_loaded: bool = False,
    available: Optional[int] = None,
) -> Tuple[bool, str]:
    """Whether torch's baseline for ``case`` is expected to fit in memory now (using 90% of it at most).

    Args:
        case: the benchmark case.
        shapes: the model's layer shapes.
        dtype: the weights' dtype.
        amount: fraction pruned.
        device: where it would run.
        model_loaded: the model is already in memory (only torch's extra need counts).
        available: bytes available; measured now when ``None``.

    Returns:
        ``(fits, reason)``; ``reason`` says what is needed and what is available
        when it does not fit, and is empty otherwise.
    """
    elem = torch.empty((), dtype=dtype).element_size()
    numel = model_numel(shapes)
    model_bytes = numel * elem
    largest = max(o * i for o, i in shapes) * elem
    extra = torch_need(case, model_bytes, numel, amount, largest)
    need = extra if model_loaded else model_bytes + extra
    free = available_memory(device) if available is None else available
    if need <= 0.9 * free:
        return True, ""
    what = f"~{need / 2**30:.1f} GiB" if model_loaded else f"~{need / 2**30:.1f} GiB (model + ~{extra / 2**30:.1f} GiB)"
    return False, f"needs {what}, {free / 2**30:.1f} GiB available"


def floor_fits(
    floor: Floor,
    shapes: Sequence[Tuple[int, int]],
    dtype: torch.dtype,
    device: torch.device,
    *,
    available: Optional[int] = None,
) -> Tuple[bool, str]:
    """Whether ``floor``'s run is expected to fit in memory next to the model (using 90% of it at most).

    Args:
        floor: the floor (its ``need``).
        shapes: the model's layer shapes.
        dtype: the weights' dtype.
        device: where it would run.
        available: bytes available; measured now when ``None``.

    Returns:
        ``(fits, reason)``; ``reason`` says what is needed and what is
        available when it does not fit, and is empty otherwise.

    Example::

        >>> from fastprune.bench import FLOORS
        >>> floor_fits(FLOORS["two_copies"], [(2**15, 2**15)], torch.float32, torch.device("cpu"), available=2**33)
        (False, 'needs ~12.0 GiB (model + ~8.0 GiB), 8.0 GiB available')
    """
    elem = torch.empty((), dtype=dtype).element_size()
    numel = model_numel(shapes)
    model_bytes = numel * elem
    extra = floor.need(model_bytes, numel)
    need = model_bytes + extra
    free = available_memory(device) if available is None else available
    if need <= 0.9 * free:
        return True, ""
    return False, f"needs ~{need / 2**30:.1f} GiB (model + ~{extra / 2**30:.1f} GiB), {free / 2**30:.1f} GiB available"
