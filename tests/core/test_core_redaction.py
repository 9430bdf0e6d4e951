"""No key-holding object shows a secret in its repr or str; teaching is clean."""

from __future__ import annotations

import base64

from core_support import ALICE, BOB, ROOM, established, make_session, pump

from chat.core import Identity, RoomKeys, Session, TeachingEvent
from chat.core.channel import Opened
from chat.core.handshake import Handshake
from chat.core.secrets import Secret

SEED = bytes(range(100, 132))
ROOM_SECRET = bytes(range(200, 232))


def leaks(text: str, secret: bytes) -> bool:
    """True if ``text`` shows ``secret`` in any common encoding."""
    forms = [
        secret.hex(),
        secret.hex().upper(),
        repr(secret)[2:-1],
        base64.b64encode(secret).decode(),
        secret.decode("latin-1"),
    ]
    return any(form in text for form in forms)


def assert_redacted(obj: object, secret: bytes) -> None:
    assert not leaks(repr(obj), secret)
    assert not leaks(str(obj), secret)


def test_secret_repr_redacts() -> None:
    assert_redacted(Secret(SEED), SEED)


def test_identity_repr_redacts() -> None:
    assert_redacted(Identity.from_seed(SEED), SEED)


def test_room_keys_repr_redacts() -> None:
    room = RoomKeys.from_secret(ROOM_SECRET)
    assert_redacted(room, room.room_key.reveal())
    assert_redacted(room, ROOM_SECRET)


def session_secrets(session: Session) -> list[bytes]:
    channel = session.channel
    assert channel is not None
    secrets = [channel.root.reveal(), session._room.room_key.reveal(), SEED]
    for keys in channel.epochs.values():
        secrets.append(keys.recv_key.reveal())
        if keys.send_key is not None:
            secrets.append(keys.send_key.reveal())
    return secrets


def test_session_and_its_parts_redact() -> None:
    alice, _bob = established()
    channel = alice.channel
    assert channel is not None
    objects = [alice, channel, channel.sending, alice._live]
    for obj in objects:
        for secret in session_secrets(alice):
            assert_redacted(obj, secret)


def test_handshake_and_pairing_redact() -> None:
    alice = make_session(ALICE)
    bob = make_session(BOB)
    alice.start()
    bob.receive(alice.frames_to_send()[0], 0)
    handshake = bob._live
    assert isinstance(handshake, Handshake) and handshake.pairing is not None
    pairing = handshake.pairing
    assert pairing.secrets is not None
    secrets = pairing.secrets
    for secret in (secrets.hs, secrets.k_auth_own, secrets.k_auth_peer):
        assert_redacted(handshake, secret.reveal())
        assert_redacted(pairing, secret.reveal())
        assert_redacted(secrets, secret.reveal())


def test_pending_rekey_redacts() -> None:
    alice, _ = established()
    alice.rekey(1)
    rekey = alice._rekey
    assert rekey is not None and rekey.private is not None
    assert_redacted(rekey, rekey.private.reveal())
    assert_redacted(alice, rekey.private.reveal())


def test_opened_record_redacts_plaintext() -> None:
    plaintext = b"very private words"
    assert_redacted(Opened(0, 1, plaintext, bytes(16)), plaintext)


def test_teaching_events_show_secrets_only_as_short_hashes() -> None:
    seen: list[TeachingEvent] = []
    identity = Identity.from_seed(SEED)
    alice = Session(identity, ROOM, now=0, observer=seen.append, side="alice")
    bob = make_session(BOB, observer=seen.append, side="bob")
    alice.start()
    pump(alice, bob, 0)
    alice.send_text("hello", 1)
    alice.rekey(1)
    pump(alice, bob, 1)

    # "seal" and "open" may show plaintext; no step may show a key.
    secrets = session_secrets(alice) + session_secrets(bob)
    for event in seen:
        for value in event.fields.values():
            for secret in secrets:
                assert not leaks(value, secret), event.step
    assert {e.step for e in seen} >= {"hello-sent", "keys", "established", "rekey"}
