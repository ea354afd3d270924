"""TF-free TensorFlow checkpoint reader (prn_blender.core.tf_bundle)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from prn_blender.core.tf_bundle import (BundleError, TensorInfo, read_bundle, read_index, verify_prnet_tensors)

FIXTURE = Path(__file__).parent / "fixtures" / "tf_bundle"


def _expected() -> dict[str, np.ndarray]:
    return {p.stem.replace("__", "/"): np.load(p) for p in sorted((FIXTURE / "expected").glob("*.npy"))}


def test_read_bundle_matches_tensorflow_written_values():
    exp = _expected()
    got = read_bundle(FIXTURE / "ckpt", verify_crc=True)
    assert set(got) == set(exp)
    for name, e in exp.items():
        a = got[name]
        if a.dtype == object:  # DT_STRING -> object array of bytes; expected stored fixed-width
            assert [bytes(x) for x in a.ravel()] == [bytes(x) for x in e.ravel()], name
            continue
        assert a.dtype == e.dtype and a.shape == e.shape, name
        np.testing.assert_array_equal(a, e, err_msg=name)
    assert got["global_step"].shape == () and got["global_step"].dtype == np.int64
    assert got["scale"].shape == () and got["scale"] == np.float32(0.5)


def test_read_index_and_subset():
    idx = read_index(FIXTURE / "ckpt.index")
    assert idx == read_index(FIXTURE / "ckpt")  # prefix or .index path
    w = idx["resfcn256/Conv/weights"]
    assert isinstance(w, TensorInfo) and w.dtype == "float32" and w.shape == (4, 4, 3, 2) and w.size == 384
    sub = read_bundle(FIXTURE / "ckpt", names=["scale", "resfcn256/Conv/weights"])
    assert set(sub) == {"scale", "resfcn256/Conv/weights"}
    with pytest.raises(BundleError):
        read_bundle(FIXTURE / "ckpt", names=["nope"])


def test_corrupt_and_compressed_tables(tmp_path):
    data = (FIXTURE / "ckpt.index").read_bytes()
    bad = tmp_path / "bad.index"
    bad.write_bytes(data[:-1] + b"\x00")  # magic
    with pytest.raises(BundleError, match="magic"):
        read_index(bad)
    # flip one byte inside the first data block -> CRC error
    bad.write_bytes(data[:5] + bytes([data[5] ^ 0xFF]) + data[6:])
    with pytest.raises(BundleError):
        read_index(bad)
    # mark the index block as snappy-compressed (and skip CRC checks) -> clear error
    footer = data[-48:]
    from prn_blender.core.tf_bundle import _handle
    _, pos = _handle(footer, 0)
    (off, size), _ = _handle(footer, pos)
    snappy = bytearray(data)
    snappy[off + size] = 1
    bad.write_bytes(bytes(snappy))
    with pytest.raises(BundleError, match="snappy"):
        read_index(bad, verify=False)


def test_data_crc_detects_corruption(tmp_path):
    for p in FIXTURE.glob("ckpt.*"):
        (tmp_path / p.name).write_bytes(p.read_bytes())
    info = read_index(tmp_path / "ckpt")["resfcn256/Conv/weights"]
    shard = tmp_path / "ckpt.data-00000-of-00001"
    raw = bytearray(shard.read_bytes())
    raw[info.offset] ^= 0x01
    shard.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match="CRC"):
        read_bundle(tmp_path / "ckpt", names=["resfcn256/Conv/weights"], verify_crc=True)


def _tsv(shared: Path) -> dict[str, tuple[str, tuple, int]]:
    rows = {}
    for line in (shared / "prnet" / "256_256_resfcn256_weight.index.tensors.tsv").read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        name, dtype, shape, size = line.split("\t")
        rows[name] = (dtype, tuple(json.loads(shape)), int(size))
    return rows


@pytest.mark.shared
def test_official_index_matches_tsv(shared):
    idx = read_index(shared / "prnet" / "256_256_resfcn256_weight.index")
    rows = _tsv(shared)
    assert len(rows) == 545
    assert {n: (i.dtype, i.shape, i.size) for n, i in idx.items()} == rows
    assert all(i.shard == 0 and not i.sliced for i in idx.values())
    # tensors tile the data shard exactly: 160,290,984 bytes
    spans = sorted((i.offset, i.size) for i in idx.values())
    assert all(a + s == b for (a, s), (b, _) in zip(spans, spans[1:]))
    assert spans[-1][0] + spans[-1][1] == 160_290_984


@pytest.mark.shared
def test_official_index_covers_resfcn256(shared):
    idx = read_index(shared / "prnet" / "256_256_resfcn256_weight.index")
    nm = verify_prnet_tensors(idx)
    assert len(nm) == 245 and set(nm) <= set(idx)
    model_tensors = {n for n in idx if not n.endswith(("/Adam", "/Adam_1")) and not n.startswith("beta")}
    assert model_tensors == set(nm)
    # a missing tensor or a wrong shape is reported
    broken = dict(idx)
    del broken["resfcn256/Conv/weights"]
    w = broken["resfcn256/Conv2d_transpose_16/weights"]
    broken["resfcn256/Conv2d_transpose_16/weights"] = w._replace(shape=(4, 4, 16, 3))
    with pytest.raises(BundleError, match="2 problems"):
        verify_prnet_tensors(broken)


@pytest.mark.shared
def test_import_needs_data_shard(tmp_path, shared):
    idx_src = shared / "prnet" / "256_256_resfcn256_weight.index"
    (tmp_path / idx_src.name).write_bytes(idx_src.read_bytes())
    from prn_blender.core.tf_bundle import import_prnet_checkpoint
    with pytest.raises(BundleError, match="data shard not found"):
        import_prnet_checkpoint(tmp_path / "256_256_resfcn256_weight", tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()
