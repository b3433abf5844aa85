"""The compiled kernels (torch.ops.fastprune.*) against fastprune.ops.reference.

Masks must be identical bit for bit, mask_mul results identical (NaN payloads
aside), norms allclose. Everything here is skipped when the compiled extension
is not loaded (e.g. FASTPRUNE_NO_EXT=1), except the schema test, which checks
whichever implementation is registered.
"""
import itertools
import math
import zlib

import pytest
import torch

import fastprune
from fastprune.ops import reference as ref

from conftest import DEVICES, EXTENSION as EXT, needs_ext

ops = torch.ops.fastprune

FLOATS = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
INTS = [torch.int32, torch.int8, torch.int64, torch.int16, torch.uint8]
SCORE_DTYPES = FLOATS + INTS + [torch.bool]
OUT_DTYPES = [torch.bool, torch.float32, torch.uint8, torch.float16, torch.bfloat16, torch.int64, torch.float64,
              torch.int8, torch.int32]



# ----------------------------------------------------------------------------- data

def scores_tensor(shape, dtype, gen, ties=True):
    """Scores drawn mostly from a few levels (heavy ties), with specials mixed in."""
    n = math.prod(shape)
    if dtype == torch.bool:
        return (torch.rand(shape, generator=gen) < 0.5)
    if dtype.is_floating_point:
        levels = torch.tensor([0.0, -0.0, 0.5, -0.5, 1.0, -1.0, 3.0, 1e-3, float("inf"), float("-inf"),
                               float("nan"), -float("nan")], dtype=torch.float64)
        cont = torch.randn(n, generator=gen, dtype=torch.float64)
        if ties:
            pick = levels[torch.randint(0, len(levels), (n,), generator=gen)]
            use_level = torch.rand(n, generator=gen) < 0.6
            x = torch.where(use_level, pick, cont)
        else:
            x = cont
        return x.to(dtype).reshape(shape)
    info = torch.iinfo(dtype)
    if ties:
        levels = torch.tensor([v for v in (0, 1, -1, 5, -5, info.min, info.max, info.min + 1)
                               if info.min <= v <= info.max], dtype=torch.int64)
        pick = levels[torch.randint(0, len(levels), (n,), generator=gen)]
        rnd = torch.randint(max(info.min, -1000), min(info.max, 1000) + 1, (n,), generator=gen)
        x = torch.where(torch.rand(n, generator=gen) < 0.6, pick, rnd)
    else:
        x = torch.randperm(n, generator=gen) - n // 2
        if dtype == torch.uint8:
            x = x.abs() % 256
    return x.to(dtype).reshape(shape)


def mask_tensor(shape, dtype, gen):
    """An existing mask (~30% pruned) in `dtype`; float masks also hold -0.0 (pruned) and NaN/0.5 (kept)."""
    keep = torch.rand(shape, generator=gen) >= 0.3
    if dtype == torch.bool:
        return keep
    if dtype.is_floating_point:
        m = keep.to(torch.float64)
        alt = torch.rand(shape, generator=gen)
        m = torch.where(keep & (alt < 0.1), torch.full_like(m, float("nan")), m)
        m = torch.where(keep & (alt > 0.9), torch.full_like(m, 0.5), m)
        m = torch.where(~keep & (alt < 0.5), torch.full_like(m, -0.0), m)
        return m.to(dtype)
    return keep.to(dtype) * (2 if dtype != torch.bool else 1)


def noncontig(t):
    """A non-contiguous tensor equal to `t`."""
    if t.dim() >= 2:
        return t.transpose(0, 1).clone(memory_format=torch.contiguous_format).transpose(0, 1)
    big = torch.empty(t.numel() * 2, dtype=t.dtype, device=t.device)
    view = big[::2]
    view.copy_(t.reshape(-1))
    return view.reshape(t.shape) if t.numel() else view


