"""Known-answer tests for the PyNaCl calls the protocol uses, from data files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nacl.bindings
import pytest

VECTORS = Path(__file__).resolve().parent.parent / "vectors"


def load(name: str, key: str) -> list[dict[str, Any]]:
    data: dict[str, Any] = json.loads((VECTORS / name).read_text())
    vectors: list[dict[str, Any]] = data[key]
    return vectors


def ids(vectors: list[dict[str, Any]]) -> list[str]:
    return [v["name"] for v in vectors]


X25519 = load("kat_x25519.json", "scalarmult")
X25519_ITERATED = load("kat_x25519.json", "iterated")
X25519_DH = load("kat_x25519.json", "diffie_hellman")
SECRETBOX = load("kat_secretbox.json", "vectors")
BLAKE2B = load("kat_blake2b.json", "vectors")


@pytest.mark.parametrize("vector", X25519, ids=ids(X25519))
def test_x25519_scalarmult(vector: dict[str, Any]) -> None:
    out = nacl.bindings.crypto_scalarmult(
        bytes.fromhex(vector["scalar"]), bytes.fromhex(vector["u"])
    )
    assert out.hex() == vector["output"]


@pytest.mark.parametrize("vector", X25519_ITERATED, ids=ids(X25519_ITERATED))
def test_x25519_iterated(vector: dict[str, Any]) -> None:
    k = u = (9).to_bytes(32, "little")
    for _ in range(vector["iterations"]):
        k, u = nacl.bindings.crypto_scalarmult(k, u), k
    assert k.hex() == vector["output"]


@pytest.mark.parametrize("vector", X25519_DH, ids=ids(X25519_DH))
def test_x25519_alice_and_bob(vector: dict[str, Any]) -> None:
    alice = bytes.fromhex(vector["alice_private"])
    bob = bytes.fromhex(vector["bob_private"])
    alice_public = nacl.bindings.crypto_scalarmult_base(alice)
    bob_public = nacl.bindings.crypto_scalarmult_base(bob)

    assert alice_public.hex() == vector["alice_public"]
    assert bob_public.hex() == vector["bob_public"]
    assert nacl.bindings.crypto_scalarmult(alice, bob_public).hex() == vector["shared"]
    assert nacl.bindings.crypto_scalarmult(bob, alice_public).hex() == vector["shared"]


@pytest.mark.parametrize("vector", SECRETBOX, ids=ids(SECRETBOX))
def test_secretbox_seal(vector: dict[str, Any]) -> None:
    sealed = nacl.bindings.crypto_secretbox_easy(
        bytes.fromhex(vector["plaintext"]),
        bytes.fromhex(vector["nonce"]),
        bytes.fromhex(vector["key"]),
    )
    assert sealed.hex() == vector["ciphertext"]


@pytest.mark.parametrize("vector", SECRETBOX, ids=ids(SECRETBOX))
def test_secretbox_open(vector: dict[str, Any]) -> None:
    opened = nacl.bindings.crypto_secretbox_open_easy(
        bytes.fromhex(vector["ciphertext"]),
        bytes.fromhex(vector["nonce"]),
        bytes.fromhex(vector["key"]),
    )
    assert opened.hex() == vector["plaintext"]


@pytest.mark.parametrize("vector", BLAKE2B, ids=ids(BLAKE2B))
def test_blake2b(vector: dict[str, Any]) -> None:
    digest = nacl.bindings.crypto_generichash_blake2b_salt_personal(
        bytes.fromhex(vector["input"]),
        digest_size=64,
        key=bytes.fromhex(vector["key"]),
    )
    assert digest.hex() == vector["digest"]
