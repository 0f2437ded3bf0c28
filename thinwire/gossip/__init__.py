"""Decentralized training without a server (`thinwire decentralized`): peers on a graph gossip
compressed messages with their neighbours.

`topology` (graphs, mixing matrices), `step` (DProxSGT / CDProxSGT / ChocoSGD per-peer math),
`p2p` (torch.distributed neighbour exchange), `clock` (simulated time of synchronous gossip),
`engine` (local and Ray engines, the run), `config` and `command` (settings and CLI)."""
