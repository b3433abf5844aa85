"""save_sparse / load_sparse: compressed safetensors checkpoints, bit-exact round trips."""
import json
import os

import pytest
import torch
import torch.nn.utils.prune as tp
from torch import nn

import fastprune as fp
from fastprune.shipping import load_pruned_state_dict, load_sparse, make_permanent, save_sparse

safetensors = pytest.importorskip("safetensors.torch")

pytestmark = pytest.mark.usefixtures("one_thread")

INT_OF = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def bits(t):
    return t.contiguous().view(INT_OF[t.element_size()])


def assert_bit_equal(a, b, key=""):
    assert a.dtype == b.dtype and a.shape == b.shape, key
    assert torch.equal(bits(a), bits(b)), key


def special_tensor(dtype, n=4000, sparsity=0.7):
    """Values with zeros of both signs, NaNs with payloads, infinities, subnormals."""
    g = torch.Generator().manual_seed(0)
    if dtype == torch.bool:
        return torch.rand(n, generator=g) > sparsity
    if not dtype.is_floating_point:
        info = torch.iinfo(dtype)
        t = torch.randint(info.min, info.max, (n,), generator=g, dtype=torch.int64).to(dtype)
        t[torch.rand(n, generator=g) < sparsity] = 0
        t[0], t[1] = info.min, info.max
        return t
    t = torch.randn(n, generator=g).to(dtype)
    keep = torch.rand(n, generator=g) >= sparsity
    t = torch.where(keep, t, torch.zeros((), dtype=dtype))
    b = bits(t)
    width = t.element_size() * 8
    sign = torch.tensor(0x80 if width == 8 else -(1 << (width - 1)), dtype=b.dtype)
    b[5] = sign  # -0.0
    b[6] = sign  # -0.0
    b[7] = 0
    b[8] = -1 if width > 8 else 0xFF  # NaN with every payload bit set (sign too)
    b[9] = 1  # smallest subnormal
    if dtype not in (torch.float8_e4m3fn,):
        t[10] = float("inf")
        t[11] = float("-inf")
    return t


DTYPES = [
    torch.float32, torch.float64, torch.float16, torch.bfloat16,
    torch.float8_e4m3fn, torch.float8_e5m2,
    torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool,
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_round_trip_is_bit_exact_for_every_dtype(tmp_path, dtype):
    t = special_tensor(dtype)
    sd = {"a.weight": t.reshape(40, 100), "b": t[:7].clone(), "empty": t[:0].clone()}
    save_sparse(sd, tmp_path / "x.safetensors")
    out = load_sparse(tmp_path / "x.safetensors")
    assert list(out) == list(sd)
    for k in sd:
        assert_bit_equal(out[k], sd[k], k)
    with safetensors.safe_open(str(tmp_path / "x.safetensors"), "pt") as f:
        infos = json.loads(f.metadata()["fastprune.tensors"])
        assert infos["a.weight"]["encoding"] == "bitmask"  # 70% zeros: sparse is smaller
        assert infos["b"]["encoding"] == "dense"  # 7 elements: not worth a mask
        assert "a.weight" not in f.keys() and "a.weight.bitmask" in f.keys()


def test_negative_zeros_cost_one_bit_per_zero(tmp_path):
    """torch's remove() leaves -0.0 where orig < 0: the sign is kept, the value is not stored."""
    lin = nn.Linear(200, 100)
    tp.l1_unstructured(lin, "weight", 0.9)
    tp.remove(lin, "weight")
    w = lin.weight.detach()
    assert bool((bits(w) == torch.tensor(-(1 << 31), dtype=torch.int32)).any())  # there are -0.0
    save_sparse({"w": w}, tmp_path / "w.safetensors")
    out = load_sparse(tmp_path / "w.safetensors")["w"]
    assert_bit_equal(out, w)
    with safetensors.safe_open(str(tmp_path / "w.safetensors"), "pt") as f:
        assert f.get_tensor("w.values").numel() == 2000
        assert f.get_tensor("w.negzero").numel() == (18000 + 7) // 8


def test_masks_are_stored_as_bits(tmp_path):
    mask = (torch.rand(1000, 64) > 0.5).float()
    save_sparse({"m": mask}, tmp_path / "m.safetensors")
    with safetensors.safe_open(str(tmp_path / "m.safetensors"), "pt") as f:
        assert f.get_tensor("m.values").tolist() == [1.0]
        assert f.get_tensor("m.bitmask").numel() == 64000 // 8
    assert_bit_equal(load_sparse(tmp_path / "m.safetensors")["m"], mask)


@pytest.mark.parametrize("sparsity", [0.5, 0.9])
def test_file_size_is_kept_fraction_plus_one_bit(tmp_path, sparsity):
    model = nn.Sequential(nn.Linear(256, 512, bias=False), nn.Linear(512, 256, bias=False))
    fp.sparsify_(model, sparsity)
    n = sum(p.numel() for p in model.parameters())
    save_sparse(model, tmp_path / "s.safetensors")
    safetensors.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "d.safetensors"))
    sparse, dense = os.path.getsize(tmp_path / "s.safetensors"), os.path.getsize(tmp_path / "d.safetensors")
    expected = (1 - sparsity) * n * 4 + n / 8
    assert abs(sparse - expected) < 2048  # header only
    assert dense > n * 4