def k_values(candidates):
    return sorted({0, min(1, candidates), candidates // 3, candidates // 2, max(candidates - 1, 0), candidates})


def candidates_of(scores, masks, exclude_masked, packed):
    total = 0
    for s, m in zip(scores, masks):
        if m is None or not exclude_masked:
            total += s.numel()
        elif packed:
            total += int(ref.unpack_mask(m, s.numel()).sum())
        else:
            total += int((m != 0).sum())
    return total


def run_both(scores, masks, out_dtypes, k, largest, exclude_masked, packed, out_layout="contig"):
    """Runs the op and the reference on fresh outputs; returns both lists."""
    def outs():
        result = []
        for s, dt in zip(scores, out_dtypes):
            if packed:
                o = torch.full((ref.packed_numel(s.numel()),), 0xAB, dtype=torch.uint8, device=s.device)
            else:
                o = torch.full(s.shape, 7, dtype=dt, device=s.device) if dt != torch.bool else \
                    torch.ones(s.shape, dtype=dt, device=s.device)
            result.append(noncontig(o) if out_layout == "noncontig" else o)
        return result

    got, want = outs(), outs()
    ops.kselect_(scores, masks, got, k, largest, exclude_masked, packed)
    ref.kselect_(scores, masks, want, k, largest, exclude_masked, packed)
    return got, want


def assert_masks_equal(got, want, context):
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.dtype == w.dtype and g.shape == w.shape, context
        assert torch.equal(g, w), f"{context}: out[{i}] differs in {int((g != w).sum())} units"


# ----------------------------------------------------------------------------- kselect_

# The CPU kernel selects directly (nth_element over all keys) on small inputs,
# and on larger ones through a sampled bracket (from 2^20 units) or the radix
# passes alone; FASTPRUNE_KSELECT_DIRECT_MAX and FASTPRUNE_KSELECT_SAMPLE_MIN move
# the boundaries so that every path runs on the same inputs (the sampled bracket
# needs 32 sampled units: a few hundred units).
KSELECT_PATHS = {
    "direct": {"FASTPRUNE_KSELECT_DIRECT_MAX": str(2**62), "FASTPRUNE_KSELECT_SAMPLE_MIN": str(2**62)},
    "radix": {"FASTPRUNE_KSELECT_DIRECT_MAX": "0", "FASTPRUNE_KSELECT_SAMPLE_MIN": str(2**62)},
    "sampled": {"FASTPRUNE_KSELECT_DIRECT_MAX": "0", "FASTPRUNE_KSELECT_SAMPLE_MIN": "0"},
}


def use_kselect_path(monkeypatch, path):
    for name, value in KSELECT_PATHS[path].items():
        monkeypatch.setenv(name, value)


@pytest.fixture(params=list(KSELECT_PATHS))
def kselect_path(request, monkeypatch):
    use_kselect_path(monkeypatch, request.param)
    return request.param

SHAPE_CASES = {
    "one": [(37,)],
    "several": [(16, 33), (5,), (3, 4, 5), (0,), (200,)],
    "empty": [(0,), (0, 3)],
}


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", SCORE_DTYPES, ids=str)
@pytest.mark.parametrize("case", list(SHAPE_CASES))
@pytest.mark.parametrize("largest", [False, True])
def test_kselect_matches_reference(device, dtype, case, largest, kselect_path):
    gen = torch.Generator().manual_seed(zlib.crc32(f"{dtype}{case}{largest}".encode()))
    shapes = SHAPE_CASES[case]
    scores = [scores_tensor(s, dtype, gen).to(device) for s in shapes]
    mask_dtypes = [None, torch.bool, torch.float32, torch.uint8, torch.float16, torch.bfloat16, torch.int64]
    for exclude_masked, packed in itertools.product([True, False], [False, True]):
        masks = []
        for i, s in enumerate(scores):
            mdt = mask_dtypes[(i + int(exclude_masked)) % len(mask_dtypes)]
            if mdt is None:
                masks.append(None)
                continue
            m = mask_tensor(s.shape, mdt, gen).to(device)
            masks.append(ref.pack_mask(m) if packed else m)
        out_dtypes = [OUT_DTYPES[(i + len(shapes)) % len(OUT_DTYPES)] for i in range(len(scores))]
        cand = candidates_of(scores, masks, exclude_masked, packed)
        for k in k_values(cand):
            got, want = run_both(scores, masks, out_dtypes, k, largest, exclude_masked, packed)
            assert_masks_equal(got, want, f"k={k} exclude_masked={exclude_masked} packed={packed}")


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int32,
                                   torch.int8, torch.bool], ids=str)
