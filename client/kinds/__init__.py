"""Client task kinds: the registry (`registry`) and the built-in kinds, one module each: `train`
(`local_sgd`), `coded_gradient`, `jacobian`. Public plug-in API:
`from thinwire.client.kinds import register_kind, train, ClientContext, KindOutput`."""
from thinwire.client.kinds.registry import (BUILTIN_MODULES, ClientContext, KindFn, KindOutput, available_kinds,
                                            get_kind, register_kind)
from thinwire.client.kinds.local_sgd import train, train_params

__all__ = ["BUILTIN_MODULES", "ClientContext", "KindFn", "KindOutput", "available_kinds", "get_kind", "register_kind",
           "train", "train_params"]
