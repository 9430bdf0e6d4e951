"""Rooms: ids and keys derived from invite secrets and room names."""

from __future__ import annotations

import pytest

from chat.core import RoomKeys
from chat.core.kdf import LABEL_ROOM_ID, LABEL_ROOM_KEY, kdf
from chat.core.rooms import ROOM_NAME_TRIMMED, room_name_password
from tests.core.test_core_vectors import VECTORS


def test_room_keys_follow_the_spec() -> None:
    secret = bytes(range(32))
    room = RoomKeys.from_secret(secret)
    assert room.room_id == kdf(secret, LABEL_ROOM_ID)
    assert room.room_key.reveal() == kdf(secret, LABEL_ROOM_KEY)


def test_room_id_and_room_key_differ() -> None:
    room = RoomKeys.from_secret(RoomKeys.new_secret())
    assert room.room_id != room.room_key.reveal()


def test_room_name_gives_the_known_answer_keys() -> None:
    # Known answers, not the code compared with itself: a change to how a name
    # becomes a room (protocol.md section 3.2) moves every member's room.
    for case in VECTORS["room_names"]:
        room = RoomKeys.from_name(case["name"])
        assert (room.room_id.hex(), room.room_key.reveal().hex()) == (
            case["room_id"],
            case["room_key"],
        )


def test_different_room_names_give_different_rooms() -> None:
    assert RoomKeys.from_name("kitchen").room_id != RoomKeys.from_name("garden").room_id


def test_secret_must_be_32_bytes() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        RoomKeys.from_secret(b"short")


def test_empty_room_name_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        RoomKeys.from_name("")


def test_room_name_typed_decomposed_is_the_same_room() -> None:
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    room = RoomKeys.from_name(composed)
    assert room.room_id == RoomKeys.from_name(decomposed).room_id


def test_room_name_password_is_utf8_of_the_nfc_form() -> None:
    assert room_name_password("cafe\u0301") == "caf\u00e9".encode()


def test_white_space_at_both_ends_is_trimmed() -> None:
    assert room_name_password("\u3000\t kitchen \u00a0\n") == b"kitchen"


def test_inner_white_space_and_case_are_kept() -> None:
    assert room_name_password("My  Kitchen") == b"My  Kitchen"


@pytest.mark.parametrize("kept", ["\u200b", "\x1c", "\ufeff"])
def test_only_unicode_white_space_is_trimmed(kept: str) -> None:
    # U+001C is white space to Python's str.strip() but not to Unicode.
    assert room_name_password(kept + "a") == (kept + "a").encode()


def test_trimmed_set_is_the_25_white_space_code_points() -> None:
    assert len(set(ROOM_NAME_TRIMMED)) == 25


def test_name_of_white_space_only_is_refused() -> None:
    with pytest.raises(ValueError, match="white space"):
        RoomKeys.from_name(" \u2003\n")