def test_model_pruned_torch_style_loads_into_fresh_model(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10)).eval()
    tp.l1_unstructured(net[0], "weight", 0.6)
    fp.l1_unstructured(net[3], "weight", 0.8)
    fp.l1_unstructured(net[3], "weight", 0.5)
    x = torch.randn(2, 3, 8, 8)
    y = net(x)
    save_sparse(net, tmp_path / "ckpt")
    assert os.listdir(tmp_path / "ckpt") == ["model.safetensors"]
    assert fp.is_pruned(net)  # saving does not change the model
    fresh = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10)).eval()
    res = load_sparse(tmp_path / "ckpt", model=fresh)
    assert res.missing_keys == [] and res.unexpected_keys == []
    assert torch.equal(fresh(x), y)
    permanent = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))
    load_pruned_state_dict(permanent, net.state_dict())
    make_permanent(permanent)
    for k, v in permanent.state_dict().items():
        assert_bit_equal(fresh.state_dict()[k], v, k)


def test_state_dict_with_masks_round_trips_and_recreates_pruning(tmp_path):
    net = nn.Sequential(nn.Linear(30, 20), nn.Linear(20, 5)).eval()
    fp.global_unstructured([(net[0], "weight"), (net[1], "weight")], fp.L1Unstructured, amount=0.7)
    sd = net.state_dict()
    save_sparse(sd, tmp_path / "sd.safetensors")
    back = load_sparse(tmp_path / "sd.safetensors")
    assert list(back) == list(sd)
    for k in sd:
        assert_bit_equal(back[k], sd[k], k)
    fresh = nn.Sequential(nn.Linear(30, 20), nn.Linear(20, 5)).eval()
    load_sparse(tmp_path / "sd.safetensors", model=fresh)
    assert fp.is_pruned(fresh)
    x = torch.randn(3, 30)
    assert torch.equal(fresh(x), net(x))


def test_maskset_model_and_tied_weights(tmp_path):
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(50, 16)
            self.mid = nn.Linear(16, 16)
            self.head = nn.Linear(16, 50, bias=False)
            self.head.weight = self.emb.weight

        def forward(self, ids):
            return self.head(torch.relu(self.mid(self.emb(ids))))

    m = Tied()
    fp.sparsify_([(m.emb, "weight"), (m.mid, "weight")], 0.6)
    ids = torch.randint(0, 50, (2, 5))
    y = m(ids)
    save_sparse(m, tmp_path / "t")
    fresh = Tied()
    load_sparse(tmp_path / "t", model=fresh)
    assert torch.equal(fresh(ids), y)
    assert fresh.head.weight is fresh.emb.weight


