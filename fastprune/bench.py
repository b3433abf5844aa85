"""``python -m fastprune.bench``: fastprune against torch.nn.utils.prune, side by side.

Builds a model (by default a Llama-shaped stack of ``nn.Linear`` layers in plain
torch, sized by ``--params``), then for each case times torch and fastprune,
measures the peak memory of each call, checks the masks and prints a table.

Every (case, library) pair runs in a fresh Python process, so one's memory
cannot hide in the other's peak and the allocator starts clean. Memory is the
peak resident set size during the call minus the resident set size just before
it: the child resets the kernel's high-water mark (``VmHWM``) by writing ``5``
to ``/proc/self/clear_refs`` right before the call and reads ``VmHWM`` right
after. On CUDA it is ``torch.cuda.max_memory_allocated()`` minus the memory
allocated before the call.

Weights are regenerated layer by layer from a seed wherever the original
values are needed (to check masks, or to undo an in-place prune), so no copy of
the model is ever held.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence, Tuple

import torch

CASES = ("global_l1", "local_l1", "ln_structured", "forward", "forward_bool", "sparsify")
GLOBAL_CASES = ("global_l1", "sparsify", "forward", "forward_bool")
CASE_TITLES = {
    "global_l1": "global L1 (global_unstructured)",
    "local_l1": "local L1 (l1_unstructured per layer)",
    "ln_structured": "ln_structured (n=2, dim=0)",
    "forward": "pruned forward (mask-multiply hooks)",
    "forward_bool": "pruned forward, fastprune bool masks",
    "sparsify": "sparsify_ in place (torch: global + remove)",
}
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float64": torch.float64,
}
# torch.nn.utils.prune.global_unstructured holds about this many copies of the
# model at its peak (flattened scores, ones, default mask, clone, |w|, topk
# values, per-layer masks and pruned weights); measured 11.2x on this project's
# CPU machine at 105M fp32 parameters, plus 12 bytes per pruned unit for topk.
TORCH_GLOBAL_COPIES = 12.0


# ----------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------


def parse_count(text: str) -> int:
    """``100M``, ``1.5B``, ``7B``, ``500K`` or a plain integer."""
    t = str(text).strip().upper().replace("_", "")
    scale = {"K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}
    try:
        if t and t[-1] in scale:
            return int(round(float(t[:-1]) * scale[t[-1]]))
        return int(float(t))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--params: cannot read {text!r}; write e.g. 100M, 1B, 7B") from None


def _llama_block(h: int) -> List[Tuple[int, int]]:
    inter = 256 * math.ceil(8 * h / 3 / 256)
    return [(h, h)] * 4 + [(inter, h), (inter, h), (h, inter)]  # q k v o, gate up, down: (out, in)


def model_shapes(params: int, kind: str = "llama", width: Optional[int] = None) -> List[Tuple[int, int]]:
    """(out_features, in_features) of every Linear of the model."""
    if kind == "square":
        w = width or 2048
        return [(w, w)] * max(1, round(params / (w * w)))
    if kind != "llama":
        raise ValueError(f"--model {kind!r}: choose llama or square")
    widths = [width] if width else [4096, 2048, 1024, 768, 512, 256, 128, 64]
    for h in widths:
        block = _llama_block(h)
        per_block = sum(o * i for o, i in block)
        if width or 4 * per_block <= params or h == widths[-1]:
            return block * max(1, round(params / per_block))
    raise AssertionError("unreachable")


def describe_model(shapes: Sequence[Tuple[int, int]], kind: str) -> str:
    n = sum(o * i for o, i in shapes)
    if kind == "square":
        return f"{len(shapes)} x Linear({shapes[0][1]}, {shapes[0][0]}), {n / 1e6:.1f}M parameters"
    h = shapes[0][1]
    return f"Llama-shaped, hidden {h}, {len(shapes) // 7} blocks x 7 Linear ({len(shapes)} layers), {n / 1e6:.1f}M parameters"


def layer_seed(seed: int, i: int) -> int:
    return seed * 1_000_003 + i


def fill_layer_(weight: torch.Tensor, seed: int, i: int) -> None:
    """Deterministic N(0, 0.02^2) weights for layer ``i`` (regenerable at will)."""
    g = torch.Generator(device=weight.device).manual_seed(layer_seed(seed, i))
    with torch.no_grad():
        weight.normal_(0.0, 0.02, generator=g)


def layer_weight(shape, dtype, device, seed: int, i: int) -> torch.Tensor:
    w = torch.empty(shape, dtype=dtype, device=device)
    fill_layer_(w, seed, i)
    return w


def build_model(shapes, dtype, device, seed: int) -> torch.nn.ModuleList:
    layers = []
    for i, (o, n) in enumerate(shapes):
        lin = torch.nn.utils.skip_init(torch.nn.Linear, n, o, bias=False, dtype=dtype, device=device)
        fill_layer_(lin.weight, seed, i)
        layers.append(lin)
    return torch.nn.ModuleList(layers)


# ----------------------------------------------------------------------------
# Measuring (inside a worker process)
# ----------------------------------------------------------------------------


def _proc_status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def current_memory(device: torch.device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.memory_allocated(device)
    return _proc_status_kb("VmRSS") * 1024


class PeakMemory:
    """Peak memory of a block above what was in use when it started (bytes)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
            self.base = current_memory(self.device)
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.base
        else:
            self.peak = _proc_status_kb("VmHWM") * 1024 - self.base
        return False


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _pairs(model):
    return [(m, "weight") for m in model]