@pytest.mark.parametrize("largest", [False, True])
def test_kselect_multichunk(device, dtype, largest):
    """More than one 64K-unit chunk per tensor: heavy ties straddle chunk boundaries."""
    gen = torch.Generator().manual_seed(zlib.crc32(f"multi{dtype}{largest}".encode()))
    scores = [scores_tensor(s, dtype, gen).to(device) for s in [(70001,), (7,), (300, 230)]]
    modes = [(True, False, [torch.float32, torch.bool, torch.bfloat16]), (False, True, None)]
    for exclude_masked, packed, out_dtypes in modes:
        masks = [mask_tensor(s.shape, torch.bool, gen).to(device) for s in scores]
        masks[1] = None
        if packed:
            masks = [None if m is None else ref.pack_mask(m) for m in masks]
        cand = candidates_of(scores, masks, exclude_masked, packed)
        for k in (cand // 2, cand - 1):
            got, want = run_both(scores, masks, out_dtypes or [None] * 3, k, largest, exclude_masked, packed)
            assert_masks_equal(got, want, f"k={k} exclude_masked={exclude_masked} packed={packed}")


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int32, torch.int64], ids=str)
@pytest.mark.parametrize("largest", [False, True])
def test_kselect_cpu_fixup_path(monkeypatch, dtype, largest):
    """The CPU kernel's histogram-and-fix-up path, normally only taken when the
    threshold's bin is huge, forced on small inputs."""
    monkeypatch.setenv("FASTPRUNE_KSELECT_LIST_CAP", "0")
    gen = torch.Generator().manual_seed(21)
    scores = [scores_tensor(s, dtype, gen) for s in [(70001,), (7,), (300, 230)]]
    for exclude_masked, packed in [(True, False), (False, True)]:
        masks = [mask_tensor(s.shape, torch.bool, gen) for s in scores]
        if packed:
            masks = [ref.pack_mask(m) for m in masks]
        cand = candidates_of(scores, masks, exclude_masked, packed)
        for k in (1, cand // 2, cand):
            got, want = run_both(scores, masks, [torch.float32, torch.bool, torch.int8], k, largest,
                                 exclude_masked, packed)
            assert_masks_equal(got, want, f"k={k} exclude_masked={exclude_masked} packed={packed}")


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.int32, torch.float64], ids=str)
def test_kselect_noncontiguous(device, dtype):
    gen = torch.Generator().manual_seed(3)
    scores = [noncontig(scores_tensor(s, dtype, gen).to(device)) for s in [(40, 30), (17,), (300, 301)]]
    masks = [noncontig(mask_tensor(s.shape, torch.float32, gen).to(device)) for s in scores]
    assert not any(s.is_contiguous() for s in scores)
    for exclude_masked in (True, False):
        cand = candidates_of(scores, masks, exclude_masked, False)
        for k in k_values(cand):
            got, want = run_both(scores, masks, [torch.float32, torch.bool, torch.float16], k, False,
                                 exclude_masked, False, out_layout="noncontig")
            assert not got[0].is_contiguous()
            assert_masks_equal(got, want, f"k={k} exclude_masked={exclude_masked}")


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("exclude_masked", [True, False])
@pytest.mark.parametrize("layout", ["contig", "noncontig"])
def test_kselect_out_aliases_masks(device, packed, exclude_masked, layout):
    gen = torch.Generator().manual_seed(11)
    scores = [scores_tensor(s, torch.float32, gen).to(device) for s in [(64, 33), (5,), (66000,)]]
    for mdt in ([torch.uint8] if packed else [torch.float32, torch.bool, torch.float16]):
        base = [mask_tensor(s.shape, torch.bool, gen).to(device) for s in scores]
        if packed:
            base = [ref.pack_mask(m) for m in base]
            if layout == "noncontig":
                continue  # packed masks are 1-D bytes; covered by the contiguous case
        else:
            base = [m.to(mdt) for m in base]
            if layout == "noncontig":
                base = [noncontig(m) for m in base]
        cand = candidates_of(scores, base, exclude_masked, packed)
        for k in (0, 1, cand // 2, cand):
            want = [m.clone() for m in base]
            ref.kselect_(scores, [m.clone() for m in base], want, k, False, exclude_masked, packed)
            got = [m.clone() if layout == "contig" else noncontig(m) for m in base]
            ops.kselect_(scores, got, got, k, False, exclude_masked, packed)
            assert_masks_equal(got, want, f"k={k} masks dtype {mdt}")


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "dtypes",
    [
        (torch.float16, torch.float32),
        (torch.bfloat16, torch.float16),
        (torch.int8, torch.float32),
        (torch.int64, torch.float64),
        (torch.int32, torch.int8, torch.bool),
        (torch.int64, torch.int16),
        (torch.bool, torch.float16),
        (torch.int32, torch.float16),
        (torch.float64, torch.bfloat16, torch.uint8),
    ],
    ids=lambda d: "-".join(str(x).replace("torch.", "") for x in d),
)
def test_kselect_mixed_dtypes(device, dtypes):
    gen = torch.Generator().manual_seed(5)
    scores = [scores_tensor((23 + 7 * i, 9), dt, gen).to(device) for i, dt in enumerate(dtypes)]
    n = sum(s.numel() for s in scores)
    for largest in (False, True):
        for k in k_values(n):
            got, want = run_both(scores, [None] * len(scores), [torch.float32] * len(scores), k, largest, True,
                                 False)
            assert_masks_equal(got, want, f"k={k} largest={largest}")


@needs_ext
@pytest.mark.parametrize("dtype,largest", [(torch.float32, False), (torch.bfloat16, True), (torch.float64, True),
                                           (torch.int32, False), (torch.int64, True), (torch.uint8, False),
                                           (torch.bool, True)], ids=str)
