"""One measurement, (case, library), in a process of its own.

A *job* is a JSON-able dict: ``lib`` (``"torch"``, ``"fastprune"``, or
``"floor"``: the floor of the case, see :mod:`~fastprune.bench.floors`),
``case`` (a benchmark case or ``"memcpy"``), ``dtype``, ``device``, ``seed``,
``amount``, ``repeat``, ``shapes`` and ``bits`` (where the masks are written as
a bit file; floors write none); optional ``torch_once_s`` (a torch run longer
than this is not repeated, default 3 s) and ``check_torch`` (also check torch's
masks for exactness).

A floor is timed by the same loop as the case it belongs to: the same number
of runs, the same steps between them (what the previous run allocated is
released first, the weights regenerated for ``sparsify``), and freed memory
handed back before every timed run of every job, so that each run allocates
new memory as a first call does (:func:`~fastprune.bench.fresh_allocations`).

:func:`run_job` starts a fresh interpreter (``python -m fastprune.bench
--worker JOB.json``), which runs :func:`worker`; a fresh process for every
pair keeps one library's memory out of the other's peak and starts the
allocator clean.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from typing import Dict, Optional

import torch

from ..maskset import MaskSet
from .cases import FORWARD_CASES, case_floor, prune_call
from .floors import forward_all, forward_inputs
from .masks import check_exact, write_mask_file
from .memory import PeakMemory, fresh_allocations, synchronize
from .models import DTYPES, build_model, regenerate_, unprune_

__all__ = ["FORWARD_MIN_REPEAT", "RESULT_PREFIX", "worker", "run_job", "worker_main"]

#: The forward cases are cheap but noisy (mostly fresh pages for the recomputed
#: weights): both libraries get at least this many runs.
FORWARD_MIN_REPEAT = 15
#: The line on which the worker process prints its result.
RESULT_PREFIX = "RESULT "


def _time_forward(lib: str, case: str, model, amount: float, dtype, device, repeat: int):
    """Prune once with global L1 (the floor: not at all), then time the forward pass.

    One input row per layer: the time is the hooks' (the floor: the dense matmuls').
    """
    if lib != "floor":
        prune_call(lib, case, model, amount)
    if lib == "fastprune" and case == "forward_bool":
        for m in model:  # 1-byte masks: fastprune's hook multiplies by bool directly
            m._buffers["weight_mask"] = m._buffers["weight_mask"].bool()
    xs = forward_inputs(model, dtype, device)
    # what the pruned forward holds above the dense model: the masks and the recomputed
    # weights (weight_orig is the dense weight); the call's own peak comes on top
    held = sum(m.weight_mask.numel() * m.weight_mask.element_size() + m.weight.numel() * m.weight.element_size()
               for m in model if hasattr(m, "weight_mask"))
    if lib == "floor":
        floor = case_floor(case)
        call = lambda: floor.run(model, xs)  # noqa: E731
    else:
        call = lambda: forward_all(model, xs)  # noqa: E731
    times, peaks, digest = [], [], None
    for _ in range(max(repeat, FORWARD_MIN_REPEAT)):
        fresh_allocations(device)
        with PeakMemory(device) as pm:
            synchronize(device)
            t0 = time.perf_counter()
            outs = call()
            synchronize(device)
            t1 = time.perf_counter()
        times.append(t1 - t0)
        peaks.append(pm.peak + held)
        h = hashlib.sha256()
        for o in outs:
            h.update(o.float().cpu().numpy().tobytes())
        digest = h.hexdigest()
        del outs
    return times, peaks, digest


def _time_prune(lib: str, case: str, model, amount: float, seed: int, device, repeat: int, once_s: float):
    """Time ``prune_call`` (``lib="floor"``: the case's floor), putting the model back between runs.

    Returns:
        times, peaks and the last run's result (a MaskSet for fastprune's
        ``sparsify``, the floor's new tensors for the floor, else ``None``).
    """
    if lib == "floor":
        floor = case_floor(case)
        call = lambda: floor.run(model, None)  # noqa: E731
    else:
        call = lambda: prune_call(lib, case, model, amount)  # noqa: E731
    times, peaks, result = [], [], None
    for r in range(repeat):
        if r > 0:
            # release what the previous run allocated before the next one allocates again
            if isinstance(result, MaskSet):
                result.remove()
            result = None
            if case == "sparsify":
                regenerate_(model, seed)
            else:
                unprune_(model)
        fresh_allocations(device)
        with PeakMemory(device) as pm:
            synchronize(device)
            t0 = time.perf_counter()
            result = call()
            synchronize(device)
            t1 = time.perf_counter()
        times.append(t1 - t0)
        peaks.append(pm.peak)
        if lib == "torch" and t1 - t0 > once_s:
            break  # one run of a slow baseline is enough
    return times, peaks, result


def _memcpy(model, device, repeat: int) -> Dict[str, object]:
    """Bandwidth reference (warm, not a floor): copy the weights layer by layer into one reused buffer."""
    biggest = max(m.weight.numel() for m in model)
    dst = torch.empty(biggest, dtype=model[0].weight.dtype, device=device)
    times = []
    for _ in range(max(repeat, 3)):
        synchronize(device)
        t0 = time.perf_counter()
        for m in model:
            w = m.weight.detach().reshape(-1)
            dst[: w.numel()].copy_(w)
        synchronize(device)
        times.append(time.perf_counter() - t0)
    nbytes = sum(m.weight.numel() for m in model) * model[0].weight.element_size()
    return {"times": times, "peaks": [0], "bytes": nbytes}


def worker(job: Dict[str, object]) -> Dict[str, object]:
    """Run one job in this process (see the module docstring for its keys).

    Args:
        job: the job.

    Returns:
        ``times`` (seconds per run), ``peaks`` (bytes per run), ``bytes`` (the
        model's), ``outputs`` (digest of the forward outputs, forward cases) and,
        for fastprune, ``check`` (:func:`~fastprune.bench.check_exact`); the masks
        are written to ``job["bits"]``. A floor job returns ``times``, ``peaks``,
        ``bytes`` and ``floor`` (its name) and writes no masks.

    Raises:
        ValueError: unknown case, library or dtype.
    """
    lib, case = job["lib"], job["case"]
    dtype = DTYPES[job["dtype"]]
    device = torch.device(job["device"])
    seed, amount, repeat = int(job["seed"]), float(job["amount"]), int(job["repeat"])
    shapes = [tuple(s) for s in job["shapes"]]
    torch.manual_seed(seed)
    model = build_model(shapes, dtype, device, seed)
    if case == "memcpy":
        return _memcpy(model, device, repeat)
    if lib == "floor":
        floor = case_floor(case)
        if floor.forward:
            times, peaks, _ = _time_forward(lib, case, model, amount, dtype, device, repeat)
        else:
            times, peaks, _ = _time_prune(lib, case, model, amount, seed, device, repeat, math.inf)
        return {"times": times, "peaks": peaks, "floor": floor.name,
                "bytes": sum(math.prod(s) for s in shapes) * torch.empty((), dtype=dtype).element_size()}
    digest = None
    if case in FORWARD_CASES:
        times, peaks, digest = _time_forward(lib, case, model, amount, dtype, device, repeat)
    else:
        times, peaks, result = _time_prune(lib, case, model, amount, seed, device, repeat,
                                           float(job.get("torch_once_s", 3.0)))

    if case == "sparsify" and lib == "fastprune":
        write_mask_file(job["bits"], result.masks, packed=True)
        masks = [(lambda i=i: result.mask(i)) for i in range(len(shapes))]
    elif case == "sparsify":
        masks = [(lambda m=m: m.weight.detach() != 0) for m in model]
        write_mask_file(job["bits"], [m() for m in masks])
    else:
        masks = [(lambda m=m: m.weight_mask != 0) for m in model]
        write_mask_file(job["bits"], [m.weight_mask for m in model])
    out = {
        "times": times,
        "peaks": peaks,
        "bytes": sum(math.prod(s) for s in shapes) * torch.empty((), dtype=dtype).element_size(),
        "outputs": digest,
    }
    if lib == "fastprune" or job.get("check_torch"):
        out["check"] = check_exact(case, model, masks, amount, seed, dtype, device)
    return out


def run_job(job: Dict[str, object], timeout: Optional[float] = None) -> Dict[str, object]:
    """Run :func:`worker` on ``job`` in a fresh interpreter.

    Args:
        job: the job (see the module docstring).
        timeout: seconds before the child is killed (``None``: no limit).

    Returns:
        the worker's result, or ``{"error": why}`` when the child failed, was
        killed (e.g. out of memory) or timed out.

    Example::

        >>> job = {"lib": "fastprune", "case": "sparsify", "dtype": "float32", "device": "cpu",
        ...        "seed": 0, "amount": 0.5, "repeat": 1, "shapes": [[64, 64]], "bits": "/tmp/s.bits"}
        >>> run_job(job)["check"]["exact"]  # doctest: +SKIP
        True
    """
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(job, f)
        path = f.name
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "fastprune.bench", "--worker", path],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    finally:
        os.unlink(path)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        if proc.returncode in (-9, 137):
            tail = ["killed (out of memory?)"] + tail
        return {"error": " | ".join(tail) or f"exit code {proc.returncode}"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    return {"error": "worker printed no result"}



def worker_main(path: str) -> int:
    """The child's side of :func:`run_job`: run the job in file ``path`` and print its result line."""
    with open(path) as f:
        job = json.load(f)
    print(RESULT_PREFIX + json.dumps(worker(job)), flush=True)
    return 0
