"""Quick GPU check of the compiled CUDA ops against fastprune/ops/reference.py.

Runs every op once on small random CUDA tensors (ties, NaN, +-inf, masks,
packed masks, aliasing, non-contiguous views) and compares with the reference
computed on the CPU. Small enough to run under compute-sanitizer:

    compute-sanitizer --tool memcheck python tests/cuda/check_cuda_ops.py

`--device cpu` runs the same checks on the CPU kernels (or the fallback);
`--quick` runs fewer dtypes and shapes (for the slower sanitizer tools).

Exit status 0 when everything matches. Needs the extension built with CUDA
(`pip install --no-build-isolation .` on a machine with nvcc and torch+CUDA).
"""
from __future__ import annotations

import math
import sys

import torch

import fastprune  # noqa: F401  (registers the ops)
from fastprune.ops import reference as ref
from fastprune.ops import build_info

failures = []


def check(name: str, ok: bool, detail: str = "") -> None:
    print(("PASS " if ok else "FAIL ") + name + (f": {detail}" if detail and not ok else ""))
    if not ok:
        failures.append(name)


def same(want: torch.Tensor, got: torch.Tensor) -> bool:
    """Equal values and dtype; NaN matches NaN (payloads may differ by device)."""
    got = got.cpu()
    if want.dtype != got.dtype or want.shape != got.shape:
        return False
    if want.dtype.is_floating_point:
        return bool(((want == got) | (want.isnan() & got.isnan())).all())
    return torch.equal(want, got)


def scores(shape, dtype, gen, distinct=20, specials=True):
    if dtype.is_floating_point:
        pool = torch.rand(distinct, generator=gen, dtype=torch.float64) + 0.1
        x = pool[torch.randint(0, distinct, shape, generator=gen)]
        x = x * (torch.randint(0, 2, shape, generator=gen) * 2 - 1)
        if specials and x.numel() >= 10:
            flat = x.view(-1)
            flat[0] = math.nan
            flat[1] = math.inf
            flat[2] = -math.inf
            flat[3] = -0.0
            flat[4] = 0.0
            flat[5] = math.nan
        return x.to(dtype)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=gen).bool()
    info = torch.iinfo(dtype)
    x = torch.randint(-distinct, distinct + 1, shape, generator=gen, dtype=torch.int64)
    if dtype == torch.uint8:
        x = x.abs()
    if specials and x.numel() >= 4:
        x.view(-1)[0] = info.min
        x.view(-1)[1] = info.max
    return x.to(dtype)