def _unprune(model) -> None:
    """Drop a torch-style reparametrisation without touching weight_orig (left dense)."""
    from torch.nn.utils.prune import BasePruningMethod

    for m in model:
        for k in [k for k, h in m._forward_pre_hooks.items() if isinstance(h, BasePruningMethod)]:
            del m._forward_pre_hooks[k]
        if "weight_orig" in m._parameters:
            m.__dict__.pop("weight", None)
            m.__dict__.pop("__deepcopy__", None)
            m._parameters["weight"] = m._parameters.pop("weight_orig")
            del m._buffers["weight_mask"]


def _regenerate(model, seed) -> None:
    for i, m in enumerate(model):
        fill_layer_(m.weight, seed, i)


def _write_bits(path: str, masks) -> None:
    """Masks as one bit per unit (little bit order, as fastprune packs them)."""
    from fastprune.ops import pack_mask

    with open(path, "wb") as f:
        for m in masks:
            f.write(pack_mask(m).cpu().numpy().tobytes())


def _write_packed(path: str, packed) -> None:
    with open(path, "wb") as f:
        for p in packed:
            f.write(p.cpu().numpy().tobytes())


def _abs_f64(t):
    return t.detach().to(torch.float64).abs()


def check_exact(case: str, model, masks_bool, amount: float, seed: int, dtype, device) -> Dict[str, object]:
    """The exactness invariant of ``case`` on the original weights (regenerated)."""
    shapes = [tuple(m.weight_orig.shape) if hasattr(m, "weight_orig") else tuple(m.weight.shape) for m in model]
    total = sum(math.prod(s) for s in shapes)
    if case in GLOBAL_CASES:
        k = round(amount * total)
        pruned = 0
        max_pruned, min_kept = -math.inf, math.inf
        for i, (shape, mask) in enumerate(zip(shapes, masks_bool)):
            w = _abs_f64(layer_weight(shape, dtype, device, seed, i))
            keep = mask()
            pruned += int((~keep).sum())
            if (~keep).any():
                max_pruned = max(max_pruned, float(w[~keep].max()))
            if keep.any():
                min_kept = min(min_kept, float(w[keep].min()))
        ok = pruned == k and max_pruned <= min_kept
        return {"exact": ok, "k": k, "pruned": pruned, "threshold": max_pruned, "min_kept": min_kept}
    ok = True
    detail = {}
    for i, (shape, mask) in enumerate(zip(shapes, masks_bool)):
        w = layer_weight(shape, dtype, device, seed, i)
        keep = mask()
        if case == "local_l1":
            k = round(amount * w.numel())
            a = _abs_f64(w)
            good = int((~keep).sum()) == k and (k in (0, w.numel()) or float(a[~keep].max()) <= float(a[keep].min()))
        else:  # ln_structured, dim=0
            rows_kept = keep.all(dim=1)
            rows_pruned = (~keep).all(dim=1)
            k = round(amount * w.shape[0])
            norms = torch.linalg.vector_norm(w.to(torch.float64), dim=1)
            good = bool((rows_kept | rows_pruned).all()) and int(rows_pruned.sum()) == k
            if good and 0 < k < w.shape[0]:
                good = float(norms[rows_pruned].max()) <= float(norms[rows_kept].min())
        if not good:
            ok = False
            detail.setdefault("bad_layers", []).append(i)
    detail["exact"] = ok
    return detail