def test_kselect_cpu_paths_agree(monkeypatch, dtype, largest):
    """Direct and radix select give the reference's masks on the same inputs, at
    sizes around the default boundary between them and across several tensors."""
    gen = torch.Generator().manual_seed(zlib.crc32(f"paths{dtype}{largest}".encode()))
    cases = [[(4095,)], [(4097,)], [(64, 64), (1,), (0,), (3, 11)], [(9000,), (77,)]]
    for shapes in cases:
        scores = [scores_tensor(s, dtype, gen, ties=len(shapes) % 2 == 1) for s in shapes]
        for exclude_masked, packed in [(True, False), (False, True)]:
            masks = [mask_tensor(s.shape, torch.bool, gen) for s in scores]
            masks[-1] = None
            if packed:
                masks = [None if m is None else ref.pack_mask(m) for m in masks]
            out_dtypes = [torch.float32, torch.bool, torch.int8, torch.half][: len(scores)]
            cand = candidates_of(scores, masks, exclude_masked, packed)
            for k in (0, 1, cand // 2, cand):
                want = None
                for path in KSELECT_PATHS:
                    use_kselect_path(monkeypatch, path)
                    if want is None:
                        got, want = run_both(scores, masks, out_dtypes, k, largest, exclude_masked, packed)
                    else:
                        got = [torch.empty_like(w) for w in want]
                        ops.kselect_(scores, masks, got, k, largest, exclude_masked, packed)
                    assert_masks_equal(got, want, f"{path}: {shapes} k={k} exclude_masked={exclude_masked}")


def kselect_paths_taken():
    from fastprune import _C

    return dict(_C.kselect_cpu_paths())


SAMPLED_CASES = {
    # name: (score dtypes, mask dtype or None, ties). 16-bit keys (fp16/bf16 or
    # small integers only) never take the bracket: their one radix pass is exact.
    "fp16 masks": ([torch.float16] * 3, torch.float16, True),
    "bf16 masks": ([torch.bfloat16] * 3, torch.bfloat16, True),
    "fp32": ([torch.float32] * 3, None, False),
    "fp32 ties nan": ([torch.float32] * 3, None, True),
    "fp32 masks": ([torch.float32] * 3, torch.float32, False),
    "fp64 masks ties": ([torch.float64] * 2, torch.float64, True),
    "mixed fp16 fp32": ([torch.float16, torch.float32, torch.bfloat16], torch.bool, False),
    "int32": ([torch.int32] * 2, torch.uint8, True),
    "int64 fp64": ([torch.int64, torch.float64], None, True),
}


@needs_ext
@pytest.mark.parametrize("case", list(SAMPLED_CASES))
@pytest.mark.parametrize("largest", [False, True])
@pytest.mark.parametrize("margin", ["default", "0"])
def test_kselect_sampled_bracket(monkeypatch, case, largest, margin):
    """The sampled bracket (one read pass, then the radix select's write) gives the
    reference's masks, by k and by fraction, with masks excluding units or not, and
    when its bracket misses (margin 0: the threshold almost never falls inside), in
    which case the radix passes run after it."""
    use_kselect_path(monkeypatch, "sampled")
    if margin != "default":
        monkeypatch.setenv("FASTPRUNE_KSELECT_SAMPLE_MARGIN", margin)
    dtypes, mask_dtype, ties = SAMPLED_CASES[case]
    gen = torch.Generator().manual_seed(zlib.crc32(f"sampled{case}{largest}{margin}".encode()))
    shapes = [(300, 230), (7,), (70001,)][: len(dtypes)]
    scores = [scores_tensor(s, dt, gen, ties=ties) for s, dt in zip(shapes, dtypes)]
    before = kselect_paths_taken()
    for exclude_masked, packed in [(True, False), (False, False), (True, True)]:
        masks = [None if mask_dtype is None else mask_tensor(s.shape, mask_dtype, gen) for s in scores]
        if packed:
            masks = [None if m is None else ref.pack_mask(m != 0) for m in masks]
        out_dtypes = [dtypes[0], torch.bool, torch.float32]
        cand = candidates_of(scores, masks, exclude_masked, packed)
        for k in (1, cand // 3, cand // 2, cand - 1, cand):
            got, want = run_both(scores, masks, out_dtypes, k, largest, exclude_masked, packed)
            assert_masks_equal(got, want, f"k={k} exclude_masked={exclude_masked} packed={packed}")
        for fraction in (0.5, 0.9, 0.01):
            got = [torch.full_like(g, 3) for g in want]
            ref_out = [torch.empty_like(g) for g in want]
            ops.kselect_(scores, masks, got, -1, largest, exclude_masked, packed, fraction)
            ref.kselect_(scores, masks, ref_out, -1, largest, exclude_masked, packed, fraction)
            assert_masks_equal(got, ref_out, f"fraction={fraction} exclude_masked={exclude_masked} packed={packed}")
    after = kselect_paths_taken()
    if case in ("fp16 masks", "bf16 masks"):
        assert after["radix"] > before["radix"] and after["sampled"] == before["sampled"], (before, after)
    elif margin == "default":
        assert after["sampled"] > before["sampled"], (before, after)
    else:
        # A one-key bracket misses on nearly distinct keys; with heavy ties
        # (or fp16/bf16 values) it still holds the threshold often.
        keys = torch.cat([s.double().abs().flatten() for s in scores])
        if torch.unique(keys).numel() > 0.9 * keys.numel():
            assert after["sampled_missed"] > before["sampled_missed"], (before, after)


@needs_ext
def test_kselect_sampled_bracket_in_place_and_errors(monkeypatch):
    """out written over its own mask (iterated pruning in place), and a k larger
    than the selectable units: refused before any output is written."""
    use_kselect_path(monkeypatch, "sampled")
    gen = torch.Generator().manual_seed(99)
    scores = [scores_tensor((400, 300), torch.float32, gen, ties=False), scores_tensor((5000,), torch.float32, gen)]
    base = [mask_tensor(s.shape, torch.float32, gen) for s in scores]
    cand = candidates_of(scores, base, True, False)
    for k in (1, cand // 2, cand):
        want = [m.clone() for m in base]
        ref.kselect_(scores, [m.clone() for m in base], want, k, False, True, False)
        got = [m.clone() for m in base]
        ops.kselect_(scores, got, got, k, False, True, False)
        assert_masks_equal(got, want, f"in place k={k}")
    got = [m.clone() for m in base]
    ops.kselect_(scores, got, got, -1, False, True, False, 0.4)
    want = [m.clone() for m in base]
    ref.kselect_(scores, [m.clone() for m in base], want, -1, False, True, False, 0.4)
    assert_masks_equal(got, want, "in place fraction")
    before = kselect_paths_taken()
    out = [torch.full_like(s, 5.0) for s in scores]
    with pytest.raises(ValueError, match=rf"k={cand + 1} .*selectable units \({cand}\)"):
        ops.kselect_(scores, base, out, cand + 1, False, True, False)
    assert all(bool((o == 5).all()) for o in out)
    assert kselect_paths_taken()["sampled"] == before["sampled"]


APPLIED_CASES = {
    # name: (score dtypes, value dtypes, out dtypes, mask dtype or None)
    "weights fp32": ([torch.float32] * 3, None, [torch.float32] * 3, torch.float32),
    "weights fp64": ([torch.float64] * 3, None, [torch.float64] * 3, None),
    "weights bf16": ([torch.bfloat16] * 3, None, [torch.bfloat16] * 3, torch.bfloat16),
    "scores apart": ([torch.float32] * 3, [torch.float16, torch.float32, torch.bfloat16],
                     [torch.bool, torch.float32, torch.uint8], torch.bool),
    "int and bool values": ([torch.int32] * 3, [torch.int8, torch.bool, torch.int64], [torch.float32] * 3, None),
}


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(APPLIED_CASES))
def test_kselect_applied(device, case, kselect_path):
    """applied[i] = values[i] * out[i] in values' dtype, written with the masks:
    equal to the reference (and to values * mask) on every path, with the
    negative, inf and NaN values whose products are -0.0 and NaN, by k and by
    fraction, packed or not, with a non-contiguous applied."""
    score_dtypes, value_dtypes, out_dtypes, mask_dtype = APPLIED_CASES[case]
    gen = torch.Generator().manual_seed(zlib.crc32(f"applied{case}{kselect_path}".encode()))
    shapes = [(300, 230), (7,), (70001,)]
    scores = [scores_tensor(s, dt, gen, ties=False).to(device) for s, dt in zip(shapes, score_dtypes)]
    if value_dtypes is None:
        values = scores  # the usual call: the weights are the scores
    else:
        values = [scores_tensor(s, dt, gen).to(device) for s, dt in zip(shapes, value_dtypes)]
    for exclude_masked, packed in [(True, False), (False, False), (True, True)]:
        masks = [None if mask_dtype is None else mask_tensor(s.shape, mask_dtype, gen).to(device) for s in scores]
        if packed:
            masks = [None if m is None else ref.pack_mask(m != 0) for m in masks]
        cand = candidates_of(scores, masks, exclude_masked, packed)
        for k, fraction in [(cand // 2, None), (0, None), (cand, None), (-1, 0.3)]:
            def fresh():
                if packed:
                    outs = [torch.empty(ref.packed_numel(s.numel()), dtype=torch.uint8, device=device) for s in scores]
                else:
                    outs = [torch.empty(s.shape, dtype=dt, device=device) for s, dt in zip(scores, out_dtypes)]
                applied = [torch.full_like(v, 7) for v in values]
                applied[0] = noncontig(applied[0])
                return outs, applied

            got, got_applied = fresh()
            want, want_applied = fresh()
            ops.kselect_(scores, masks, got, k, False, exclude_masked, packed, fraction, values, got_applied)
            ref.kselect_(scores, masks, want, k, False, exclude_masked, packed, fraction, values, want_applied)
            context = f"k={k} fraction={fraction} exclude_masked={exclude_masked} packed={packed}"
            assert_masks_equal(got, want, context)
            for i, (g, w, v, o, s) in enumerate(zip(got_applied, want_applied, values, got, scores)):
                keep = ref.unpack_mask(o, s.numel()) if packed else o.reshape(-1) != 0
                plain = (v.reshape(-1) * keep.to(v.dtype)).reshape(v.shape)
                for other in (w, plain):
                    assert g.dtype == other.dtype and g.shape == other.shape, context
                    # bit for bit (NaN payloads aside): -0.0 and NaN products included
                    same = (g == other) | (g.isnan() & other.isnan()) if g.is_floating_point() else g == other
                    assert bool(same.all()), f"{context}: applied[{i}] differs in {int((~same).sum())} units"
                    if g.is_floating_point():
                        assert torch.equal(g.signbit() & ~g.isnan(), other.signbit() & ~other.isnan()), context


@needs_ext
def test_kselect_applied_errors_change_nothing():
    w = [torch.randn(300, 20), torch.randn(50)]
    out = [torch.full_like(t, 5.0) for t in w]
    applied = [torch.full_like(t, 5.0) for t in w]

    def untouched():
        return all(bool((t == 5).all()) for t in out + applied)

    cases = [
        (dict(values=w), ValueError, "both values and applied"),
        (dict(values=w[:1], applied=applied[:1]), ValueError, "length of scores"),
        (dict(values=w, applied=[applied[0], torch.empty(49)]), ValueError, r"applied\[1\] must have 50 elements"),
        (dict(values=w, applied=[applied[0], applied[1].double()]), TypeError, r"applied\[1\] must have the dtype"),
        (dict(values=[w[0], torch.randn(51)], applied=applied), ValueError, r"values\[1\] must have 50 elements"),
        (dict(values=w, applied=[w[0], applied[1]]), ValueError, r"applied\[0\] shares memory"),
        (dict(values=w, applied=[out[0], applied[1]]), ValueError, r"applied\[0\] shares memory"),
        (dict(values=w, applied=[applied[0], applied[0].view(-1)[:50]]), ValueError, r"shares memory"),
    ]
    for kwargs, exc, message in cases:
        for impl in (fastprune.ops.kselect_, ref.kselect_):
            with pytest.raises(exc, match=message):
                if impl is ref.kselect_:
                    impl(w, [None, None], out, 10, False, True, False, None, kwargs.get("values"),
                         kwargs.get("applied"))
                else:
                    impl(w, None, out, 10, **kwargs)
            assert untouched(), (kwargs, impl)


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
def test_kselect_int_extremes(device, kselect_path):
    """|INT_MIN| ranks highest; int64's minimum ties with its maximum, as in the reference."""
    for dtype in (torch.int8, torch.int16, torch.int32, torch.int64):
        info = torch.iinfo(dtype)
        vals = torch.tensor([info.min, info.max, -info.max, 0, info.min, -1, 1, info.max], dtype=dtype,
                            device=device)
        for k in range(vals.numel() + 1):
            for largest in (False, True):
                got, want = run_both([vals], [None], [torch.bool], k, largest, True, False)
                assert_masks_equal(got, want, f"{dtype} k={k} largest={largest}")


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_kselect_tie_free_matches_topk(device, dtype):
    """On distinct finite values the selection is exactly torch.topk's."""
    x = torch.randperm(5000, generator=torch.Generator().manual_seed(1)).to(torch.float64) - 2500.5
    if dtype in (torch.float16, torch.bfloat16):
        x = x / 64  # distinct and exactly representable with 8 significant bits: use fewer values
        x = x[:200]
    x = x.to(dtype).to(device)
    k = x.numel() // 3
    out = torch.empty(x.shape, dtype=torch.bool, device=device)
    ops.kselect_([x], [None], [out], k, False, True, False)
    pruned = torch.topk(x.abs().to(torch.float64), k, largest=False).indices
    expected = torch.ones_like(out)
    expected[pruned] = False
    assert torch.equal(out, expected)


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
def test_kselect_nan_ranks_above_inf(device, kselect_path):
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 1.0, -float("nan"), 0.0, -0.0], device=device)
    out = torch.empty(7, dtype=torch.bool, device=device)
    ops.kselect_([x], [None], [out], 5, False, True, False)
    # keeps the two NaNs; among the rest 0.0 (index 5) and -0.0 (index 6) tie, both selected
    assert out.tolist() == [True, False, False, False, True, False, False]
    ops.kselect_([x], [None], [out], 2, True, True, False)
    assert out.tolist() == [False, True, True, True, False, True, True]


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
def test_kselect_deterministic_across_threads(device):
    gen = torch.Generator().manual_seed(9)
    scores = [scores_tensor(s, torch.float32, gen).to(device) for s in [(400, 600), (70000,)]]
    k = sum(s.numel() for s in scores) // 2
    results = []
    old = torch.get_num_threads()
    try:
        for threads in (1, max(2, old)):
            torch.set_num_threads(threads)
            out = [torch.empty(s.shape, dtype=torch.bool, device=device) for s in scores]
            ops.kselect_(scores, [None, None], out, k, False, True, False)
            results.append(out)
    finally:
        torch.set_num_threads(old)
    assert_masks_equal(results[0], results[1], "1 thread vs many")


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
def test_kselect_errors_leave_out_untouched(device, kselect_path):
    s = [torch.randn(10, device=device), torch.randn(4, 3, device=device)]
    masks = [torch.zeros(10, device=device), None]
    out = [torch.full((10,), 5.0, device=device), torch.full((4, 3), 5.0, device=device)]

    def untouched():
        return all(bool((o == 5).all()) for o in out)

    with pytest.raises(ValueError, match=r"k=13 .*selectable units \(12\)"):
        ops.kselect_(s, masks, out, 13, False, True, False)
    assert untouched()
    with pytest.raises(ValueError, match="k=-1"):
        ops.kselect_(s, masks, out, -1, False, True, False)
    with pytest.raises(ValueError, match="same length"):
        ops.kselect_(s, masks[:1], out, 1, False, True, False)
    with pytest.raises(ValueError, match=r"out\[1\] must have 12 elements, got 11"):
        ops.kselect_(s, masks, [out[0], torch.empty(11, device=device)], 1, False, True, False)
    assert untouched()
    with pytest.raises(ValueError, match=r"masks\[0\] must have 10 elements, got 9"):
        ops.kselect_(s, [torch.ones(9, device=device), None], out, 1, False, True, False)
    with pytest.raises(ValueError, match=r"out\[0\] must have 2 bytes"):
        ops.kselect_(s, [None, None], [torch.empty(10, dtype=torch.uint8, device=device),
                                       torch.empty(2, dtype=torch.uint8, device=device)], 1, False, True, True)
    with pytest.raises(TypeError, match=r"out\[0\] must be uint8 in packed mode"):
        ops.kselect_(s, [None, None], [torch.empty(2, device=device),
                                       torch.empty(2, dtype=torch.uint8, device=device)], 1, False, True, True)
    with pytest.raises(TypeError, match=r"scores\[1\] has unsupported dtype"):
        ops.kselect_([s[0], s[1].to(torch.complex64)], masks, out, 1, False, True, False)
    assert untouched()
    # k equal to the selectable count is fine and prunes everything selectable
    ops.kselect_(s, masks, out, 12, False, True, False)
    assert not any(bool(o.any()) for o in out)


# ----------------------------------------------------------------------------- mask_mul

def assert_same_values(got, want):
    assert got.dtype == want.dtype and got.shape == want.shape
    if got.is_floating_point():
        nan_g, nan_w = torch.isnan(got), torch.isnan(want)
        assert torch.equal(nan_g, nan_w)
        g, w = got[~nan_g], want[~nan_w]
        assert torch.equal(g, w)
        assert torch.equal(torch.signbit(g), torch.signbit(w))  # -0.0 stays -0.0
    else:
        assert torch.equal(got, want)


MASK_MUL_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int32, torch.int8,
                   torch.int64, torch.bool, torch.uint8]


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", MASK_MUL_DTYPES, ids=str)
@pytest.mark.parametrize("mask_dtype", [torch.bool, "same", torch.float32, torch.uint8], ids=str)
@pytest.mark.parametrize("shape", [(0,), (37,), (129, 513), (3, 0, 4)], ids=str)
def test_mask_mul(device, dtype, mask_dtype, shape):
    gen = torch.Generator().manual_seed(2)
    mdt = dtype if mask_dtype == "same" else mask_dtype
    x = scores_tensor(shape, dtype, gen).to(device)
    m = mask_tensor(shape, mdt, gen).to(device)
    assert_same_values(ops.mask_mul(x, m), ref.mask_mul(x, m))
    if x.dim() >= 2 and x.numel():
        assert_same_values(ops.mask_mul(noncontig(x), m), ref.mask_mul(x, m))
        assert_same_values(ops.mask_mul(x, noncontig(m)), ref.mask_mul(x, m))
        row = m[:1]  # broadcast mask
        assert_same_values(ops.mask_mul(x, row), ref.mask_mul(x, row))


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
def test_mask_mul_inplace_many(device):
    gen = torch.Generator().manual_seed(4)
    shapes = [(70, 1000), (5,), (0,), (33, 7), (4, 5)]
    dtypes = [torch.float32, torch.float16, torch.float64, torch.bfloat16, torch.int32]
    mdts = [torch.bool, torch.float16, torch.float32, torch.uint8, torch.int32]
    xs = [scores_tensor(s, dt, gen).to(device) for s, dt in zip(shapes, dtypes)]
    xs[3] = noncontig(xs[3])
    ms = [mask_tensor(s, mdt, gen).to(device) for s, mdt in zip(shapes, mdts)]
    ms[4] = ms[4][:1]  # broadcast
    got = [x.clone() if x.is_contiguous() else noncontig(x) for x in xs]
    want = [x.clone() for x in xs]
    ops.mask_mul_(got, ms)
    ref.mask_mul_(want, ms)
    for g, w in zip(got, want):
        assert_same_values(g, w)


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
def test_mask_mul_inplace_validates_before_writing(device):
    xs = [torch.ones(4, device=device), torch.ones(3, device=device)]
    with pytest.raises(ValueError, match=r"masks\[1\] of shape \[5\] cannot be broadcast"):
        ops.mask_mul_(xs, [torch.zeros(4, device=device), torch.zeros(5, device=device)])
    assert all(bool((x == 1).all()) for x in xs)
    with pytest.raises(ValueError, match="same length"):
        ops.mask_mul_(xs, [torch.zeros(4, device=device)])


# ----------------------------------------------------------------------------- apply_packed_mask_

@needs_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", MASK_MUL_DTYPES + [torch.complex64, torch.complex128], ids=str)
def test_apply_packed_mask(device, dtype):
    gen = torch.Generator().manual_seed(6)
    shapes = [(0,), (13,), (300, 301), (2, 3, 5)]
    if dtype.is_complex:
        xs = [torch.randn(s, dtype=dtype, generator=gen) for s in shapes]
    else:
        xs = [scores_tensor(s, dtype, gen) for s in shapes]
    xs = [x.to(device) for x in xs]
    packed = [ref.pack_mask(mask_tensor(s, torch.bool, gen).to(device)) for s in shapes]
    got = [x.clone() for x in xs]
    got[2] = noncontig(got[2])
    want = [x.clone() for x in xs]
    ops.apply_packed_mask_(got, packed)
    ref.apply_packed_mask_(want, packed)
    for g, w in zip(got, want):
        if dtype.is_complex:
            assert torch.equal(torch.view_as_real(g), torch.view_as_real(w))
        else:
            assert_same_values(g, w)


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
def test_apply_packed_mask_errors(device):
    xs = [torch.ones(16, device=device), torch.ones(9, device=device)]
    with pytest.raises(ValueError, match=r"packed\[1\] must have 2 bytes"):
        ops.apply_packed_mask_(xs, [torch.zeros(2, dtype=torch.uint8, device=device),
                                    torch.zeros(1, dtype=torch.uint8, device=device)])
    with pytest.raises(TypeError, match=r"packed\[0\] must be uint8"):
        ops.apply_packed_mask_(xs, [torch.zeros(2, device=device), torch.zeros(2, dtype=torch.uint8, device=device)])
    assert all(bool((x == 1).all()) for x in xs)


# ----------------------------------------------------------------------------- channel_norms

NORM_PS = [1.0, 2.0, float("inf"), float("-inf"), 0.0, 3.0, 0.5, -1.0]
NORM_SHAPES = [(37,), (64, 33), (16, 3, 3, 3), (5, 7, 11), (1, 1000), (4, 0, 3), (0, 5)]


def norm_input(shape, dtype, gen, special):
    if dtype == torch.bool:
        return torch.rand(shape, generator=gen) < 0.5
    if not dtype.is_floating_point:
        return torch.randint(-50, 50, shape, generator=gen).to(dtype)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    x = torch.where(torch.rand(shape, generator=gen) < 0.1, torch.zeros_like(x), x)
    if special and x.numel() > 4:
        flat = x.view(-1)
        flat[0], flat[-1], flat[x.numel() // 2] = float("nan"), float("inf"), -float("inf")
    return x.to(dtype)


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int32,
                                   torch.int8, torch.bool], ids=str)
