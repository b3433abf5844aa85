"""The ops behave as dispatcher ops: autograd, fake kernels (torch.compile), opcheck, schemas."""
import os
import subprocess
import sys

import pytest
import torch

import fastprune
from fastprune import ops
from fastprune.ops._load import kernel_registrations


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.float64, torch.uint8])
def test_mask_mul_gradient_is_grad_times_mask(mask_dtype):
    w = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    mask = (torch.rand(7, 5) > 0.5).to(mask_dtype)
    out = ops.mask_mul(w, mask)
    assert torch.equal(out, w * mask.to(w.dtype))
    grad = torch.randn(7, 5, dtype=torch.float64)
    out.backward(grad)
    assert torch.equal(w.grad, grad * mask.to(torch.float64))
    torch.autograd.gradcheck(lambda x: ops.mask_mul(x, mask), (w.detach().clone().requires_grad_(),))


def test_mask_mul_gradient_flows_to_float_mask_too():
    w = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    m = torch.rand(4, 3, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(ops.mask_mul, (w, m))


def test_mask_mul_double_backward():
    w = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    m = torch.rand(5, 4, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradgradcheck(ops.mask_mul, (w, m))
    mask = torch.rand(5, 4) > 0.5
    torch.autograd.gradgradcheck(lambda x: ops.mask_mul(x, mask), (w,))


def test_mask_mul_records_no_graph_without_grad():
    w = torch.randn(6, 3, requires_grad=True)
    mask = torch.rand(6, 3) > 0.5
    with torch.no_grad():
        out = ops.mask_mul(w, mask)
    assert out.grad_fn is None and not out.requires_grad
    out = ops.mask_mul(w.detach(), mask)
    assert out.grad_fn is None
    out = ops.mask_mul(w, mask)
    assert out.grad_fn is not None
    out.sum().backward()
    assert torch.equal(w.grad, mask.float())


def test_mask_mul_autograd_kernel_location():
    # Compiled: the formula is C++ (no Python hop per call); fallback: the Python one.
    dump = torch._C._dispatch_dump("fastprune::mask_mul")
    line = next(ln for ln in dump.splitlines() if ln.startswith("Autograd[alias]: registered at "))
    if fastprune.build_info()["extension"]:
        assert "csrc/autograd.cpp" in line, line
    else:
        assert ".py" in line, line


def test_ops_compile_with_fake_kernels():
    w = torch.randn(16, 12)
    mask = torch.rand(16, 12) > 0.3

    def f(x, m):
        y = ops.mask_mul(x, m)
        return y * 2, ops.channel_norms(y, 0, 2.0)

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    got, expected = compiled(w, mask), f(w, mask)
    assert torch.equal(got[0], expected[0])
    torch.testing.assert_close(got[1], expected[1])


def test_pruned_module_forward_compiles():
    m = torch.nn.Linear(12, 6)
    fastprune.l1_unstructured(m, "weight", amount=0.5)
    x = torch.randn(3, 12)
    compiled = torch.compile(m, backend="aot_eager")
    assert torch.allclose(compiled(x), m(x))


@pytest.mark.parametrize(
    "op, args",
    [
        ("mask_mul", lambda: (torch.randn(5, 4, requires_grad=True), torch.rand(5, 4) > 0.5)),
        ("channel_norms", lambda: (torch.randn(6, 3, 2), 1, 2.0)),
        ("mask_mul_", lambda: ([torch.randn(5), torch.randn(2, 3)], [torch.ones(5), torch.zeros(2, 3)])),
        ("apply_packed_mask_", lambda: ([torch.randn(11)], [torch.tensor([0b10110101, 0b101], dtype=torch.uint8)])),
        ("kselect_", lambda: ([torch.randn(9), torch.randn(3, 4)], [None, torch.rand(3, 4) > 0.2],
                              [torch.empty(9), torch.empty(3, 4, dtype=torch.bool)], 5, False, True, False)),
        ("kselect_", lambda: ([torch.randn(9), torch.randn(3, 4)], [None, torch.rand(3, 4) > 0.2],
                              [torch.empty(9), torch.empty(3, 4, dtype=torch.bool)], -1, False, True, False, 0.4,
                              [torch.randn(9), torch.randn(12)], [torch.empty(9), torch.empty(3, 4)])),
    ],
)
def test_opcheck(op, args):
    torch.library.opcheck(getattr(torch.ops.fastprune, op).default, args(),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


def test_schemas_are_the_documented_ones():
    # Holds in both modes: the extension and the fallback register the same op library.
    for name, schema in ops.SCHEMAS.items():
        registered = str(getattr(torch.ops.fastprune, name).default._schema)
        assert registered == "fastprune::" + schema, name
    regs = kernel_registrations(ops.SCHEMAS)
    for name, where in regs.items():
        cpu = where["CPU"]
        if fastprune.build_info()["extension"]:
            assert cpu is not None and ".py" not in cpu.split(":")[0] and "csrc" in cpu, (name, cpu)
        else:  # the reference serves every backend
            assert cpu is None and "CompositeExplicitAutograd" in torch._C._dispatch_dump(f"fastprune::{name}")


@pytest.mark.skipif(not fastprune.build_info()["extension"], reason="compiled extension not loaded")
def test_compiled_library_implements_exactly_the_schemas():
    # Load the compiled library alone, without fastprune's Python side: the ops it
    # registers kernels for must be exactly the ones fastprune.ops defines.
    from fastprune import _C

    keys = ["CPU"] + (["CUDA"] if fastprune.build_info()["cuda"] else [])
    code = (
        "import sys, torch\n"
        "torch.ops.load_library(sys.argv[1])\n"
        "for key in sys.argv[2:]:\n"
        "    names = sorted(n for n in torch._C._dispatch_get_registrations_for_dispatch_key(key)\n"
        "                   if n.startswith('fastprune::'))\n"
        "    print(key, ','.join(names))\n"
    )
    res = subprocess.run([sys.executable, "-c", code, _C.__file__, *keys], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "FASTPRUNE_NO_EXT": "1"})
    assert res.returncode == 0, res.stderr
    found = dict(line.split(" ", 1) for line in res.stdout.strip().splitlines())
    want = ",".join(sorted("fastprune::" + n for n in ops.SCHEMAS))
    assert found == {key: want for key in keys}


def test_build_info_reports_the_mode():
    info = fastprune.build_info()
    for key in ("extension", "cuda", "cuda_fallback_reason", "openmp", "num_threads", "torch_version", "version"):
        assert key in info
    assert isinstance(info["extension"], bool)
    # why there are no CUDA kernels, in words (setup.py passes the reason through the compiler)
    if info["cuda"]:
        assert info["cuda_fallback_reason"] is None
    else:
        assert isinstance(info["cuda_fallback_reason"], str) and info["cuda_fallback_reason"].isprintable()
        assert len(info["cuda_fallback_reason"]) > 10


def test_empty_tensor_lists_are_a_no_op():
    ops.mask_mul_([], [])
    ops.apply_packed_mask_([], [])
    ops.kselect_([], [], [], 0)
    assert ops.kselect([], None, 0) == []
    with pytest.raises(ValueError, match="k=1"):
        ops.kselect_([], [], [], 1)
    with pytest.raises(ValueError, match="same length"):
        ops.mask_mul_([torch.ones(2)], [])