def _prune_call(lib: str, case: str, model, amount: float):
    """The timed operation. Returns what is needed to read the masks back."""
    if lib == "torch":
        import torch.nn.utils.prune as P
    else:
        import fastprune as P
    if case in ("global_l1", "forward", "forward_bool"):
        P.global_unstructured(_pairs(model), pruning_method=P.L1Unstructured, amount=amount)
    elif case == "local_l1":
        for m in model:
            P.l1_unstructured(m, "weight", amount=amount)
    elif case == "ln_structured":
        for m in model:
            P.ln_structured(m, "weight", amount=amount, n=2, dim=0)
    elif case == "sparsify":
        if lib == "torch":
            # torch's nearest equivalent of an in-place prune: prune, then make it permanent.
            P.global_unstructured(_pairs(model), pruning_method=P.L1Unstructured, amount=amount)
            for m in model:
                P.remove(m, "weight")
        else:
            return P.sparsify_(_pairs(model), amount)
    else:
        raise ValueError(case)
    return None


def _forward_inputs(model, dtype, device):
    xs = {}
    for m in model:
        n = m.weight_orig.shape[1] if hasattr(m, "weight_orig") else m.weight.shape[1]
        if n not in xs:
            xs[n] = torch.randn(1, n, generator=torch.Generator().manual_seed(n)).to(dtype=dtype, device=device)
    return xs


def worker(job: Dict[str, object]) -> Dict[str, object]:
    """One (case, library) measurement in this process; see the module docstring."""
    lib, case = job["lib"], job["case"]
    dtype = DTYPES[job["dtype"]]
    device = torch.device(job["device"])
    seed, amount, repeat = int(job["seed"]), float(job["amount"]), int(job["repeat"])
    shapes = [tuple(s) for s in job["shapes"]]
    if lib == "fastprune":
        import fastprune  # noqa: F401  (loads the ops before anything is measured)
    torch.manual_seed(seed)
    model = build_model(shapes, dtype, device, seed)
    if case == "memcpy":
        return _memcpy_worker(model, device, repeat)
    times, peaks = [], []
    result = None
    outputs_digest = None
    if case in ("forward", "forward_bool"):
        # cheap but noisy (mostly fresh pages for the new weights): both libraries
        # get the same, larger number of runs
        repeat = max(repeat, 15)
    for r in range(repeat):
        if case in ("forward", "forward_bool"):
            if r == 0:
                _prune_call(lib, "forward", model, amount)
                if lib == "fastprune" and case == "forward_bool":
                    for m in model:  # 1-byte masks: fastprune's hook multiplies by bool directly
                        m._buffers["weight_mask"] = m._buffers["weight_mask"].bool()
                xs = _forward_inputs(model, dtype, device)
            with torch.no_grad():
                with PeakMemory(device) as pm:
                    _sync(device)
                    t0 = time.perf_counter()
                    outs = [m(xs[m.weight_orig.shape[1]]) for m in model]
                    _sync(device)
                    t1 = time.perf_counter()
            # memory the pruned forward needs above the dense model: the masks and the
            # recomputed weights it holds (weight_orig is the dense weight), plus the call's own peak
            held = sum(
                m.weight_mask.numel() * m.weight_mask.element_size() + m.weight.numel() * m.weight.element_size()
                for m in model
            )
            peaks.append(pm.peak + held)
            times.append(t1 - t0)
            h = hashlib.sha256()
            for o in outs:
                h.update(o.float().cpu().numpy().tobytes())
            outputs_digest = h.hexdigest()
            del outs
            continue
        if r > 0:
            if case == "sparsify":
                if result is not None:
                    result.remove()
                _regenerate(model, seed)
            else:
                _unprune(model)
        with PeakMemory(device) as pm:
            _sync(device)
            t0 = time.perf_counter()
            result = _prune_call(lib, case, model, amount)
            _sync(device)
            t1 = time.perf_counter()
        times.append(t1 - t0)
        peaks.append(pm.peak)
        if lib == "torch" and t1 - t0 > float(job.get("torch_once_s", 3.0)):
            break  # one run of a slow baseline is enough

    # Masks out, as bits, plus the exactness check on regenerated originals.
    if case == "sparsify":
        if lib == "fastprune":
            _write_packed(job["bits"], result.masks)
            getters = [(lambda i=i: result.mask(i)) for i in range(len(shapes))]
        else:
            _write_bits(job["bits"], [m.weight.detach() != 0 for m in model])
            getters = [(lambda m=m: m.weight.detach() != 0) for m in model]
    else:
        _write_bits(job["bits"], [m.weight_mask for m in model])
        getters = [(lambda m=m: m.weight_mask != 0) for m in model]
    out = {
        "times": times,
        "peaks": peaks,
        "bytes": sum(math.prod(s) for s in shapes) * torch.empty((), dtype=dtype).element_size(),
        "outputs": outputs_digest,
    }
    if lib == "fastprune" or job.get("check_torch"):
        out["check"] = check_exact(case, model, getters, amount, seed, dtype, device)
    return out


