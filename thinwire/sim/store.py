"""Client state store: per-client state (error-feedback residuals) kept outside the actors, so
any worker actor can run any virtual client and a 10,000-client fleet costs memory only for the
clients that actually carry state."""
from __future__ import annotations

from typing import Any

from thinwire.client.update import ClientState


class ClientStateStore:
    def __init__(self) -> None:
        self._states: dict[int, dict[str, Any]] = {}

    def get(self, client_id: int) -> ClientState | None:
        s = self._states.get(client_id)
        return None if s is None else ClientState(memory=s["memory"], rounds=s["rounds"])

    def put(self, client_id: int, state: ClientState) -> None:
        if state.memory or state.rounds:
            self._states[client_id] = {"memory": state.memory, "rounds": state.rounds}

    def state_dict(self) -> dict[int, dict[str, Any]]:
        return dict(self._states)

    def load_state_dict(self, state: dict[int, dict[str, Any]]) -> None:
        self._states = {int(k): v for k, v in state.items()}
