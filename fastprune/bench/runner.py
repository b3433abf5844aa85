"""Orchestration: every (case, library) pair and every floor in its own process, then one row per case."""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ..progress import progress_bar
from .cases import CASE_FLOORS, CASES, FORWARD_CASES, GLOBAL_CASES
from .floors import FLOORS
from .masks import compare_masks, layer_scores, read_mask_file
from .memory import available_memory, floor_fits, torch_fits
from .models import DTYPES, describe_model, model_numel, model_shapes
from .table import machine_description
from .worker import run_job

__all__ = ["run_benchmark", "mask_verdict"]


def mask_verdict(bits_fastprune: str, bits_torch: str, case: str, shapes, dtype, device, seed: int,
                 check: Dict[str, object]) -> str:
    """``"yes"``, ``"ties (n bits)"`` or ``"NO (n bits)"`` for two bit files of ``case``.

    Args:
        bits_fastprune, bits_torch: the two libraries' bit files.
        case: the benchmark case (decides the scores and the threshold's scope).
        shapes, dtype, device, seed: the model (regenerated for the scores).
        check: fastprune's :func:`~fastprune.bench.check_exact` result (its
            ``threshold`` is the global one).
    """
    try:
        a, b = read_mask_file(bits_fastprune, shapes), read_mask_file(bits_torch, shapes)
    except ValueError:
        return "NO (different layouts)"
    scores = layer_scores(shapes, dtype, device, seed, rows=case == "ln_structured")
    threshold = check.get("threshold") if case in GLOBAL_CASES else None
    return compare_masks(a, b, scores, threshold).verdict


def _row(case: str, fp: Dict[str, object], tc: Dict[str, object], verdict: Optional[str],
         floor_s: Optional[float]) -> Dict[str, object]:
    check = fp.get("check", {})
    fastprune_s = min(fp["times"]) if "times" in fp else None
    torch_s = min(tc["times"]) if "times" in tc else None
    row: Dict[str, object] = {
        "case": case,
        "fastprune_s": fastprune_s,
        "torch_s": torch_s,
        "fastprune_peak": max(fp["peaks"]) if "peaks" in fp else None,
        "torch_peak": max(tc["peaks"]) if "peaks" in tc else None,
        "error": "; ".join(f"{lib}: {r['error']}" for lib, r in (("fastprune", fp), ("torch", tc)) if "error" in r),
        "exact": check.get("exact"),
        "floor": CASE_FLOORS[case],
        "floor_s": floor_s,
        "floor_ratio": fastprune_s / floor_s if fastprune_s and floor_s else None,
        "torch_floor_ratio": torch_s / floor_s if torch_s and floor_s else None,
    }
    if verdict is None:  # torch did not run: fastprune's own exactness check
        verdict = "exact" if check.get("exact") else ("NOT EXACT" if check else "-")
    elif case in FORWARD_CASES and verdict == "yes" and fp.get("outputs") != tc.get("outputs"):
        verdict = "masks yes, outputs NO"
    row["identical"] = verdict
    return row