def _memcpy_worker(model, device, repeat) -> Dict[str, object]:
    biggest = max(m.weight.numel() for m in model)
    dst = torch.empty(biggest, dtype=model[0].weight.dtype, device=device)
    times = []
    for _ in range(max(repeat, 3)):
        _sync(device)
        t0 = time.perf_counter()
        for m in model:
            w = m.weight.detach().reshape(-1)
            dst[: w.numel()].copy_(w)
        _sync(device)
        times.append(time.perf_counter() - t0)
    nbytes = sum(m.weight.numel() for m in model) * model[0].weight.element_size()
    return {"times": times, "peaks": [0], "bytes": nbytes}


# ----------------------------------------------------------------------------
# Orchestration (parent process)
# ----------------------------------------------------------------------------


def available_memory(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def torch_need(case: str, model_bytes: int, numel: int, amount: float, largest_layer_bytes: int) -> int:
    """Estimated peak of torch's call above the model, in bytes."""
    k = round(amount * numel)
    if case in GLOBAL_CASES:
        return int(TORCH_GLOBAL_COPIES * model_bytes + 12 * k)
    # per-layer methods keep a mask and a pruned weight per layer, plus one layer's temporaries
    return int(2 * model_bytes + 6 * largest_layer_bytes)


def run_job(job: Dict[str, object], timeout: Optional[float] = None) -> Dict[str, object]:
    """Run :func:`worker` on ``job`` in a fresh interpreter; returns its result or {'error': ...}."""
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
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    return {"error": "worker printed no result"}


def compare_bits(path_a: str, path_b: str) -> int:
    """Number of differing mask bits between two bit files (-1 if sizes differ)."""
    import numpy as np

    if os.path.getsize(path_a) != os.path.getsize(path_b):
        return -1
    diff = 0
    chunk = 1 << 24
    with open(path_a, "rb") as fa, open(path_b, "rb") as fb:
        while True:
            a, b = fa.read(chunk), fb.read(chunk)
            if not a:
                break
            x = np.bitwise_xor(np.frombuffer(a, np.uint8), np.frombuffer(b, np.uint8))
            diff += int(np.unpackbits(x).sum()) if x.any() else 0
    return diff


def differences_are_ties(path_a, path_b, shapes, dtype, device, seed, threshold) -> bool:
    """True if every differing unit has |w| equal to the selection threshold (a tie).

    ``threshold`` is the global one; ``None`` means per tensor (local selection).
    """
    import numpy as np

    offset = 0
    with open(path_a, "rb") as fa, open(path_b, "rb") as fb:
        data_a = np.frombuffer(fa.read(), np.uint8)
        data_b = np.frombuffer(fb.read(), np.uint8)
    bits_a = bits_b = None
    for i, shape in enumerate(shapes):
        n = math.prod(shape)
        nbytes = (n + 7) // 8
        a, b = data_a[offset:offset + nbytes], data_b[offset:offset + nbytes]
        offset += nbytes
        if np.array_equal(a, b):
            continue
        bits_a = np.unpackbits(a, bitorder="little")[:n]
        bits_b = np.unpackbits(b, bitorder="little")[:n]
        where = torch.from_numpy(np.nonzero(bits_a != bits_b)[0])
        w_all = layer_weight(shape, dtype, device, seed, i).reshape(-1).to(torch.float64).abs()
        level = threshold
        if level is None:  # per-tensor selection: this tensor's largest pruned |w| (mask a's)
            pruned = torch.from_numpy(bits_a == 0)
            level = float(w_all[pruned].max()) if bool(pruned.any()) else None
        if level is None or not bool((w_all[where] == level).all()):
            return False
    return True


def machine_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    with open("/proc/meminfo") as f:
        total_kb = int(f.readline().split()[1])
    return f"{model}, {os.cpu_count()} cores, {total_kb / 2**20:.0f} GiB RAM"


def _fmt_time(t: Optional[float]) -> str:
    if t is None:
        return "-"
    return f"{t * 1000:.1f} ms" if t < 1 else f"{t:.2f} s"


def _fmt_mb(b: Optional[float]) -> str:
    return "-" if b is None else f"{b / 2**20:,.0f} MB"


def run_benchmark(args) -> Tuple[List[Dict[str, object]], Dict[str, object]]:
    """Run every requested case; returns table rows and run information."""
    from tqdm import tqdm

    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    shapes = model_shapes(args.params, args.model, args.width)
    numel = sum(o * i for o, i in shapes)
    elem = torch.empty((), dtype=dtype).element_size()
    model_bytes = numel * elem
    largest = max(o * i for o, i in shapes) * elem
    avail = available_memory(device)
    if model_bytes > 0.9 * avail:
        raise SystemExit(
            f"the model needs {model_bytes / 2**30:.1f} GiB, only {avail / 2**30:.1f} GiB are available on {device}"
        )
    cases = args.cases
    rows: List[Dict[str, object]] = []
    tmp = tempfile.mkdtemp(prefix="fastprune-bench-")
    base = {
        "dtype": args.dtype,
        "device": args.device,
        "seed": args.seed,
        "amount": args.amount,
        "repeat": args.repeat,
        "shapes": shapes,
    }
    jobs = [("memcpy", "torch")]
    for case in cases:
        jobs.append((case, "fastprune"))
        jobs.append((case, "torch"))
    results: Dict[Tuple[str, str], Dict[str, object]] = {}
    skipped: Dict[str, str] = {}
    bar = tqdm(jobs, desc="benchmark", unit="run", file=sys.stderr, disable=args.quiet)
    for case, lib in bar:
        bar.set_postfix_str(f"{case} / {lib}")
        if lib == "torch" and case != "memcpy":
            if args.skip_torch:
                skipped[case] = "--skip-torch"
                continue
            need = torch_need(case, model_bytes, numel, args.amount, largest)
            free_now = available_memory(device)
            if model_bytes + need > 0.9 * free_now:
                skipped[case] = (
                    f"needs ~{(model_bytes + need) / 2**30:.1f} GiB (model + ~{need / 2**30:.1f} GiB), "
                    f"{free_now / 2**30:.1f} GiB available"
                )
                continue
        bits = os.path.join(tmp, f"{case}-{lib}.bits")
        if case == "forward_bool" and lib == "torch" and "times" in results.get(("forward", "torch"), {}):
            # torch's side of both forward cases is the same run (float masks)
            results[(case, lib)] = results[("forward", "torch")]
            shutil.copyfile(os.path.join(tmp, "forward-torch.bits"), bits)
            continue
        job = dict(base, lib=lib, case=case, bits=bits)
        results[(case, lib)] = run_job(job)
    bar.close()

    info = {
        "model": describe_model(shapes, args.model),
        "numel": numel,
        "model_bytes": model_bytes,
        "dtype": args.dtype,
        "device": str(device),
        "amount": args.amount,
        "repeat": args.repeat,
        "skipped": skipped,
        "machine": machine_description(device),
        "torch": torch.__version__,
        "load": os.getloadavg(),
    }
    mc = results.get(("memcpy", "torch"), {})
    info["memcpy"] = min(mc["times"]) if "times" in mc else None
    for case in cases:
        fp = results.get((case, "fastprune"), {})
        tc = results.get((case, "torch"), {})
        row: Dict[str, object] = {"case": case}
        row["fastprune_s"] = min(fp["times"]) if "times" in fp else None
        row["torch_s"] = min(tc["times"]) if "times" in tc else None
        row["fastprune_peak"] = max(fp["peaks"]) if "peaks" in fp else None
        row["torch_peak"] = max(tc["peaks"]) if "peaks" in tc else None
        row["error"] = "; ".join(f"{lib}: {r['error']}" for lib, r in (("fastprune", fp), ("torch", tc)) if "error" in r)
        check = fp.get("check", {})
        row["exact"] = check.get("exact")
        if "times" in fp and "times" in tc:
            diff = compare_bits(os.path.join(tmp, f"{case}-fastprune.bits"), os.path.join(tmp, f"{case}-torch.bits"))
            if diff == 0:
                row["identical"] = "yes"
            elif diff > 0 and case in GLOBAL_CASES + ("local_l1",) and differences_are_ties(
                os.path.join(tmp, f"{case}-fastprune.bits"),
                os.path.join(tmp, f"{case}-torch.bits"),
                shapes,
                dtype,
                device,
                args.seed,
                check.get("threshold") if case in GLOBAL_CASES else None,
            ):
                row["identical"] = f"ties ({diff} bits)"
            else:
                row["identical"] = f"NO ({diff} bits)"
            if case.startswith("forward") and row["identical"] == "yes" and fp.get("outputs") != tc.get("outputs"):
                row["identical"] = "masks yes, outputs NO"
        else:
            row["identical"] = "exact" if check.get("exact") else ("NOT EXACT" if check else "-")
        rows.append(row)
        for suffix in ("fastprune", "torch"):
            path = os.path.join(tmp, f"{case}-{suffix}.bits")
            if os.path.exists(path):
                os.unlink(path)
    os.rmdir(tmp)
    return rows, info


def format_table(rows, info) -> str:
    header = ["case", "torch", "fastprune", "speedup", "torch peak", "fastprune peak", "fastprune GB/s", "masks identical"]
    lines = []
    body = []
    for r in rows:
        fp, tc = r["fastprune_s"], r["torch_s"]
        speed = f"{tc / fp:,.1f}x" if fp and tc else "-"
        gbs = f"{info['model_bytes'] / fp / 1e9:.2f}" if fp else "-"
        tc_text = _fmt_time(tc) if tc is not None else ("skipped" if r["case"] in info["skipped"] else "-")
        body.append([
            CASE_TITLES[r["case"]],
            tc_text,
            _fmt_time(fp),
            speed,
            _fmt_mb(r["torch_peak"]),
            _fmt_mb(r["fastprune_peak"]),
            gbs,
            r["identical"] if not r["error"] else "error",
        ])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    fmt = " | ".join("{:<%d}" % w for w in widths)
    lines.append(fmt.format(*header))
    lines.append("-+-".join("-" * w for w in widths))
    lines.extend(fmt.format(*b) for b in body)
    if info.get("memcpy"):
        mc = info["memcpy"]
        lines.append(
            f"memcpy of the same {info['model_bytes'] / 1e9:.2f} GB (reference; layer by layer into one reused "
            f"layer-sized buffer): {_fmt_time(mc)}, "
            f"{info['model_bytes'] / mc / 1e9:.2f} GB/s"
        )
        for r in rows:
            if r["case"] == "global_l1" and r["fastprune_s"]:
                lines.append(f"global L1: fastprune time / memcpy time = {r['fastprune_s'] / mc:.2f}")
    mb64 = 64 * 2**20
    for r in rows:
        peak = r["fastprune_peak"]
        if peak is None:
            continue
        if r["case"] == "global_l1":
            state = 2 * info["model_bytes"]  # the masks and the pruned weight attributes torch's layout needs
            verdict = "within" if peak <= state + mb64 else "ABOVE"
            lines.append(
                f"global L1 peak {_fmt_mb(peak)} vs masks + pruned weights ({_fmt_mb(state)}) + 64 MB: {verdict}"
            )
        if r["case"] == "sparsify":
            budget = info["numel"] / 8
            verdict = "within" if peak <= budget + mb64 else "ABOVE"
            lines.append(f"sparsify_ peak {_fmt_mb(peak)} vs N/8 ({_fmt_mb(budget)}) + 64 MB: {verdict}")
    lines.append("")
    from fastprune import build_info

    bi = build_info()
    kernel = "compiled extension" if bi["extension"] else f"pure-torch fallback ({bi['fallback_reason']})"
    lines.append(
        f"model: {info['model']}, {info['dtype']} on {info['device']} ({info['model_bytes'] / 1e9:.2f} GB); "
        f"amount={info['amount']}"
    )
    lines.append(f"machine: {info['machine']}; torch {info['torch']}; fastprune kernels: {kernel}")
    lines.append("load average at the end: " + ", ".join(f"{x:.2f}" for x in info["load"]))
    lines.append(
        "times: best of --repeat runs (forward cases: at least 15; torch: one run when it takes over 3 s); "
        "each case and library in a fresh process."
    )
    lines.append(
        "peak: peak RSS during the call minus RSS just before it (VmHWM reset through /proc/self/clear_refs); "
        "for the forward cases, the bytes of the masks and recomputed weights the pruned model holds "
        "above the dense one plus the forward call's own peak; on CUDA, torch.cuda.max_memory_allocated above the start."
    )
    lines.append("GB/s: model bytes (every weight read once) / fastprune time.")
    lines.append(
        "forward: both libraries with masks in the weight's dtype; forward_bool: fastprune with 1-byte bool masks "
        "(torch's side is the same float-mask run)."
    )
    lines.append(
        "masks identical: bit-for-bit comparison with torch's masks; 'ties (n bits)' = they differ only among units "
        "whose |w| equals the threshold (torch's topk breaks ties arbitrarily, fastprune by lower index); where torch "
        "did not run, 'exact' = exactly k pruned and every pruned |w| <= every kept |w| on the regenerated weights."
    )
    for case, why in info["skipped"].items():
        lines.append(f"torch skipped for {case}: {why}")
    for r in rows:
        if r["error"]:
            lines.append(f"{r['case']}: {r['error']}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fastprune.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--params", type=parse_count, default=parse_count("100M"), help="model size: 100M, 1B, 7B... (default 100M)")
    p.add_argument("--model", choices=("llama", "square"), default="llama", help="llama: Llama-shaped blocks; square: N x Linear(width, width)")
    p.add_argument("--width", type=int, default=None, help="hidden size (llama) or layer width (square, default 2048)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amount", type=float, default=0.5, help="fraction to prune (default 0.5)")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per case (best is reported)")
    p.add_argument("--cases", type=lambda s: [c.strip() for c in s.split(",") if c.strip()], default=list(CASES),
                   help="comma-separated subset of " + ",".join(CASES))
    p.add_argument("--skip-torch", action="store_true", help="time fastprune only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the rows and run information to this JSON file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.worker:
        with open(args.worker) as f:
            job = json.load(f)
        result = worker(job)
        print("RESULT " + json.dumps(result), flush=True)
        return 0
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        parser.error(f"--cases: unknown {unknown}; choose from {','.join(CASES)}")
    if not 0.0 <= args.amount <= 1.0:
        parser.error("--amount must be a fraction in [0, 1]")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: this torch has no CUDA device")
    rows, info = run_benchmark(args)
    print(format_table(rows, info))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "info": info}, f, indent=1, default=str)
    return 1 if any(r["error"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
