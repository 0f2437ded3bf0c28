"""Client state store: per-client state (error-feedback residuals, task kinds' own state) kept
outside the actors, so any worker actor can run any virtual client and a 10,000-client fleet
costs memory only for the clients that actually carry state."""
from __future__ import annotations

from dataclasses import asdict
from typing import Any

from thinwire.client.runtime import ClientState


class ClientStateStore:
    def __init__(self) -> None:
        self._states: dict[int, dict[str, Any]] = {}

    def get(self, client_id: int) -> ClientState | None:
        s = self._states.get(client_id)
        return None if s is None else ClientState(**s)

    def put(self, client_id: int, state: ClientState) -> None:
        if not state.empty:
            self._states[client_id] = asdict(state)

    def state_dict(self) -> dict[int, dict[str, Any]]:
        return dict(self._states)

    def load_state_dict(self, state: dict[int, dict[str, Any]]) -> None:
        self._states = {int(k): v for k, v in state.items()}
