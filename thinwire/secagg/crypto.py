"""The cryptographic primitives of secure aggregation, all from the `cryptography` package:
X25519 key agreement, HKDF-SHA256 key derivation, AES-256-GCM envelopes for Shamir shares (a
tampered or misrouted share fails its tag and is refused), and AES-256-CTR as the pseudorandom
generator that expands a 32-byte seed into a mask vector of k-bit integers."""
from __future__ import annotations

import hashlib

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_BYTES = 32
_RAW = dict(encoding=serialization.Encoding.Raw, format=serialization.PublicFormat.Raw)


class KeyPair:
    """An X25519 key pair; `secret` is the raw 32-byte private key (what Shamir shares)."""

    def __init__(self, private: X25519PrivateKey | None = None) -> None:
        self.private = private or X25519PrivateKey.generate()
        self.public = self.private.public_key().public_bytes(**_RAW)

    @property
    def secret(self) -> bytes:
        return self.private.private_bytes(encoding=serialization.Encoding.Raw,
                                          format=serialization.PrivateFormat.Raw,
                                          encryption_algorithm=serialization.NoEncryption())

    @classmethod
    def from_secret(cls, secret: bytes) -> "KeyPair":
        return cls(X25519PrivateKey.from_private_bytes(secret))


def agree(private: X25519PrivateKey, peer_public: bytes, info: bytes) -> bytes:
    """A 32-byte key both ends derive: HKDF-SHA256(X25519(private, peer), info)."""
    shared = private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(shared)


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """AES-256-GCM with a 96-bit nonce that is unique per key (each pair key seals one message)."""
    return AESGCM(key).encrypt(b"\0" * 12, plaintext, aad)


def open_sealed(key: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    """Decrypt and authenticate; ValueError when the ciphertext or its context was tampered with."""
    try:
        return AESGCM(key).decrypt(b"\0" * 12, ciphertext, aad)
    except InvalidTag:
        raise ValueError("share: authentication failed (tampered, or not addressed to this client)") from None


def prg(seed: bytes, count: int, bits: int) -> np.ndarray:
    """`count` integers uniform in [0, 2^bits) from AES-256-CTR keyed by the 32-byte seed (uint64)."""
    enc = Cipher(algorithms.AES(seed), modes.CTR(b"\0" * 16)).encryptor()
    raw = np.frombuffer(enc.update(b"\0" * (8 * count)), dtype=np.uint64)
    return raw & np.uint64((1 << bits) - 1)


def digest(*parts: bytes) -> bytes:
    """SHA-256 over length-prefixed parts (commitments to shares)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(4, "big"))
        h.update(p)
    return h.digest()
