"""Secure aggregation math (issue 23): the server learns only the sum of a round's integer vectors.

Bonawitz et al. 2017 (CCS, "Practical Secure Aggregation for Privacy-Preserving Machine Learning"),
semi-honest variant with double masking, over the sparse neighbour graph of SecAgg+ (Bell et al.
2020). Modules, one job each: `shamir` (t-of-n secret sharing over a prime field), `crypto`
(X25519 agreement, HKDF, AES-GCM share envelopes, the AES-CTR mask generator), `masks` (the
neighbour graph, mask vectors mod 2^k, bit packing), `protocol` (client and server state of one
round, and an in-process driver), `quantize` (the codecs whose messages add: shared random block
and an integer stochastic quantizer after a shared rotation)."""
from thinwire.secagg.protocol import (SecAggClient, SecAggError, SecAggParams, SecAggServer, run_round)

__all__ = ["SecAggClient", "SecAggError", "SecAggParams", "SecAggServer", "run_round"]
