"""Arbitrary bytes as envelopes never take the relay down.

The relay runs in its own thread and event loop for the whole module, so
that hypothesis can drive a plain (synchronous) test with real clients.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from chat.envelope import Join, Joined, Welcome, decode_relay, encode
from server.relay import Relay
from tests.relay_helpers import DEADLINE, http_get, make_config


class RelayThread:
    """A relay serving from a background thread until `stop`."""

    def __init__(self, data_dir: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.relay = Relay(make_config(data_dir))
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.relay.start(), self.loop).result(DEADLINE)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.relay.stop(), self.loop).result(DEADLINE)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(DEADLINE)
        self.loop.close()


@pytest.fixture(scope="module")
def relay_thread(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayThread]:
    running = RelayThread(tmp_path_factory.mktemp("fuzz"))
    yield running
    running.stop()


def _still_serves(url: str) -> None:
    """A fresh client can still join a room, and /healthz says 200."""
    with connect(url, compression=None, open_timeout=DEADLINE) as client:
        assert isinstance(decode_relay(client.recv(DEADLINE)), Welcome)
        client.send(encode(Join(os.urandom(32), os.urandom(32))))
        assert isinstance(decode_relay(client.recv(DEADLINE)), Joined)
    assert http_get(url, "/healthz")[0] == 200


def _answers_or_closes(client: ClientConnection) -> None:
    """After the fuzz bytes, a good JOIN is answered, or the relay has closed.

    Whatever the relay said to the fuzz bytes comes first and is skipped; a
    relay that neither answers nor closes fails with a timeout.
    """
    room_id = os.urandom(32)
    try:
        client.send(encode(Join(room_id, os.urandom(32))))
        while True:
            message = decode_relay(client.recv(DEADLINE))
            if isinstance(message, Joined) and message.room_id == room_id:
                return
    except ConnectionClosed:
        return


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    st.one_of(
        st.binary(max_size=200),
        st.binary(max_size=120).map(lambda body: b"\x01" + body),
        st.tuples(st.sampled_from([1, 2, 3, 4]), st.binary(max_size=120)).map(
            lambda pair: bytes([1, pair[0]]) + pair[1]
        ),
    )
)
def test_arbitrary_envelopes_never_take_the_relay_down(
    relay_thread: RelayThread, data: bytes
) -> None:
    url = relay_thread.relay.url
    with connect(url, compression=None, open_timeout=DEADLINE) as client:
        client.recv(DEADLINE)
        client.send(data)
        _answers_or_closes(client)
    _still_serves(url)
