"""Arbitrary bytes never raise anything but our typed errors."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable

import pytest
from core_support import ALICE, BOB, FAST, established, make_session
from hypothesis import given
from hypothesis import strategies as st

from chat.core import PeerError, Session, frame_kind
from chat.core.frames import parse_auth, parse_hello, parse_payload, parse_record, unpad
from chat.core.limits import MAX_FRAME

PARSERS: list[Callable[[bytes], object]] = [
    frame_kind,
    parse_hello,
    parse_auth,
    parse_record,
    parse_payload,
    unpad,
]

# Inputs that look like frames often enough to get past the first checks.
frames = st.one_of(
    st.binary(max_size=400),
    st.tuples(st.sampled_from([1, 2, 3]), st.binary(max_size=320)).map(
        lambda t: b"\x01" + bytes([t[0]]) + t[1]
    ),
    st.sampled_from([64, 112, 284]).flatmap(
        lambda n: st.binary(min_size=n, max_size=n).map(
            lambda b: b"\x01" + bytes([{64: 1, 112: 2, 284: 3}[n]]) + b
        )
    ),
)


@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: p.__name__)
@FAST
@given(data=frames)
def test_parsers_raise_only_typed_errors(
    parser: Callable[[bytes], object], data: bytes
) -> None:
    with contextlib.suppress(PeerError):
        parser(data)


def _idle() -> Session:
    return make_session(BOB)


def _waiting() -> Session:
    session = make_session(ALICE)
    session.start()
    return session


def _established() -> Session:
    return established()[1]


SESSIONS = {"idle": _idle(), "hello-sent": _waiting(), "established": _established()}


@pytest.mark.parametrize("state", sorted(SESSIONS))
@FAST
@given(data=frames)
def test_session_raises_only_typed_errors(state: str, data: bytes) -> None:
    session = copy.deepcopy(SESSIONS[state])
    with contextlib.suppress(PeerError):
        session.receive(data, 1)


@pytest.mark.parametrize("size", [MAX_FRAME + 1, 10 * MAX_FRAME])
def test_session_refuses_oversized_input(size: int) -> None:
    session = _established()
    with pytest.raises(PeerError, match="too large"):
        session.receive(b"\x01\x03" + bytes(size - 2), 1)
