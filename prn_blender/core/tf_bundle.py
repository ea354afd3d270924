"""Read TensorFlow checkpoints (tensor bundle format, "V2") without TensorFlow, and import the official PRNet weights.

A checkpoint ``<prefix>`` is ``<prefix>.index`` plus ``<prefix>.data-NNNNN-of-MMMMM`` shards:

* ``.index`` is an SSTable (LevelDB table format): data blocks of prefix-compressed key/value entries followed by
  restart points, each block followed by a 5-byte trailer (compression type + masked CRC32C), a metaindex block,
  an index block whose values are BlockHandles of the data blocks, and a 48-byte footer (two BlockHandles, padding,
  magic 0xdb4775248b80fb57). Keys are tensor names; values are serialized ``BundleEntryProto`` messages. The empty
  key ``""`` holds the ``BundleHeaderProto`` (number of shards, endianness).
* the data shards hold the raw little-endian tensor bytes at (offset, size).

Only the subset of the format that TensorFlow's ``BundleWriter`` produces is supported: uncompressed blocks (a
snappy-compressed block raises :class:`BundleError`), unpartitioned tensors (no ``slices``), numeric, bool and string
dtypes.

The official PRNet weights (``256_256_resfcn256_weight``) are research-only and never shipped; users supply them and
:func:`import_prnet_checkpoint` converts them into a prn_blender weights file.
"""
from __future__ import annotations

import datetime
import hashlib
import struct
import warnings
from pathlib import Path
from typing import Iterable, NamedTuple

import numpy as np

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48
BLOCK_TRAILER_SIZE = 5
OFFICIAL_PRNET_SHA256 = "59d338bf0c21b10be813f17f84042c9d3a5bf318e588855ff2b2c041c25bb91a"
PRNET_LAYOUT = "prnet-bfm"

#: TensorFlow DataType enum -> numpy dtype (little-endian). 7 = DT_STRING is handled separately.
TF_DTYPES = {
    1: np.dtype("<f4"), 2: np.dtype("<f8"), 3: np.dtype("<i4"), 4: np.dtype("u1"), 5: np.dtype("<i2"),
    6: np.dtype("i1"), 8: np.dtype("<c8"), 9: np.dtype("<i8"), 10: np.dtype("?"), 17: np.dtype("<u2"),
    18: np.dtype("<c16"), 19: np.dtype("<f2"), 22: np.dtype("<u4"), 23: np.dtype("<u8"),
}
DT_STRING = 7
TF_DTYPE_NAMES = {k: v.name for k, v in TF_DTYPES.items()} | {DT_STRING: "string", 14: "bfloat16"}


class BundleError(ValueError):
    """A checkpoint file is missing, malformed, or uses an unsupported feature."""


class TensorInfo(NamedTuple):
    """One ``BundleEntryProto``. dtype: numpy-style name ('float32', 'int64', 'string', ...)."""
    dtype: str
    shape: tuple
    shard: int
    offset: int
    size: int
    crc32c: int | None = None
    sliced: bool = False


# --------------------------------------------------------------------------- CRC32C (Castagnoli)
def _crc_table() -> list[int]:
    t = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        t.append(c)
    return t


_CRC_TABLE = _crc_table()


