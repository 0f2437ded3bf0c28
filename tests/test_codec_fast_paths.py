"""The fast EDEN kernels (issue 21) compute exactly what the plain definitions do: grid-lookup
codes = bucketize, word-shift packing = the documented bit stream, LUT signs = rademacher, the
fused decode = scale, inverse-rotate, truncate."""
from __future__ import annotations

import pytest
import torch
from thinwire.compression import bitpack
from thinwire.compression.eden import _unrotate, chunk_sizes, rotated_estimate
from thinwire.compression.eden_quant import bin_codes, boundaries, centroids
from thinwire.compression.hadamard import rademacher, sign_masks, signed_copy

from thinwire import compression as C


def _reference_stream(codes: torch.Tensor, bits: int) -> bytes:
    """The layout bitpack documents: code i at stream bits [b*i, b*i + b), LSB first."""
    acc = 0
    for i, c in enumerate(codes.tolist()):
        acc |= int(c) << (bits * i)
    return acc.to_bytes((codes.numel() * bits + 7) // 8, "little")


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("n", [8, 64, 1000, 4096])
def test_pack_matches_the_documented_stream(bits, n):
    codes = torch.randint(0, 1 << bits, (n,), dtype=torch.uint8, generator=torch.Generator().manual_seed(n + bits))
    packed = bitpack.pack(codes, bits)
    assert packed.numpy().tobytes() == _reference_stream(codes, bits)
    assert torch.equal(bitpack.unpack(packed, bits, n), codes)
    table = torch.randn(1 << bits)
    assert torch.equal(bitpack.unpack_lookup(packed, bits, n, table), table[codes.long()])


@pytest.mark.parametrize("bits", range(1, 9))
def test_grid_codes_equal_bucketize_including_ties_and_extremes(bits):
    g = torch.Generator().manual_seed(bits)
    rms = 0.37
    thr = boundaries(bits) * rms
    y = torch.randn(1 << 15, generator=g) * rms
    y[:len(thr)] = thr                                         # exactly on every threshold
    y[len(thr):2 * len(thr)] = torch.nextafter(thr, torch.full_like(thr, 9.0))   # one ulp above
    y[2 * len(thr):3 * len(thr)] = torch.nextafter(thr, torch.full_like(thr, -9.0))
    y[-4:] = torch.tensor([1e30, -1e30, 0.0, -0.0])
    codes, q = bin_codes(y, thr, bits, rms)
    ref = torch.bucketize(y, thr)
    assert torch.equal(codes.long(), ref)
    assert torch.equal(q, centroids(bits)[ref])
    odd = y[:1001]                                             # length not a multiple of 8
    assert torch.equal(bin_codes(odd, thr, bits, rms)[0].long(), torch.bucketize(odd, thr))


def test_lut_signs_equal_rademacher():
    for n in (1, 7, 8, 1000):
        s = rademacher(n, 42)
        m = sign_masks(n, 42)
        x = torch.randn(n)
        out = torch.full((n + 5,), 3.0)
        signed_copy(x, 42, out)
        assert torch.equal(out[:n], x * s) and torch.equal(out[n:], torch.full((5,), 3.0))
        assert torch.equal(m != 0, s < 0)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 6])
@pytest.mark.parametrize("d,max_chunk", [(4096, 1 << 24), (5000, 1 << 24), (3 * 1024 + 100, 1024)])
def test_fused_decode_equals_the_general_path(bits, d, max_chunk):
    x = torch.randn(d, generator=torch.Generator().manual_seed(d))
    codec = C.get("eden", bits=bits, max_chunk=max_chunk)
    enc = C.Encoded.from_bytes(codec.encode(x, C.Context(seed=1, client_id=3)).to_bytes())
    fast = codec.decode(enc)
    lay, rot = rotated_estimate(enc)
    general = _unrotate(rot, lay, int(enc.meta["seed"]), enc.numel)
    assert len(chunk_sizes(d, 0.1, max_chunk)) >= 1
    assert torch.equal(fast, general)


@pytest.mark.parametrize("slab", [1 << 9, 1 << 17])
@pytest.mark.parametrize("n,D", [(1 << 12, 1 << 12), (3000, 1 << 12), (1 << 13, 1 << 13), (100, 128), (5, 8)])
def test_fused_rotations_equal_signs_then_transform(monkeypatch, slab, n, D):
    """rotate_into / unrotate_ fold the signs and the scaling into the transform's first / last
    stage, in slabs (small slabs force the column-block path and slabs straddling the padding):
    bit for bit what the separate passes give."""
    import thinwire.compression.hadamard as H
    monkeypatch.setattr(H, "_SLAB", slab)
    monkeypatch.setattr(H, "_SLAB_THREADED", slab)
    x = torch.randn(n, generator=torch.Generator().manual_seed(n))
    want = torch.zeros(D)
    H.fwht_(signed_copy(x, 7, want))
    got = torch.full((D,), float("nan"))
    assert torch.equal(H.rotate_into(x, 7, got), want)
    back = H.apply_signs_(H.fwht_(want.clone()), 7)
    assert torch.equal(H.unrotate_(want.clone(), 7), back)
    torch.testing.assert_close(back[:n], x, rtol=0, atol=1e-5)


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
@pytest.mark.parametrize("n", [1 << 16, 3 * (1 << 16) + 40, 1001])
def test_slabbed_quantize_equals_codes_then_pack(monkeypatch, bits, n):
    """quantize: the codes (packed or not) and the float64 sums of the unfused definition."""
    import thinwire.compression.eden_quant as Q
    monkeypatch.setattr(Q, "_QUANT_SLAB", 1 << 16)
    y = torch.randn(n, generator=torch.Generator().manual_seed(bits))
    rms = float(y.pow(2).mean().sqrt())
    thr = boundaries(bits) * rms
    codes, q = bin_codes(y, thr, bits, rms)
    got, qy, qq = Q.quantize(y, thr, bits, rms, need_qq=True)
    assert torch.equal(got, codes) and qy == Q.dot64(q, y) and qq == Q.dot64(q, q)
    packed, qy2, _ = Q.quantize(y, thr, bits, rms, need_qq=False, pack=True)
    assert torch.equal(packed, bitpack.pack(codes, bits)) and qy2 == qy