def test_sharded_checkpoint(tmp_path):
    torch.manual_seed(0)
    layers = nn.Sequential(*[nn.Linear(64, 64) for _ in range(6)])
    fp.sparsify_(layers, 0.5)
    sd = layers.state_dict()
    written = save_sparse(layers, tmp_path / "sh", max_shard_size="10KB")
    files = sorted(os.listdir(tmp_path / "sh"))
    shards = [f for f in files if f.endswith(".safetensors")]
    assert len(shards) > 2 and "model.safetensors.index.json" in files
    assert shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert sorted(os.path.basename(w) for w in written) == files
    index = json.load(open(tmp_path / "sh" / "model.safetensors.index.json"))
    assert set(index["weight_map"].values()) == set(shards)
    assert index["metadata"]["fastprune.order"] == list(sd)
    stored = 0
    for s in shards:
        with safetensors.safe_open(str(tmp_path / "sh" / s), "pt") as f:
            size = sum(f.get_tensor(k).numel() * f.get_tensor(k).element_size() for k in f.keys())
            assert size <= 10_000
            stored += size
            for k in f.keys():
                assert index["weight_map"][k] == s
    assert index["metadata"]["total_size"] == stored
    back = load_sparse(tmp_path / "sh")
    assert list(back) == list(sd)
    for k in sd:
        assert_bit_equal(back[k], sd[k], k)
    # saving again without sharding replaces the shards by one file
    save_sparse(layers, tmp_path / "sh", max_shard_size="1GB")
    assert "model.safetensors.index.json" not in os.listdir(tmp_path / "sh")
    for k, v in load_sparse(tmp_path / "sh").items():
        assert_bit_equal(v, sd[k], k)


def test_one_tensor_larger_than_a_shard_gets_its_own(tmp_path):
    sd = {"big": torch.randn(5000), "small": torch.randn(10)}
    save_sparse(sd, tmp_path / "d", max_shard_size=1000)
    assert len([f for f in os.listdir(tmp_path / "d") if f.endswith(".safetensors")]) == 2
    assert_bit_equal(load_sparse(tmp_path / "d")["big"], sd["big"])


def test_non_contiguous_and_plain_safetensors(tmp_path):
    w = torch.randn(30, 40)
    w[w.abs() < 1] = 0
    sd = {"wt": w.t(), "view": w[3:5]}
    save_sparse(sd, tmp_path / "nc.safetensors")
    back = load_sparse(tmp_path / "nc.safetensors")
    assert torch.equal(back["wt"], w.t()) and torch.equal(back["view"], w[3:5])
    safetensors.save_file({"a": torch.ones(3)}, str(tmp_path / "plain.safetensors"))
    assert torch.equal(load_sparse(tmp_path / "plain.safetensors")["a"], torch.ones(3))