@pytest.mark.parametrize("shape", NORM_SHAPES, ids=str)
@pytest.mark.parametrize("special", [False, True], ids=["finite", "nan-inf"])
def test_channel_norms(device, dtype, shape, special):
    if special and not dtype.is_floating_point:
        pytest.skip("NaN/inf only exist in float dtypes")
    gen = torch.Generator().manual_seed(8)
    t = norm_input(shape, dtype, gen, special).to(device)
    variants = [t] + ([noncontig(t)] if t.dim() >= 2 else [])
    rtol = 1e-12 if dtype == torch.float64 else 1e-5
    for x in variants:
        for dim in range(-t.dim(), t.dim()):
            for p in NORM_PS:
                got = ops.channel_norms(x, dim, p)
                want = ref.channel_norms(t, dim, p)
                assert got.dtype == want.dtype and got.shape == want.shape
                torch.testing.assert_close(got, want, rtol=rtol, atol=1e-6, equal_nan=True,
                                           msg=lambda m: f"dim={dim} p={p}: {m}")


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
def test_channel_norms_large_columns_and_rows(device):
    """Many rows reduced per column (Linear in-features) and long rows (conv out-channels)."""
    gen = torch.Generator().manual_seed(12)
    t = torch.randn(3000, 70, generator=gen).to(device)
    for dim in (0, 1):
        for p in (1.0, 2.0, float("inf")):
            torch.testing.assert_close(ops.channel_norms(t, dim, p), ref.channel_norms(t, dim, p), rtol=1e-5,
                                       atol=0)


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
def test_channel_norms_errors(device):
    t = torch.randn(3, 4, device=device)
    with pytest.raises(IndexError, match="dim=2"):
        ops.channel_norms(t, 2, 2.0)
    with pytest.raises(IndexError, match="dim=-3"):
        ops.channel_norms(t, -3, 2.0)
    with pytest.raises(ValueError, match="at least one dimension"):
        ops.channel_norms(torch.tensor(1.0, device=device), 0, 2.0)


