"""`thinwire.ddp.comm_hook`: the public path of the DistributedDataParallel communication hook
(implemented in `thinwire.collective.ddp`, beside the all-reduce engine whose update rule it shares)."""
from thinwire.collective.ddp import HookState, comm_hook, compressed_hook

__all__ = ["HookState", "comm_hook", "compressed_hook"]