def test_bad_arguments_write_nothing(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(TypeError, match="model_or_state_dict"):
        save_sparse([torch.ones(2)], target)
    with pytest.raises(TypeError, match=r"state_dict\['x'\]"):
        save_sparse({"x": 3}, target)
    with pytest.raises(ValueError, match="meta"):
        save_sparse({"x": torch.empty(2, device="meta")}, target)
    with pytest.raises(ValueError, match="layout"):
        save_sparse({"x": torch.eye(2).to_sparse()}, target)
    with pytest.raises(ValueError, match="collide"):
        save_sparse({"x": torch.ones(2), "x.values": torch.ones(2)}, target)
    with pytest.raises(ValueError, match="max_shard_size"):
        save_sparse({"x": torch.ones(2)}, target, max_shard_size="lots")
    with pytest.raises(ValueError, match="max_shard_size"):
        save_sparse({"x": torch.ones(2)}, target, max_shard_size=0)
    with pytest.raises(ValueError, match="max_shard_size"):
        save_sparse({"x": torch.ones(2)}, tmp_path / "f.safetensors", max_shard_size=10)
    with pytest.raises(TypeError, match="path"):
        save_sparse({"x": torch.ones(2)}, 3)
    with pytest.raises(ValueError, match="reserved"):
        save_sparse({"x": torch.ones(2)}, target, metadata={"fastprune.format": "x"})
    assert not target.exists() and not (tmp_path / "f.safetensors").exists()
    with pytest.raises(FileNotFoundError):
        load_sparse(tmp_path / "missing")
    with pytest.raises(TypeError, match="model"):
        load_sparse(tmp_path, model="m")


def test_load_into_wrong_model_changes_nothing(tmp_path):
    net = nn.Linear(8, 4)
    fp.sparsify_(net, 0.5)
    save_sparse(net, tmp_path / "c")
    other = nn.Linear(8, 5)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(fp.PruningShapeError):
        load_sparse(tmp_path / "c", model=other)
    for k, v in other.state_dict().items():
        assert torch.equal(v, before[k])


def test_user_metadata_and_device_argument(tmp_path):
    save_sparse({"x": torch.zeros(100)}, tmp_path / "m.safetensors", metadata={"model": "tiny"})
    with safetensors.safe_open(str(tmp_path / "m.safetensors"), "pt") as f:
        assert f.metadata()["model"] == "tiny"
    out = load_sparse(tmp_path / "m.safetensors", device="cpu")
    assert out["x"].device.type == "cpu" and torch.equal(out["x"], torch.zeros(100))


def test_bitmask_is_the_packed_format_of_fastprune_ops(tmp_path):
    w = torch.randn(37, 53)
    w[w.abs() < 1] = 0
    save_sparse({"w": w}, tmp_path / "w.safetensors")
    with safetensors.safe_open(str(tmp_path / "w.safetensors"), "pt") as f:
        assert torch.equal(f.get_tensor("w.bitmask"), fp.ops.pack_mask(w != 0))



def test_resaving_removes_the_files_of_an_earlier_save(tmp_path):
    sd = {f"t{i}": torch.randn(1000) for i in range(6)}
    save_sparse(sd, tmp_path / "d", max_shard_size=8000)  # 3 shards
    assert len(os.listdir(tmp_path / "d")) == 4
    (tmp_path / "d" / "notes.txt").write_text("kept")
    save_sparse(sd, tmp_path / "d", max_shard_size=12000)  # 2 shards
    assert sorted(os.listdir(tmp_path / "d")) == [
        "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
        "model.safetensors.index.json", "notes.txt",
    ]
    for k, v in load_sparse(tmp_path / "d").items():
        assert_bit_equal(v, sd[k], k)


def test_a_failed_save_leaves_no_temporary_file(tmp_path, monkeypatch):
    calls = []
    real = safetensors.save_file

    def failing(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 2:
            raise OSError("disk full")
        real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors, "save_file", failing)
    with pytest.raises(OSError, match="disk full"):
        save_sparse({f"t{i}": torch.randn(1000) for i in range(4)}, tmp_path / "d", max_shard_size=5000)
    assert os.listdir(tmp_path / "d") == []


# ----------------------------------------------------------------------------
# Integrity: damaged and truncated files (issue 23)
# ----------------------------------------------------------------------------


def _layout(path):
    """(data start, header dict) of a safetensors file."""
    raw = open(path, "rb").read()
    n = int.from_bytes(raw[:8], "little")
    return 8 + n, json.loads(raw[8:8 + n])


def _byte_range(path, stored_name):
    start, header = _layout(path)
    a, b = header[stored_name]["data_offsets"]
    return start + a, start + b


def _edit_bytes(path, edits):
    """Apply {absolute offset: new byte value} to the file in place."""
    raw = bytearray(open(path, "rb").read())
    for offset, value in edits.items():
        raw[offset] = value
    open(path, "wb").write(bytes(raw))


def _rewrite_infos(path, change):
    """Rewrite the header's fastprune.tensors with change(infos) (None: drop it), keeping the data bytes."""
    raw = open(path, "rb").read()
    start, header = _layout(path)
    meta = header["__metadata__"]
    infos = change(json.loads(meta["fastprune.tensors"]))
    meta["fastprune.tensors"] = infos if isinstance(infos, str) else json.dumps(infos)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    open(path, "wb").write(len(text).to_bytes(8, "little") + text + raw[start:])


def _pruned_layer_checkpoint(tmp_path):
    torch.manual_seed(0)
    lin = nn.Linear(256, 256)
    fp.sparsify_(lin, 0.7)
    path = tmp_path / "lin.safetensors"
    save_sparse(lin, path)
    return lin, path


def test_damaged_bitmask_with_the_same_bit_count_is_detected(tmp_path):
    """Clearing a set bit near the start and setting a clear one near the end keeps the count:
    without a checksum a third of the weights come back shifted, silently."""
    lin, path = _pruned_layer_checkpoint(tmp_path)
    a, b = _byte_range(path, "weight.bitmask")
    raw = open(path, "rb").read()
    first = next(i for i in range(a, b) if raw[i] != 0)
    last = next(i for i in range(b - 1, a, -1) if raw[i] != 0xFF)
    low_set = raw[first] & -raw[first]
    high_clear = 1 << next(k for k in range(7, -1, -1) if not raw[last] >> k & 1)
    _edit_bytes(path, {first: raw[first] & ~low_set, last: raw[last] | high_clear})
    with pytest.raises(ValueError, match="checksum") as info:
        load_sparse(path)
    assert str(path) in str(info.value) and "'weight'" in str(info.value)
    damaged = load_sparse(path, verify=False)["weight"]  # the check can be skipped: then the damage shows
    wrong = int((damaged != lin.weight.detach()).sum())
    assert wrong > 1000, wrong
    assert torch.equal(load_sparse(path, verify=False)["bias"], lin.bias.detach())


@pytest.mark.parametrize("part", ["weight.values", "bias", "weight.bitmask"])
def test_a_flipped_byte_anywhere_is_detected(tmp_path, part):
    lin, path = _pruned_layer_checkpoint(tmp_path)
    a, b = _byte_range(path, part)
    raw = open(path, "rb").read()
    middle = (a + b) // 2
    _edit_bytes(path, {middle: raw[middle] ^ 0x10})
    with pytest.raises(ValueError, match="checksum") as info:
        load_sparse(path)
    key = part.split(".")[0]
    assert str(path) in str(info.value) and repr(key) in str(info.value) and part in str(info.value)
    fresh = nn.Linear(256, 256)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(ValueError, match="checksum"):
        load_sparse(path, model=fresh)
    for k, v in fresh.state_dict().items():  # a refused load changes nothing
        assert torch.equal(v, before[k])


def test_damaged_shard_is_named(tmp_path):
    layers = nn.Sequential(*[nn.Linear(64, 64) for _ in range(6)])
    fp.sparsify_(layers, 0.5)
    save_sparse(layers, tmp_path / "sh", max_shard_size="10KB")
    index = json.load(open(tmp_path / "sh" / "model.safetensors.index.json"))
    shard = index["weight_map"]["3.weight.values"]
    a, _ = _byte_range(tmp_path / "sh" / shard, "3.weight.values")
    raw = open(tmp_path / "sh" / shard, "rb").read()
    _edit_bytes(tmp_path / "sh" / shard, {a: raw[a] ^ 1})
    with pytest.raises(ValueError, match="checksum") as info:
        load_sparse(tmp_path / "sh")
    assert shard in str(info.value) and "'3.weight'" in str(info.value)


@pytest.mark.parametrize("keep", [0, 5, 30, 0.5, -1])
def test_truncated_or_empty_file_is_named(tmp_path, keep):
    _, path = _pruned_layer_checkpoint(tmp_path)
    raw = open(path, "rb").read()
    cut = int(len(raw) * keep) if isinstance(keep, float) else (len(raw) + keep if keep < 0 else keep)
    open(path, "wb").write(raw[:cut])
    with pytest.raises(ValueError) as info:
        load_sparse(path)
    assert str(path) in str(info.value) and "truncated" in str(info.value)


def test_truncated_shard_in_a_directory_is_named(tmp_path):
    sd = {f"t{i}": torch.randn(1000) for i in range(4)}
    save_sparse(sd, tmp_path / "d", max_shard_size=5000)
    shard = tmp_path / "d" / "model-00002-of-00004.safetensors"
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(ValueError, match="truncated") as info:
        load_sparse(tmp_path / "d")
    assert str(shard) in str(info.value)


def test_files_written_without_checksums_still_load(tmp_path):
    """Checkpoints written before the checksums existed have none: they load, unverified."""
    lin, path = _pruned_layer_checkpoint(tmp_path)
    with safetensors.safe_open(str(path), "pt") as f:
        infos = json.loads(f.metadata()["fastprune.tensors"])
    assert set(infos["weight"]["crc32"]) == {"weight.bitmask", "weight.values"}
    assert set(infos["bias"]["crc32"]) == {"bias"}
    _rewrite_infos(path, lambda infos: {k: {f: v for f, v in i.items() if f != "crc32"} for k, i in infos.items()})
    out = load_sparse(path)
    assert_bit_equal(out["weight"], lin.weight.detach())
    assert_bit_equal(out["bias"], lin.bias.detach())


# ----------------------------------------------------------------------------
# Errors that say what is wrong (issue 23)
# ----------------------------------------------------------------------------


def test_header_nnz_mismatch_names_both_counts(tmp_path):
    lin, path = _pruned_layer_checkpoint(tmp_path)
    real = int((lin.weight != 0).sum())

    def set_nnz(infos):
        infos["weight"]["nnz"] = 5
        return infos

    _rewrite_infos(path, set_nnz)
    with pytest.raises(ValueError) as info:
        load_sparse(path)
    msg = str(info.value)
    assert str(path) in msg and "'weight'" in msg
    assert f"{real} set bits" in msg and "nnz 5" in msg, msg
    assert f"{real} values are stored" not in msg  # the equal counts are not the mismatch


def test_header_const_mismatch_names_what_differs(tmp_path):
    lin, path = _pruned_layer_checkpoint(tmp_path)
    real = int((lin.weight != 0).sum())

    def set_const(infos):
        infos["weight"]["const"] = True
        return infos

    _rewrite_infos(path, set_const)
    with pytest.raises(ValueError) as info:
        load_sparse(path)
    msg = str(info.value)
    assert str(path) in msg and "'weight'" in msg
    assert f"{real} values are stored" in msg and "const" in msg and "1" in msg, msg


def test_malformed_tensors_header_names_the_file(tmp_path):
    _, path = _pruned_layer_checkpoint(tmp_path)
    _rewrite_infos(path, lambda infos: json.dumps(infos)[:-7])
    with pytest.raises(ValueError, match="fastprune.tensors") as info:
        load_sparse(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("change", [
    lambda infos: {k: v for k, v in infos.items() if k != "weight"},        # an entry removed
    lambda infos: {**infos, "weight": {**infos["weight"], "negzero": False, "encoding": "dense"}},
])
def test_every_stored_tensor_must_belong_to_an_entry(tmp_path, change):
    """A header that no longer accounts for some stored tensors is damaged, not a smaller checkpoint."""
    _, path = _pruned_layer_checkpoint(tmp_path)
    _rewrite_infos(path, change)
    with pytest.raises(ValueError) as info:
        load_sparse(path)
    assert str(path) in str(info.value) and "weight." in str(info.value)


def test_header_entry_fields_are_checked(tmp_path):
    _, path = _pruned_layer_checkpoint(tmp_path)

    def drop_shape(infos):
        del infos["weight"]["shape"]
        return infos

    _rewrite_infos(path, drop_shape)
    with pytest.raises(ValueError, match="shape") as info:
        load_sparse(path)
    assert str(path) in str(info.value) and "'weight'" in str(info.value)


def _sharded(tmp_path):
    sd = {f"t{i}": torch.randn(1000) for i in range(4)}
    save_sparse(sd, tmp_path / "d", max_shard_size=5000)
    return sd, tmp_path / "d" / "model.safetensors.index.json"


def test_malformed_index_names_the_file(tmp_path):
    _, index = _sharded(tmp_path)
    index.write_text(index.read_text()[:-10])
    with pytest.raises(ValueError) as info:
        load_sparse(tmp_path / "d")
    assert str(index) in str(info.value)
    index.write_text(json.dumps({"weight_map": ["not", "a", "dict"]}))
    with pytest.raises(ValueError, match="weight_map") as info:
        load_sparse(tmp_path / "d")
    assert str(index) in str(info.value)


def test_index_must_account_for_every_stored_tensor(tmp_path):
    _, index = _sharded(tmp_path)
    data = json.loads(index.read_text())
    del data["weight_map"]["t2"]  # t2 has a shard of its own, which is then listed nowhere
    index.write_text(json.dumps(data))
    with pytest.raises(ValueError) as info:
        load_sparse(tmp_path / "d")
    assert str(index) in str(info.value) and "t2" in str(info.value)


def test_index_entry_for_a_tensor_its_shard_lacks(tmp_path):
    _, index = _sharded(tmp_path)
    data = json.loads(index.read_text())
    data["weight_map"]["t0"] = data["weight_map"]["t1"]  # points at the wrong shard
    index.write_text(json.dumps(data))
    with pytest.raises(ValueError) as info:
        load_sparse(tmp_path / "d")
    assert str(index) in str(info.value) and "t0" in str(info.value)


def test_index_naming_a_missing_shard(tmp_path):
    _, index = _sharded(tmp_path)
    os.remove(tmp_path / "d" / "model-00003-of-00004.safetensors")
    with pytest.raises(FileNotFoundError) as info:
        load_sparse(tmp_path / "d")
    assert str(index) in str(info.value) and "model-00003-of-00004.safetensors" in str(info.value)