# ----------------------------------------------------------------------------- registration

# (the schemas themselves are checked in test_ops_dispatch.py against fastprune.ops.SCHEMAS)

@needs_ext
def test_build_info():
    info = fastprune.build_info()
    assert info["extension"] is True
    assert isinstance(info["cuda"], bool) and isinstance(info["openmp"], bool)
    assert info["num_threads"] >= 1
    assert info["torch_version"].split("+")[0] == torch.__version__.split("+")[0]
    assert info["version"] == fastprune.__version__
    from fastprune import _C

    raw = _C.build_info()
    assert set(raw) >= {"extension", "cuda", "openmp", "num_threads", "torch_version", "version"}
    assert raw["extension"] is True


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("exclude_masked,packed", [(True, False), (True, True), (False, False)])
def test_kselect_fraction_counts_the_selectable_units(device, kselect_path, exclude_masked, packed):
    """fraction selects round(fraction * selectable units), half to even as Python's round:
    the same masks as the reference given that k, and as the reference given the fraction."""
    gen = torch.Generator().manual_seed(zlib.crc32(f"fraction{exclude_masked}{packed}".encode()))
    shapes = [(64, 70), (1,), (0,), (3, 11), (5000,)]
    scores = [scores_tensor(s, torch.float32, gen, ties=False).to(device) for s in shapes]
    masks = [mask_tensor(s.shape, torch.float32, gen).to(device) for s in scores]
    masks[1] = None
    if packed:
        masks = [None if m is None else ref.pack_mask(m != 0) for m in masks]
    cand = candidates_of(scores, masks, exclude_masked, packed)
    # 0.5 * an odd count and (2j + 1) / (2 cand) land exactly on .5: the rounding rule shows.
    for fraction in (0.0, 1.0, 0.5, 0.3, 0.7, 1.5 / cand, 2.5 / cand, 1 / 3):
        k = round(fraction * cand)
        out_dtypes = [torch.float32, torch.bool, torch.float32, torch.half, torch.float32]
        got, want = run_both(scores, masks, out_dtypes, k, False, exclude_masked, packed)
        by_fraction = [torch.empty_like(g) for g in got]
        ops.kselect_(scores, masks, by_fraction, -1, False, exclude_masked, packed, fraction)
        assert_masks_equal(by_fraction, want, f"fraction={fraction} k={k}")
        ref_out = [torch.empty_like(g) for g in got]
        ref.kselect_(scores, masks, ref_out, -1, False, exclude_masked, packed, fraction)
        assert_masks_equal(ref_out, want, f"reference fraction={fraction} k={k}")


@pytest.mark.parametrize("k,fraction", [(None, None), (3, 0.5), (None, 1.5), (None, -0.1), (None, float("nan"))],
                         ids=str)
def test_kselect_fraction_arguments_are_checked(k, fraction):
    x = torch.randn(10)
    out = torch.full((10,), 7.0)
    with pytest.raises(ValueError, match="fraction"):
        fastprune.ops.kselect_([x], None, [out], k, fraction=fraction)
    if fraction is not None:  # the op itself, as torch.ops callers reach it
        with pytest.raises(ValueError, match="fraction"):
            ops.kselect_([x], [None], [out], -1 if k is None else k, False, True, False, fraction)
    assert bool((out == 7.0).all())
