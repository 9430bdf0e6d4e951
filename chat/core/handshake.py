"""One handshake attempt: ephemeral keys, pairing, AUTH (protocol.md section 5).

A :class:`Handshake` knows nothing of sessions or time; :mod:`chat.core.session`
decides when to start, pair, and finish one. Every method checks everything
it can before it changes anything, so a rejected frame leaves the attempt as
it was.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import nacl.bindings
import nacl.exceptions
import nacl.signing

from chat.core import schedule
from chat.core.channel import Channel
from chat.core.errors import ForgedFrame, HandshakeFailed, KeyChanged, ReflectedFrame
from chat.core.frames import TYPE_AUTH, VERSION, encode_hello, parse_auth
from chat.core.identity import Identity, PublicIdentity
from chat.core.rooms import RoomKeys
from chat.core.secrets import Secret, short_hash

__all__ = ["AuthSecrets", "Handshake", "Pairing"]


@dataclass(frozen=True, slots=True)
class AuthSecrets:
    """hs and the two AUTH keys; erased once root_0 exists (section 6.2)."""

    hs: Secret
    k_auth_own: Secret
    k_auth_peer: Secret

    def __repr__(self) -> str:
        return "<AuthSecrets redacted>"


@dataclass(frozen=True, slots=True)
class Pairing:
    """Everything derived from the peer's ephemeral, computed before commit.

    Attributes:
        secrets: None once the handshake finished and erased them.
    """

    peer_ephemeral: bytes
    role: int
    th: bytes
    shared_hash: str
    secrets: AuthSecrets | None

    def __repr__(self) -> str:
        return f"<Pairing role={self.role} secrets redacted>"


class Handshake:
    """Our ephemeral key and, once paired, the transcript and AUTH keys.

    Attributes:
        ephemeral: Our X25519 ephemeral public key.
        deadline: When this attempt is given up (section 5.5).
        pairing: Set once we know the peer's ephemeral.
        peer: Set once the peer's AUTH verified.
        channel: Set once root_0 exists.
        confirmed: True once an authenticated record came from the peer.
        confirm_at: When to resend our CONFIRM while unconfirmed (section 5.6).
        confirms: Our first CONFIRM of each recent epoch, as sent (counter 0),
            to answer a peer that resends its own (section 5.6).
    """

    def __init__(self, private: bytes, deadline: float) -> None:
        self._private: Secret | None = Secret(private)
        self.ephemeral = nacl.bindings.crypto_scalarmult_base(private)
        self.deadline = deadline
        self.pairing: Pairing | None = None
        self.peer: PublicIdentity | None = None
        self.channel: Channel | None = None
        self.confirmed = False
        self.confirm_at = float("inf")
        self.confirms: dict[int, bytes] = {}
        self.peer_auth: bytes | None = None

    def __repr__(self) -> str:
        return (
            f"<Handshake ephemeral={self.ephemeral.hex()[:16]}... "
            f"paired={self.pairing is not None} confirmed={self.confirmed} "
            "secrets redacted>"
        )

    def hello(self, echo: bytes | None = None) -> bytes:
        """Our HELLO, answering ``echo`` or starting afresh (section 5.1)."""
        return encode_hello(self.ephemeral, bytes(32) if echo is None else echo)

    def prepare_pairing(self, peer_ephemeral: bytes, room: RoomKeys) -> Pairing:
        """Derive th, hs and the AUTH keys for ``peer_ephemeral`` (section 6.1).

        Raises:
            ReflectedFrame: the peer ephemeral is our own.
            MalformedFrame: it is a small-order point.
        """
        if self._private is None:
            raise RuntimeError("this handshake is already paired")
        if nacl.bindings.sodium_memcmp(peer_ephemeral, self.ephemeral):
            raise ReflectedFrame("HELLO carries our own ephemeral key")

        # Roles: the bytewise smaller ephemeral is LO (section 5.3).
        role = schedule.LO if self.ephemeral < peer_ephemeral else schedule.HI
        e_lo, e_hi = sorted((self.ephemeral, peer_ephemeral))
        shared = schedule.x25519(self._private.reveal(), peer_ephemeral)
        th = schedule.transcript_hash(room.room_id, e_lo, e_hi)
        hs = schedule.handshake_secret(room.room_key.reveal(), shared, th)
        k_lo, k_hi = schedule.auth_keys(hs)
        own, peer = (k_lo, k_hi) if role == schedule.LO else (k_hi, k_lo)
        secrets = AuthSecrets(Secret(hs), Secret(own), Secret(peer))
        return Pairing(peer_ephemeral, role, th, short_hash(shared), secrets)

    def commit_pairing(self, pairing: Pairing) -> None:
        """Adopt a pairing; our ephemeral private key is erased (section 6.1)."""
        self.pairing = pairing
        self._private = None

    def auth(self, identity: Identity) -> bytes:
        """AUTH = 0x01 || 0x02 || SecretBox(k_auth_own)(ik || sig) (section 5.2)."""
        pairing, secrets = self._paired()
        signed = schedule.auth_signed_message(
            pairing.role, pairing.th, identity.public.key
        )
        plaintext = identity.public.key + identity.sign(signed)
        box = nacl.bindings.crypto_secretbox_easy(
            plaintext, schedule.auth_nonce(pairing.role), secrets.k_auth_own.reveal()
        )
        return bytes((VERSION, TYPE_AUTH)) + box

    def verify_auth(
        self,
        frame: bytes,
        identity: Identity,
        expected: PublicIdentity | None,
    ) -> PublicIdentity:
        """Open and verify the peer's AUTH; no state changes (section 5.2).

        Raises:
            ForgedFrame: it does not open (wrong room secret or tampered).
            ReflectedFrame: it is our own AUTH sent back.
            HandshakeFailed: it opens but the signature is bad or the identity
                is our own (fatal: the sender knows the room key).
            KeyChanged: a valid AUTH from an identity other than ``expected``.
        """
        pairing, secrets = self._paired()
        box = parse_auth(frame)
        peer_role = pairing.role ^ 1
        plaintext = self._open_auth(box, pairing.role, secrets)

        peer_key, signature = plaintext[:32], plaintext[32:]
        signed = schedule.auth_signed_message(peer_role, pairing.th, peer_key)
        try:
            nacl.signing.VerifyKey(peer_key).verify(signed, signature)
        except (nacl.exceptions.CryptoError, ValueError, TypeError) as exc:
            raise HandshakeFailed("the peer's AUTH signature is invalid") from exc
        peer = PublicIdentity(peer_key)

        if peer == identity.public:
            raise HandshakeFailed("the peer claims our own identity key")
        if expected is not None and peer != expected:
            raise KeyChanged(
                f"the peer proved identity {peer.fingerprint()}, "
                f"not the expected {expected.fingerprint()}",
                peer=peer,
            )
        return peer

    @staticmethod
    def _open_auth(box: bytes, role: int, secrets: AuthSecrets) -> bytes:
        try:
            return nacl.bindings.crypto_secretbox_open_easy(
                box, schedule.auth_nonce(role ^ 1), secrets.k_auth_peer.reveal()
            )
        except nacl.exceptions.CryptoError:
            pass

        # Failure path only: is it our own AUTH reflected back to us?
        try:
            nacl.bindings.crypto_secretbox_open_easy(
                box, schedule.auth_nonce(role), secrets.k_auth_own.reveal()
            )
        except nacl.exceptions.CryptoError as exc:
            raise ForgedFrame(
                "AUTH does not authenticate: wrong room secret or tampered"
            ) from exc
        raise ReflectedFrame("our own AUTH was sent back to us")

    def finish(
        self, peer: PublicIdentity, identity: Identity, frame: bytes, now: float
    ) -> Channel:
        """Derive root_0, open the channel, erase hs and the AUTH keys (6.2)."""
        pairing, secrets = self._paired()
        own = identity.public.key
        ik_lo, ik_hi = (
            (own, peer.key) if pairing.role == schedule.LO else (peer.key, own)
        )
        th2 = schedule.transcript_hash2(pairing.th, ik_lo, ik_hi)
        root = schedule.root_key(secrets.hs.reveal(), th2)

        self.peer = peer
        self.peer_auth = frame
        self.channel = Channel(pairing.role, root, now)
        self.pairing = dataclasses.replace(pairing, secrets=None)
        return self.channel

    def _paired(self) -> tuple[Pairing, AuthSecrets]:
        if self.pairing is None or self.pairing.secrets is None:
            raise RuntimeError("this handshake is not paired, or already finished")
        return self.pairing, self.pairing.secrets
