"""Fast Walsh-Hadamard transform and bit packing: exact algebraic properties."""
import math

import pytest
import torch

from thinwire.compression import bitpack, hadamard as H


def _dense_h(D):
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < D:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / math.sqrt(D)


@pytest.mark.parametrize("D", [1, 2, 8, 64, 128, 2048])
def test_fwht_matches_dense_sylvester_matrix(D):
    x = torch.randn(D, dtype=torch.float64)
    want = (_dense_h(D) @ x).float()
    got = H.fwht_(x.float().clone())
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5 * math.sqrt(math.log2(D) + 1))


def test_fwht_self_inverse_norm_preserving_and_slabbed(monkeypatch):
    x = torch.randn(1 << 15)
    y = H.fwht_(x.clone())
    assert abs(float(y.norm() / x.norm()) - 1) < 1e-5
    torch.testing.assert_close(H.fwht_(y.clone()), x, rtol=0, atol=1e-5)
    monkeypatch.setattr(H, "_SLAB", 1 << 9)  # force the bounded-memory slab loop
    monkeypatch.setattr(H, "_SLAB_THREADED", 1 << 9)
    torch.testing.assert_close(H.fwht_(x.clone()), y, rtol=0, atol=1e-5)


def test_next_pow2_does_not_double_powers_of_two():
    assert [H.next_pow2(d) for d in (1, 2, 3, 4, 5, 1024, 1025)] == [1, 2, 4, 4, 8, 1024, 2048]
    with pytest.raises(ValueError):
        H.next_pow2(0)
    with pytest.raises(ValueError, match="power of two"):
        H.fwht_(torch.zeros(6))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_rht_roundtrip_any_float_dtype(dtype):
    x = torch.randn(1000).to(dtype)
    y = H.rht(x, seed=7)
    assert y.dtype == torch.float32 and y.numel() == 1024
    back = H.irht_(y.clone(), seed=7, d=1000)
    torch.testing.assert_close(back, x.float(), rtol=0, atol=1e-5)


def test_rademacher_deterministic_and_balanced():
    a, b = H.rademacher(1 << 16, 3), H.rademacher(1 << 16, 3)
    assert torch.equal(a, b) and set(a.unique().tolist()) == {-1.0, 1.0}
    assert abs(float(a.mean())) < 5 / math.sqrt(1 << 16)
    assert not torch.equal(a, H.rademacher(1 << 16, 4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x = torch.randn(5000)
    torch.testing.assert_close(H.rht(x.cuda(), 11).cpu(), H.rht(x, 11), rtol=0, atol=1e-5)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("n", [1, 7, 8, 1001])
def test_pack_roundtrip_and_size(bits, n):
    codes = torch.randint(0, 1 << bits, (n,), dtype=torch.uint8)
    packed = bitpack.pack(codes, bits)
    assert packed.numel() == math.ceil(n * bits / 8) == bitpack.packed_size(n, bits)
    assert torch.equal(bitpack.unpack(packed, bits, n), codes)


@pytest.mark.parametrize("bits", [1, 3, 5, 8])
def test_lost_bytes_map_to_known_contiguous_codes(bits):
    n = 4000
    codes = torch.randint(0, 1 << bits, (n,), dtype=torch.uint8)
    packed = bitpack.pack(codes, bits)
    s, e = 101, 160
    damaged = packed.clone()
    damaged[s:e] ^= 0xFF  # flip every bit in the lost range
    out = bitpack.unpack(damaged, bits, n)
    ok = bitpack.received_mask(n, bits, [(s, e)])
    a, b = bitpack.lost_codes(s, e, bits)
    assert torch.equal(out[ok], codes[ok])                 # everything outside is intact
    assert bool((out[a:b] != codes[a:b]).all())            # every code inside was touched
    assert b - a == pytest.approx(8 * (e - s) / bits, abs=2)


def test_bad_bits():
    for bad in (0, 9, 2.5, True):
        with pytest.raises(ValueError, match="bits"):
            bitpack.pack(torch.zeros(3, dtype=torch.uint8), bad)


@pytest.mark.parametrize("bits", range(1, 9))
def test_unpack_lookup_equals_unpack_then_take(bits):
    n = 999
    codes = torch.randint(0, 1 << bits, (n,), dtype=torch.uint8)
    table = torch.randn(1 << bits)
    got = bitpack.unpack_lookup(bitpack.pack(codes, bits), bits, n, table)
    assert torch.equal(got, table[codes.long()])


def test_apply_signs_matches_rademacher_multiply():
    y = torch.randn(1003)
    want = y * H.rademacher(1003, 42)
    assert torch.equal(H.apply_signs_(y.clone(), 42), want)