def main(argv) -> int:
    # `--device cpu` runs the same checks on the CPU ops (a self-test of this script).
    dev = torch.device(argv[argv.index("--device") + 1] if "--device" in argv else "cuda")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            print("no CUDA device: nothing checked")
            return 0
        info = build_info()
        if not info.get("cuda"):
            print(f"the extension has no CUDA kernels (build_info: {info}); rebuild on a CUDA machine")
            return 1
    gen = torch.Generator().manual_seed(0)
    quick = "--quick" in argv

    def pick(full, few):
        return few if quick else full

    # kselect_: dtypes, masks, largest, packed, aliasing.
    sizes = pick([(0,), (7,), (33, 65), (16385,), (3, 5, 7)], [(0,), (33, 65), (16385,)])
    for dtype in pick([torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int32, torch.int8],
                      [torch.float32, torch.bfloat16, torch.int8]):
        for largest in (False, True):
            for packed in (False, True):
                for exclude in (True, False):
                    ss = [scores(s, dtype, gen) for s in sizes]
                    ms = []
                    for i, s in enumerate(ss):
                        if i % 2:
                            ms.append(None)
                            continue
                        m = torch.rand(s.shape, generator=gen) < 0.7
                        ms.append(ref.pack_mask(m) if packed else m.to(torch.float32))
                    total = sum(s.numel() for s in ss)
                    selectable = sum(
                        (ref.unpack_mask(m, s.numel()).sum().item() if packed else (m != 0).sum().item())
                        if m is not None
                        else s.numel()
                        for s, m in zip(ss, ms)
                    ) if exclude else total
                    k = int(selectable * 0.4)
                    want = ref.kselect(ss, ms, k, largest, exclude, packed, dtypes=[torch.bool] * len(ss))
                    got = fastprune.ops.kselect(
                        [s.to(dev, copy=True) for s in ss],
                        [m.to(dev, copy=True) if m is not None else None for m in ms],
                        k, largest, exclude, packed, dtypes=[torch.bool] * len(ss),
                    )
                    ok = all(torch.equal(w, g.cpu()) for w, g in zip(want, got))
                    check(f"kselect {dtype} largest={largest} packed={packed} exclude={exclude}", ok)
    # out aliasing the mask, non-contiguous score and out.
    s = scores((64, 96), torch.float32, gen).t()
    m = (torch.rand(96, 64, generator=gen) < 0.6).to(torch.float32)
    want = ref.kselect([s], [m], 1000, False, True, False)
    md = m.to(dev, copy=True)
    torch.ops.fastprune.kselect_([s.to(dev, copy=True)], [md], [md], 1000, False, True, False)
    check("kselect out aliases mask", torch.equal(want[0], md.cpu()))
    out_nc = torch.empty(64, 96, device=dev, dtype=torch.float16).t()
    torch.ops.fastprune.kselect_([s.to(dev, copy=True)], [m.to(dev, copy=True)], [out_nc], 1000, False, True, False)
    check("kselect non-contiguous out", torch.equal(want[0].to(torch.float16), out_nc.cpu()))
    # applied = values * new mask (the pruned weights), against the reference, packed and not.
    for packed in (False, True):
        w = torch.randn(96, 64, generator=gen)
        w[0, :3] = torch.tensor([float("inf"), float("nan"), -2.0])
        mk = ref.pack_mask(m != 0) if packed else m
        outs = [torch.empty(ref.packed_numel(w.numel()), dtype=torch.uint8) if packed else torch.empty_like(w)]
        want_out, want_applied = [o.clone() for o in outs], [torch.empty_like(w)]
        ref.kselect_([w], [mk], want_out, -1, False, True, packed, 0.4, [w], want_applied)
        got_out = [o.to(dev) for o in outs]
        got_applied = [torch.empty_like(w, device=dev)]
        wd = w.to(dev)
        torch.ops.fastprune.kselect_([wd], [mk.to(dev)], got_out, -1, False, True, packed, 0.4, [wd], got_applied)
        g, e = got_applied[0].cpu(), want_applied[0]
        same = bool((((g == e) | (g.isnan() & e.isnan())) & (g.signbit() == e.signbit()) | g.isnan()).all())
        check(f"kselect applied packed={packed}", torch.equal(got_out[0].cpu(), want_out[0]) and same)
    try:
        fastprune.ops.kselect([s.to(dev, copy=True)], [m.to(dev, copy=True)], int((m != 0).sum()) + 1)
        check("kselect k > selectable raises ValueError", False, "no error")
    except ValueError:
        check("kselect k > selectable raises ValueError", True)

    # mask_mul / mask_mul_ / apply_packed_mask_.
    for dtype in pick([torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int32],
                      [torch.float32, torch.bfloat16]):
        for mdtype in pick([torch.bool, torch.float32, torch.uint8, dtype], [torch.bool, dtype]):
            x = scores((257, 33), dtype, gen, distinct=1000)
            mk = scores((257, 33), mdtype, gen, distinct=2, specials=False)
            want = ref.mask_mul(x, mk)
            got = torch.ops.fastprune.mask_mul(x.to(dev, copy=True), mk.to(dev, copy=True))
            check(f"mask_mul {dtype} x {mdtype}", same(want, got))
        xs = [scores((n,), dtype, gen, distinct=1000) for n in [0, 5, 1000, 70001] + [17] * 9]
        ms = [torch.rand(x.shape, generator=gen) < 0.5 for x in xs]
        want = [x.clone() for x in xs]
        ref.mask_mul_(want, ms)
        got = [x.to(dev, copy=True) for x in xs]
        torch.ops.fastprune.mask_mul_(got, [m.to(dev, copy=True) for m in ms])
        check(f"mask_mul_ {dtype} x13", all(same(w, g) for w, g in zip(want, got)))
        packed = [ref.pack_mask(m) for m in ms]
        want = [x.clone() for x in xs]
        ref.apply_packed_mask_(want, packed)
        got = [x.to(dev, copy=True) for x in xs]
        torch.ops.fastprune.apply_packed_mask_(got, [p.to(dev, copy=True) for p in packed])
        check(f"apply_packed_mask_ {dtype} x13", all(same(w, g) for w, g in zip(want, got)))

    # channel_norms.
    for dtype in pick([torch.float32, torch.float16, torch.bfloat16, torch.float64], [torch.float32, torch.bfloat16]):
        for shape in pick([(5,), (64, 3, 3, 3), (300, 7), (2, 3000), (1, 100000)], [(64, 3, 3, 3), (2, 3000)]):
            t = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
            for dim in range(len(shape)):
                for p in pick([0.0, 1.0, 2.0, math.inf, -math.inf, 3.0, 0.5], [0.0, 2.0, math.inf, 3.0]):
                    want = ref.channel_norms(t, dim, p)
                    got = torch.ops.fastprune.channel_norms(t.to(dev, copy=True), dim, p).cpu()
                    tol = 1e-10 if dtype == torch.float64 else 1e-4
                    ok = want.dtype == got.dtype and torch.allclose(want, got, rtol=tol, atol=tol, equal_nan=True)
                    check(f"channel_norms {dtype} {shape} dim={dim} p={p}", ok,
                          f"max diff {(want - got).abs().max().item() if want.numel() else 0}")

    if dev.type == "cuda":
        torch.cuda.synchronize()
    print(f"{len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
