"""Sequential gradient coding (GC, SR-SGC, M-SGC), shared by the server strategy and the client kind:
`matrices` (gradient codes: encode / decode matrices), `schemes` (the master's per-round state of
each scheme), `jobs` (job batches, partial gradients and the coded messages workers send),
`runtime` (virtual-clock runtime on a delay profile and the paper's parameter search).
The strategy is `thinwire.server.strategy.sgc`, the client kind `thinwire.client.kinds.coded_gradient`."""
