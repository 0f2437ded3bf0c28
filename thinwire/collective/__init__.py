"""Data-parallel training with compressed all-reduce (`thinwire allreduce`, the DDP hook).

`group` (process group + Ray peer actors, shared with the decentralized engine), `reducer` (mean of
C(p_k) with the collective that fits the codec), `allreduce` (DEF / DEF-A step math, tensors only),
`worker` (the rank actor), `engine` (the run), `ddp` (the DDP communication hook), `config` and
`command` (settings and CLI)."""