def crc32c(data: bytes, crc: int = 0) -> int:
    """Plain CRC32C (pure Python; fine for index blocks and small tensors)."""
    c = crc ^ 0xFFFFFFFF
    t = _CRC_TABLE
    for b in data:
        c = t[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def _mask(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# --------------------------------------------------------------------------- protobuf wire format
def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise BundleError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise BundleError("varint too long")


def _fields(buf: bytes) -> Iterable[tuple[int, int, object]]:
    """Yield (field number, wire type, value) of a protobuf message; value is int (varint/fixed) or bytes."""
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        num, wt = tag >> 3, tag & 7
        if wt == 0:
            v, pos = _varint(buf, pos)
        elif wt == 1:
            v = struct.unpack_from("<Q", buf, pos)[0]
            pos += 8
        elif wt == 2:
            n, pos = _varint(buf, pos)
            v = bytes(buf[pos:pos + n])
            if len(v) != n:
                raise BundleError("truncated length-delimited field")
            pos += n
        elif wt == 5:
            v = struct.unpack_from("<I", buf, pos)[0]
            pos += 4
        else:
            raise BundleError(f"unsupported protobuf wire type {wt}")
        yield num, wt, v


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _parse_shape(buf: bytes) -> tuple:
    dims, unknown = [], False
    for num, _, v in _fields(buf):
        if num == 2:  # Dim {int64 size = 1; string name = 2}
            size = 0
            for n2, _, v2 in _fields(v):
                if n2 == 1:
                    size = _signed64(v2)
            dims.append(size)
        elif num == 3:
            unknown = bool(v)
    if unknown:
        raise BundleError("tensor with unknown rank")
    return tuple(dims)


def _parse_entry(buf: bytes) -> TensorInfo:
    dtype, shape, shard, offset, size, crc, sliced = 0, (), 0, 0, 0, None, False
    for num, _, v in _fields(buf):
        if num == 1:
            dtype = v
        elif num == 2:
            shape = _parse_shape(v)
        elif num == 3:
            shard = v
        elif num == 4:
            offset = _signed64(v)
        elif num == 5:
            size = _signed64(v)
        elif num == 6:
            crc = v
        elif num == 7:
            sliced = True
    return TensorInfo(TF_DTYPE_NAMES.get(dtype, f"dtype{dtype}"), shape, shard, offset, size, crc, sliced)


def _parse_header(buf: bytes) -> dict:
    h = {"num_shards": 1, "endianness": 0}
    for num, _, v in _fields(buf):
        if num == 1:
            h["num_shards"] = v
        elif num == 2:
            h["endianness"] = v
    return h


# --------------------------------------------------------------------------- SSTable
def _handle(buf: bytes, pos: int) -> tuple[tuple[int, int], int]:
    off, pos = _varint(buf, pos)
    size, pos = _varint(buf, pos)
    return (off, size), pos


def _read_block(data: bytes, handle: tuple[int, int], verify: bool = True) -> bytes:
    off, size = handle
    end = off + size
    if end + BLOCK_TRAILER_SIZE > len(data):
        raise BundleError(f"block at {off}+{size} runs past the end of the file")
    block, ctype = data[off:end], data[end]
    if verify:
        stored = struct.unpack_from("<I", data, end + 1)[0]
        if _mask(crc32c(data[end:end + 1], crc32c(block))) != stored:
            raise BundleError(f"CRC mismatch in block at offset {off}")
    if ctype == 1:
        raise BundleError("snappy-compressed table block: not supported (TensorFlow writes bundle indexes "
                          "uncompressed; re-save the checkpoint with TensorFlow)")
    if ctype != 0:
        raise BundleError(f"unknown block compression type {ctype}")
    return block


def _block_entries(block: bytes) -> Iterable[tuple[bytes, bytes]]:
    if len(block) < 4:
        raise BundleError("block too small")
    n_restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    limit = len(block) - 4 - 4 * n_restarts
    if limit < 0:
        raise BundleError("bad restart array")
    pos, key = 0, b""
    while pos < limit:
        shared, pos = _varint(block, pos)
        non_shared, pos = _varint(block, pos)
        vlen, pos = _varint(block, pos)
        if shared > len(key) or pos + non_shared + vlen > limit:
            raise BundleError("corrupt block entry")
        key = key[:shared] + block[pos:pos + non_shared]
        pos += non_shared
        yield key, block[pos:pos + vlen]
        pos += vlen


def _table_items(data: bytes, verify: bool = True) -> Iterable[tuple[bytes, bytes]]:
    if len(data) < FOOTER_SIZE:
        raise BundleError("file too small to be a table")
    footer = data[-FOOTER_SIZE:]
    if struct.unpack_from("<Q", footer, FOOTER_SIZE - 8)[0] != TABLE_MAGIC:
        raise BundleError("bad table magic: not a TensorFlow checkpoint .index file")
    _meta, pos = _handle(footer, 0)
    index, _ = _handle(footer, pos)
    for _sep, hbytes in _block_entries(_read_block(data, index, verify)):
        h, _ = _handle(hbytes, 0)
        yield from _block_entries(_read_block(data, h, verify))


# --------------------------------------------------------------------------- public API
def _index_path(path: str | Path) -> Path:
    p = Path(path)
    return p if p.suffix == ".index" else Path(str(p) + ".index")


def _prefix(path: str | Path) -> Path:
    p = Path(path)
    return p.with_suffix("") if p.suffix == ".index" else p


def _read_index_full(path: str | Path, verify: bool = True) -> tuple[dict, dict[str, TensorInfo]]:
    p = _index_path(path)
    if not p.is_file():
        raise BundleError(f"checkpoint index not found: {p}")
    header, out = {"num_shards": 1, "endianness": 0}, {}
    for key, value in _table_items(p.read_bytes(), verify):
        if key == b"":
            header = _parse_header(value)
        else:
            out[key.decode("utf-8")] = _parse_entry(value)
    if header["endianness"] != 0:
        raise BundleError("big-endian checkpoints are not supported")
    return header, out


def read_index(path: str | Path, verify: bool = True) -> dict[str, TensorInfo]:
    """Tensor name -> TensorInfo for a checkpoint (``path`` is the ``.index`` file or the prefix).
    ``verify`` checks the table blocks' CRCs."""
    return _read_index_full(path, verify)[1]


def shard_paths(prefix: str | Path, num_shards: int | None = None) -> list[Path]:
    prefix = _prefix(prefix)
    if num_shards is None:
        num_shards = _read_index_full(prefix)[0]["num_shards"]
    return [Path(f"{prefix}.data-{i:05d}-of-{num_shards:05d}") for i in range(num_shards)]


def _tensor_crc(info: TensorInfo, raw: bytes) -> int:
    """CRC32C as BundleWriter computes it: over the raw bytes, except for strings, where the varint lengths are
    checksummed as little-endian uint32 values (uint64 above 4 GiB), then the 4-byte masked length checksum and the
    string bytes follow."""
    if info.dtype != "string":
        return crc32c(raw)
    n = int(np.prod(info.shape)) if info.shape else 1
    crc, pos = 0, 0
    for _ in range(n):
        ln, pos = _varint(raw, pos)
        crc = crc32c(struct.pack("<I" if ln <= 0xFFFFFFFF else "<Q", ln), crc)
    return crc32c(raw[pos:], crc)


def _decode(info: TensorInfo, raw: bytes, name: str) -> np.ndarray:
    n = int(np.prod(info.shape)) if info.shape else 1
    if info.dtype == "string":
        lens, pos = [], 0
        for _ in range(n):
            ln, pos = _varint(raw, pos)
            lens.append(ln)
        pos += 4  # masked crc32c of the lengths
        vals = []
        for ln in lens:
            vals.append(raw[pos:pos + ln])
            pos += ln
        return np.array(vals, dtype=object).reshape(info.shape)
    dt = np.dtype(info.dtype) if info.dtype in {d.name for d in TF_DTYPES.values()} else None
    if dt is None:
        raise BundleError(f"{name}: unsupported dtype {info.dtype}")
    if n * dt.itemsize != info.size:
        raise BundleError(f"{name}: size {info.size} does not match {info.dtype}{list(info.shape)}")
    return np.frombuffer(raw, dtype=dt).reshape(info.shape).copy()


def read_bundle(prefix: str | Path, names: Iterable[str] | None = None,
                verify_crc: bool | None = None) -> dict[str, np.ndarray]:
    """Read tensors (all, or ``names``) of a checkpoint into numpy arrays (strings: object arrays of bytes).
    ``verify_crc``: check each tensor's CRC32C (default: only for tensors under 1 MB; pure Python is slow)."""
    header, index = _read_index_full(prefix)
    wanted = list(index) if names is None else list(names)
    missing = [n for n in wanted if n not in index]
    if missing:
        raise BundleError(f"{len(missing)} tensors not in the checkpoint, e.g. {missing[:3]}")
    paths = shard_paths(prefix, header["num_shards"])
    files: dict[int, object] = {}
    out = {}
    try:
        for name in wanted:
            info = index[name]
            if info.sliced:
                raise BundleError(f"{name}: partitioned (sliced) variables are not supported")
            if info.shard not in files:
                if not paths[info.shard].is_file():
                    raise BundleError(f"checkpoint data shard not found: {paths[info.shard]}")
                files[info.shard] = open(paths[info.shard], "rb")
            f = files[info.shard]
            f.seek(info.offset)
            raw = f.read(info.size)
            if len(raw) != info.size:
                raise BundleError(f"{name}: data shard truncated")
            check = verify_crc if verify_crc is not None else info.size < (1 << 20)
            if check and info.crc32c is not None and _mask(_tensor_crc(info, raw)) != info.crc32c:
                raise BundleError(f"{name}: CRC32C mismatch (corrupt data shard?)")
            out[name] = _decode(info, raw, name)
    finally:
        for f in files.values():
            f.close()
    return out


# --------------------------------------------------------------------------- PRNet import
def _is_optimizer_slot(name: str) -> bool:
    return name.endswith(("/Adam", "/Adam_1")) or name in ("beta1_power", "beta2_power")


def verify_prnet_tensors(index: dict[str, TensorInfo], width: int = 16) -> dict[str, tuple[str, str]]:
    """Check that every tensor of ResFCN256(width) is in ``index`` with the right float32 shape.

    Returns the TF name -> (torch key, kind) map; raises BundleError listing the problems. Optimizer slots
    (``*/Adam``, ``*/Adam_1``, ``beta*_power``) are ignored; other unknown tensors only warn."""
    from .network import ResFCN256, tf_name_map
    model = ResFCN256(width)
    nm = tf_name_map(model)
    sd = model.state_dict()
    problems = []
    for tf_name, (key, kind) in nm.items():
        shp = tuple(sd[key].shape)
        want = (shp[2], shp[3], shp[1], shp[0]) if kind in ("conv", "deconv") else shp
        info = index.get(tf_name)
        if info is None:
            problems.append(f"missing {tf_name}")
        elif tuple(info.shape) != want or info.dtype != "float32":
            problems.append(f"{tf_name}: {info.dtype}{list(info.shape)}, expected float32{list(want)}")
    if problems:
        raise BundleError(f"checkpoint does not match ResFCN256(width={width}): {len(problems)} problems: "
                          + "; ".join(problems[:8]))
    extra = [n for n in index if n not in nm and not _is_optimizer_slot(n)]
    if extra:
        warnings.warn(f"checkpoint has {len(extra)} unexpected tensors (ignored), e.g. {extra[:3]}")
    return nm


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def import_prnet_checkpoint(prefix: str | Path, out_path: str | Path) -> Path:
    """Convert the official PRNet TF checkpoint (``.../256_256_resfcn256_weight``) into a prn_blender float32
    safetensors file for layout ``prnet-bfm`` plus a model card ``<out without suffix>.md``. Returns ``out_path``."""
    import torch

    from .network import ResFCN256
    from .weights import save_weights

    prefix = _prefix(prefix)
    header, index = _read_index_full(prefix)
    nm = verify_prnet_tensors(index)
    shards = shard_paths(prefix, header["num_shards"])
    for s in shards:
        if not s.is_file():
            raise BundleError(f"checkpoint data shard not found: {s}")
    digests = [_sha256(s) for s in shards]
    official = len(digests) == 1 and digests[0] == OFFICIAL_PRNET_SHA256
    if not official:
        warnings.warn(f"data shard sha256 {digests[0] if len(digests) == 1 else digests} differs from the official "
                      f"PRNet release ({OFFICIAL_PRNET_SHA256}); importing anyway")
    arrays = read_bundle(prefix, names=list(nm), verify_crc=False)
    model = ResFCN256(16)
    sd = {}
    for tf_name, (key, kind) in nm.items():
        a = arrays[tf_name].astype(np.float32)
        if kind in ("conv", "deconv"):
            a = a.transpose(3, 2, 0, 1)
        sd[key] = torch.from_numpy(np.ascontiguousarray(a))
    res = model.load_state_dict(sd, strict=False)
    missing = [k for k in res.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or res.unexpected_keys:
        raise BundleError(f"state_dict mismatch: missing {missing[:3]}, unexpected {res.unexpected_keys[:3]}")
    meta = {"source": "PRNet TensorFlow checkpoint (YadiraF/PRNet release format, 256_256_resfcn256_weight)",
            "source_prefix": prefix.name, "data_sha256": digests[0] if len(digests) == 1 else digests,
            "official_sha256": official, "tf_tensors": len(nm),
            "license": "research-only (PRNet weights); user-supplied, not redistributed",
            "inference_zoom": 1.0,                                # PRNet's own crop convention
            "imported": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    out = save_weights(model.eval(), out_path, PRNET_LAYOUT, meta, dtype=torch.float32)
    card = out.with_suffix(".md")
    card.write_text(
        f"# {out.name}\n\n"
        f"{'Official' if official else 'Unverified (not the official release)'} PRNet ResFCN256 weights "
        "(Feng et al., ECCV 2018) converted from the TensorFlow checkpoint by "
        "`prn_blender.core.tf_bundle.import_prnet_checkpoint`.\n\n"
        f"- Source: `{prefix.name}` (.index + {', '.join(s.name for s in shards)})\n"
        f"- Data shard sha256: `{meta['data_sha256']}`"
        f" ({'matches' if official else 'DIFFERS FROM'} the official release `{OFFICIAL_PRNET_SHA256}`)\n"
        f"- Tensors: {len(nm)} (optimizer slots dropped), float32, UV layout `{PRNET_LAYOUT}`\n"
        f"- Imported: {meta['imported']}\n\n"
        "## License\n\nThe PRNet weights are released for **research purposes only**. They are supplied by the user "
        "and are not distributed with prn_blender; do not redistribute this file or use it commercially.\n")
    return out