def run_benchmark(
    *,
    params: int = 100_000_000,
    model: str = "llama",
    width: Optional[int] = None,
    dtype: str = "float32",
    device: str = "cpu",
    amount: float = 0.5,
    repeat: int = 3,
    cases: Sequence[str] = CASES,
    skip_torch: bool = False,
    seed: int = 0,
    quiet: bool = False,
) -> Tuple[List[Dict[str, object]], Dict[str, object]]:
    """Measure every case of ``cases`` for fastprune and torch, and its floor, each in a fresh process.

    Each floor (:data:`~fastprune.bench.FLOORS`) is measured once, right before
    the first case judged against it (:data:`~fastprune.bench.CASE_FLOORS`),
    by the same worker loop as that case. Torch, or a floor, is skipped (with
    the reason recorded) when its estimated peak does not fit in the memory
    available at that moment.

    Args:
        params: model size in parameters.
        model: ``"llama"`` or ``"square"`` (see :func:`~fastprune.bench.model_shapes`).
        width: hidden size or layer width.
        dtype: a key of :data:`~fastprune.bench.DTYPES`.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        amount: fraction to prune.
        repeat: timed runs per case (the best is reported).
        cases: which of :data:`~fastprune.bench.CASES` to run.
        skip_torch: time fastprune only.
        seed: the model's seed.
        quiet: no progress bar.

    Returns:
        ``(rows, info)`` for :func:`~fastprune.bench.format_table`. Each row
        has ``floor`` (the floor's name), ``floor_s``, ``floor_ratio``
        (``fastprune_s / floor_s``) and ``torch_floor_ratio`` (``torch_s /
        floor_s``), ``None`` where a time is missing; ``info["floors"]`` maps
        each floor measured to ``{"what", "cases", "s", "times"}`` or, when it
        could not be measured, ``{"what", "cases", "skipped"}`` or
        ``{"what", "cases", "error"}``.

    Raises:
        MemoryError: the model itself does not fit in the available memory.

    Example::

        >>> rows, info = run_benchmark(params=1_000_000, repeat=1, cases=["global_l1"])  # doctest: +SKIP
        >>> print(format_table(rows, info))  # doctest: +SKIP
    """
    dev = torch.device(device)
    torch_dtype = DTYPES[dtype]
    shapes = model_shapes(params, model, width)
    numel = model_numel(shapes)
    model_bytes = numel * torch.empty((), dtype=torch_dtype).element_size()
    avail = available_memory(dev)
    if model_bytes > 0.9 * avail:
        raise MemoryError(
            f"the model needs {model_bytes / 2**30:.1f} GiB, only {avail / 2**30:.1f} GiB are available on {dev}"
        )
    tmp = tempfile.mkdtemp(prefix="fastprune-bench-")
    bits = lambda case, lib: os.path.join(tmp, f"{case}-{lib}.bits")  # noqa: E731
    base = {"dtype": dtype, "device": device, "seed": seed, "amount": amount, "repeat": repeat, "shapes": shapes}
    jobs: List[Tuple[str, str]] = [("memcpy", "torch")]
    floor_case: Dict[str, str] = {}  # floor -> the case whose job measures it
    for case in cases:
        if CASE_FLOORS[case] not in floor_case:
            floor_case[CASE_FLOORS[case]] = case
            jobs.append((case, "floor"))
        jobs += [(case, "fastprune"), (case, "torch")]
    results: Dict[Tuple[str, str], Dict[str, object]] = {}
    skipped: Dict[str, str] = {}
    floors: Dict[str, Dict[str, object]] = {
        name: {"what": FLOORS[name].what, "cases": [c for c in cases if CASE_FLOORS[c] == name]}
        for name in floor_case
    }
    try:
        bar = progress_bar(jobs, enabled=not quiet, desc="benchmark", unit="run", file=sys.stderr)
        for case, lib in bar:
            bar.set_postfix_str(f"{case} / {lib}")
            if lib == "floor":
                floor = floors[CASE_FLOORS[case]]
                fits, why = floor_fits(FLOORS[CASE_FLOORS[case]], shapes, torch_dtype, dev)
                if not fits:
                    floor["skipped"] = why
                    continue
                r = run_job(dict(base, lib=lib, case=case, bits=bits(case, lib)))
                if "times" in r:
                    floor.update(s=min(r["times"]), times=r["times"])
                else:
                    floor["error"] = r.get("error", "no result")
                continue
            if lib == "torch" and case != "memcpy":
                fits, why = (False, "--skip-torch") if skip_torch else torch_fits(case, shapes, torch_dtype,
                                                                                  amount, dev)
                if not fits:
                    skipped[case] = why
                    continue
            if case == "forward_bool" and lib == "torch" and "times" in results.get(("forward", "torch"), {}):
                # torch's side of both forward cases is the same run (float masks)
                results[(case, lib)] = results[("forward", "torch")]
                shutil.copyfile(bits("forward", "torch"), bits(case, lib))
                continue
            results[(case, lib)] = run_job(dict(base, lib=lib, case=case, bits=bits(case, lib)))
        bar.close()

        rows = []
        for case in cases:
            fp, tc = results.get((case, "fastprune"), {}), results.get((case, "torch"), {})
            verdict = None
            if "times" in fp and "times" in tc:
                verdict = mask_verdict(bits(case, "fastprune"), bits(case, "torch"), case, shapes, torch_dtype,
                                       dev, seed, fp.get("check", {}))
            rows.append(_row(case, fp, tc, verdict, floors[CASE_FLOORS[case]].get("s")))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    mc = results.get(("memcpy", "torch"), {})
    info = {
        "model": describe_model(shapes, model),
        "numel": numel,
        "model_bytes": model_bytes,
        "dtype": dtype,
        "device": str(dev),
        "amount": amount,
        "repeat": repeat,
        "skipped": skipped,
        "machine": machine_description(dev),
        "torch": torch.__version__,
        "load": os.getloadavg(),
        "memcpy": min(mc["times"]) if "times" in mc else None,
        "floors": floors,
    }
    return rows, info
