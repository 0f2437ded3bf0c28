"""NTK-FL math shared by the server strategy and the client kind: `jacobian` (the client's sample-wise
Jacobian), `projection` (CP-NTK-FL's seeded random projection), `shuffler` (rows permuted across
clients), `kernel` (trace kernel, linearised evolution, weight update) and `round` (one server round:
pool, evolve, pick tau). The strategy is `thinwire.server.strategy.ntk`, the client kind
`thinwire.client.kinds.jacobian`."""
