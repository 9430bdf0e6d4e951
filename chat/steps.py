"""The handshake and rekey steps of a session, kept for the security panel.

The protocol core narrates a session through teaching events
(chat.core.teaching), the same ones `saltchat demo` and `--show-handshake`
show. The client keeps a few of them for each peer's current session, so
that `/keys` can show how the session it describes was established: the
steps of the handshake that led to it (protocol.md section 5) and the last
rekeys (section 9).

Only steps whose fields are public values or short hashes are kept
(:data:`RECORDED_STEPS`). "seal" and "open", which carry plaintext and
nonces, never are; nor is "rejected": the panel counts rejected frames by
reason, and a stream of them must not push the handshake out.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from chat.core.teaching import STEPS, TeachingEvent
from chat.limits import HANDSHAKE_STEPS_KEPT, REKEY_STEPS_KEPT

__all__ = ["RECORDED_STEPS", "SessionSteps"]

RECORDED_STEPS = frozenset(STEPS) - {"seal", "open", "rejected"}
"""Steps whose fields are public values or short hashes of secrets."""


class SessionSteps:
    """The steps of one session: its handshake, then its last rekeys.

    Steps arrive into a bounded window; "established" closes the window and
    makes it the session's handshake, so that a later handshake in the same
    session (the peer restarted) replaces it whole, and frames repeated after
    the handshake never push its steps out.
    """

    def __init__(self) -> None:
        """Start with no step."""
        self._window: deque[TeachingEvent] = deque(maxlen=HANDSHAKE_STEPS_KEPT)
        self._handshake: tuple[TeachingEvent, ...] = ()
        self._rekeys: deque[TeachingEvent] = deque(maxlen=REKEY_STEPS_KEPT)

    def record(self, event: TeachingEvent) -> None:
        """Keep `event` if it is one of RECORDED_STEPS (an Observer)."""
        if event.step not in RECORDED_STEPS:
            return
        if event.step == "rekey":
            self._rekeys.append(event)
            return

        self._window.append(event)
        if event.step == "established":
            self._handshake = tuple(self._window)
            self._window.clear()
            self._rekeys.clear()

    def steps(self) -> list[dict[str, Any]]:
        """The steps to show, oldest first, each as `step` and `fields`.

        The established handshake, or the one under way if none is; then
        the last rekeys.
        """
        shown = self._handshake or tuple(self._window)
        return [
            {"step": event.step, "fields": dict(event.fields)}
            for event in (*shown, *self._rekeys)
        ]
