"""Arbitrary bytes never raise anything but our typed errors."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chat.core import MalformedFrame, PeerError, Session, frame_kind
from chat.core.frames import (
    pad,
    parse_auth,
    parse_hello,
    parse_payload,
    parse_record,
    unpad,
)
from chat.core.limits import MAX_FRAME
from tests.core.core_support import ALICE, BOB, FAST, established, make_session

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


def _unpad_as_specified(padded: bytes) -> bytes | None:
    # protocol.md section 7.3, literally: strip trailing zeros, then one 0x80.
    stripped = padded.rstrip(b"\x00")
    return stripped[:-1] if stripped.endswith(b"\x80") else None


@FAST
@given(
    data=st.one_of(
        st.binary(max_size=300),
        st.tuples(st.binary(max_size=40), st.integers(0, 40)).map(
            lambda t: t[0] + b"\x80" + bytes(t[1])
        ),
    )
)
def test_unpad_follows_the_spec_on_any_bytes(data: bytes) -> None:
    expected = _unpad_as_specified(data)
    if expected is None:
        with pytest.raises(MalformedFrame):
            unpad(data)
    else:
        assert unpad(data) == expected


@FAST
@given(plaintext=st.binary(max_size=5000))
def test_pad_then_unpad_is_the_identity_in_a_bucket(plaintext: bytes) -> None:
    padded = pad(plaintext)
    assert len(padded) == max(256, 1 << len(plaintext).bit_length())
    assert unpad(padded) == plaintext
