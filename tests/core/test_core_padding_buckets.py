"""A receiver accepts a record padded into any bucket (protocol.md s7.3)."""

from __future__ import annotations

import nacl.bindings

from chat.core import MessageReceived
from chat.core.channel import record_nonce
from chat.core.frames import Text, encode_payload, encode_record_header
from tests.core.core_support import established


def test_text_padded_into_a_larger_bucket_than_needed_is_delivered() -> None:
    alice, bob = established()
    channel = alice.channel
    assert channel is not None
    keys = channel.sending
    assert keys.send_key is not None

    # A short TEXT needs the 256-byte bucket; this sender pads to 1024.
    plaintext = encode_payload(Text(bytes(16), "hidden size"))
    padded = plaintext + b"\x80" + bytes(1024 - len(plaintext) - 1)
    counter = 7
    box = nacl.bindings.crypto_secretbox_easy(
        padded, record_nonce(0, counter, channel.role), keys.send_key.reveal()
    )
    frame = encode_record_header(0, counter) + box
    assert len(frame) == 30 + 1024

    assert bob.receive(frame, 1) == [MessageReceived(bytes(16), "hidden size")]
