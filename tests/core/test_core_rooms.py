"""Rooms: ids and keys derived from invite secrets and room names."""

from __future__ import annotations

import pytest

from chat.core import RoomKeys
from chat.core.kdf import LABEL_ROOM_ID, LABEL_ROOM_KEY, kdf


def test_room_keys_follow_the_spec() -> None:
    secret = bytes(range(32))
    room = RoomKeys.from_secret(secret)
    assert room.room_id == kdf(secret, LABEL_ROOM_ID)
    assert room.room_key.reveal() == kdf(secret, LABEL_ROOM_KEY)


def test_room_id_and_room_key_differ() -> None:
    room = RoomKeys.from_secret(RoomKeys.new_secret())
    assert room.room_id != room.room_key.reveal()


def test_room_name_gives_the_same_keys_each_time() -> None:
    assert (
        RoomKeys.from_name("kitchen").room_id == RoomKeys.from_name("kitchen").room_id
    )


def test_different_room_names_give_different_rooms() -> None:
    assert RoomKeys.from_name("kitchen").room_id != RoomKeys.from_name("garden").room_id


def test_secret_must_be_32_bytes() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        RoomKeys.from_secret(b"short")


def test_empty_room_name_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        RoomKeys.from_name("")
