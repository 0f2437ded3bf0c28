"""The SecAgg RPC (secure aggregation's key exchange, `--strategy secagg`) against the served
round's `SecAggSession`: one request, one step. Polls answer ready=false until the step's messages
are all in, and abandoned=true to a client the round went on without."""
from __future__ import annotations

from typing import TYPE_CHECKING

from thinwire.secagg import wire
from thinwire.secagg.protocol import SecAggError
from thinwire.secagg.session import StepError
from thinwire.wire.format import WireError

if TYPE_CHECKING:  # pragma: no cover
    from thinwire.server.app import ParameterServer


def secagg_step(ps: "ParameterServer", req, pb2):
    """The reply to one SecAgg call, or WireError: INVALID_ARGUMENT for a malformed message,
    FAILED_PRECONDITION for one at the wrong step, from a client not in the round, or sent twice."""
    s, cid = ps.session, req.client_id
    if s is None or req.round != ps.current_round:
        if req.round > ps.current_round:
            raise WireError("FAILED_PRECONDITION", f"round {req.round} has not started (current {ps.current_round})")
        return pb2.SecAggReply(abandoned=True, message=f"round {req.round} has no secure aggregation in progress")
    S = pb2.SecAggRequest
    try:
        if req.step == S.ADVERTISE:
            s.advertise(cid, req.c_public, req.s_public)
        elif req.step == S.SHARE_KEYS:
            s.share(cid, *wire.parse_shares(req))
        elif req.step == S.REVEAL:
            s.reveal(cid, wire.parse_reveals(cid, req))
        elif req.step == S.ROSTER:
            roster = s.roster()
            if roster is not None:
                return wire.roster_reply(pb2, roster) if cid in roster else _abandon(pb2, cid, "the roster")
        elif req.step == S.SHARES:
            got = s.inbox(cid)
            if got is not None:
                return wire.shares_reply(pb2, *got) if cid in got[1] else _abandon(pb2, cid, "U1")
        elif req.step == S.SURVIVORS:
            u2 = s.survivors()
            if u2 is not None:
                return wire.survivors_reply(pb2, u2) if cid in u2 else _abandon(pb2, cid, "U2")
        else:
            raise WireError("INVALID_ARGUMENT", f"step: {req.step}; allowed: 0..5")
    except StepError as e:
        raise WireError("FAILED_PRECONDITION", str(e)) from None
    except (SecAggError, ValueError) as e:
        raise WireError("INVALID_ARGUMENT", str(e)) from None
    if s.error is not None:
        return pb2.SecAggReply(abandoned=True, message=f"secure aggregation failed: {s.error}")
    ready = req.step in (S.ADVERTISE, S.SHARE_KEYS, S.REVEAL)
    return pb2.SecAggReply(ready=ready, retry_after_s=0.0 if ready else 0.1)


def _abandon(pb2, cid: int, what: str):
    return pb2.SecAggReply(abandoned=True, message=f"client {cid} is not in {what}: the round goes on without it")
