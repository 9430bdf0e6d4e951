"""Identities: key files, passphrases, fingerprints and safety numbers."""

from __future__ import annotations

import json
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from chat.core import (
    Identity,
    KeyFileError,
    PublicIdentity,
    WrongPassphrase,
    fingerprint_matches,
    safety_number,
)
from tests.core.core_support import ALICE, BOB


def test_key_file_has_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "id.json"
    ALICE.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_key_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "id.json"
    ALICE.save(path)
    assert Identity.load(path).public == ALICE.public


def test_passphrase_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "id.json"
    ALICE.save(path, passphrase=b"correct horse")
    assert b"seed" not in path.read_bytes().replace(b"sealed_seed", b"")
    assert Identity.load(path, passphrase=b"correct horse").public == ALICE.public


def test_wrong_passphrase_is_a_key_file_error(tmp_path: Path) -> None:
    path = tmp_path / "id.json"
    ALICE.save(path, passphrase=b"correct horse")
    with pytest.raises(KeyFileError, match="wrong passphrase"):
        Identity.load(path, passphrase=b"battery staple")


def test_missing_passphrase_is_a_key_file_error(tmp_path: Path) -> None:
    path = tmp_path / "id.json"
    ALICE.save(path, passphrase=b"correct horse")
    with pytest.raises(KeyFileError, match="passphrase is needed"):
        Identity.load(path)


def test_weakened_argon2_parameters_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "id.json"
    ALICE.save(path, passphrase=b"pw")
    document = json.loads(path.read_text())
    document["argon2id"]["opslimit"] = 1
    path.write_text(json.dumps(document))
    with pytest.raises(KeyFileError, match="limits out of range"):
        Identity.load(path, passphrase=b"pw")


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not json",
        b"[]",
        b'{"format": "other"}',
        b'{"format": "saltchat-identity-v1"}',
    ],
)
def test_corrupt_key_file_is_a_key_file_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "id.json"
    path.write_bytes(content)
    with pytest.raises(KeyFileError):
        Identity.load(path)


def _saved_then_edited(
    path: Path, passphrase: bytes | None, edit: Callable[[dict[str, Any]], None]
) -> None:
    ALICE.save(path, passphrase)
    document = json.loads(path.read_text())
    edit(document)
    path.write_text(json.dumps(document))


@pytest.mark.parametrize(
    ("edit", "complaint"),
    [
        (lambda d: d.update(public=d["public"].upper()), "public must be"),
        (lambda d: d.update(seed="AB" + d["seed"][2:]), "seed must be"),
        (lambda d: d.update(seed=d["seed"][:-2]), "seed must be"),
        (lambda d: d.update(seed=0), "seed must be"),
        (lambda d: d.update(argon2id={}), "one of seed and argon2id"),
        (lambda d: d.pop("seed"), "one of seed and argon2id"),
    ],
)
def test_unprotected_key_file_is_read_strictly(
    tmp_path: Path, edit: Callable[[dict[str, Any]], None], complaint: str
) -> None:
    path = tmp_path / "id.json"
    _saved_then_edited(path, None, edit)
    with pytest.raises(KeyFileError, match=complaint):
        Identity.load(path)


@pytest.mark.parametrize(
    ("field", "value", "complaint"),
    [
        ("opslimit", "2", "opslimit must be a JSON integer"),
        ("memlimit", 67108864.0, "memlimit must be a JSON integer"),
        ("opslimit", True, "opslimit must be a JSON integer"),
        ("salt", "00" * 15, "salt must be"),
        ("sealed_seed", "00" * 71, "sealed_seed must be"),
    ],
)
def test_protected_key_file_is_read_strictly(
    tmp_path: Path, field: str, value: object, complaint: str
) -> None:
    path = tmp_path / "id.json"
    _saved_then_edited(path, b"pw", lambda d: d["argon2id"].update({field: value}))
    with pytest.raises(KeyFileError, match=complaint):
        Identity.load(path, passphrase=b"pw")


def test_spliced_public_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "id.json"
    ALICE.save(path)
    document = json.loads(path.read_text())
    document["public"] = BOB.public.key.hex()
    path.write_text(json.dumps(document))
    with pytest.raises(KeyFileError, match="does not match"):
        Identity.load(path)


def test_oversized_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "id.json"
    path.write_bytes(b" " * 100_000)
    with pytest.raises(KeyFileError, match="larger than"):
        Identity.load(path)


def test_missing_key_file_is_a_key_file_error(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot read"):
        Identity.load(tmp_path / "absent.json")


def test_load_or_create_creates_then_loads(tmp_path: Path) -> None:
    path = tmp_path / "id.json"
    created = Identity.load_or_create(path)
    assert Identity.load_or_create(path).public == created.public


def test_fingerprint_is_thirty_digits_in_six_groups() -> None:
    groups = ALICE.public.fingerprint().split(" ")
    assert [len(g) for g in groups] == [5] * 6
    assert all(g.isdigit() for g in groups)


def test_fingerprints_differ_between_identities() -> None:
    assert ALICE.public.fingerprint() != BOB.public.fingerprint()


def test_safety_number_is_symmetric() -> None:
    assert safety_number(ALICE.public, BOB.public) == safety_number(
        BOB.public, ALICE.public
    )


def test_safety_number_is_sixty_digits_in_twelve_groups() -> None:
    number = safety_number(ALICE.public, BOB.public)
    assert [len(g) for g in number.split(" ")] == [5] * 12
    assert number.replace(" ", "").isdigit()


def test_safety_number_is_the_sorted_fingerprints() -> None:
    halves = sorted(
        [
            ALICE.public.fingerprint().replace(" ", ""),
            BOB.public.fingerprint().replace(" ", ""),
        ]
    )
    assert safety_number(ALICE.public, BOB.public).replace(" ", "") == "".join(halves)


def test_fingerprint_matches_ignores_spaces_and_dashes() -> None:
    typed = ALICE.public.fingerprint().replace(" ", "-")
    assert fingerprint_matches(ALICE.public, typed)
    assert fingerprint_matches(ALICE.public, typed.replace("-", ""))


def test_fingerprint_matches_refuses_another_key() -> None:
    assert not fingerprint_matches(BOB.public, ALICE.public.fingerprint())


def test_public_identity_equality_and_hash() -> None:
    copy = PublicIdentity(bytes(ALICE.public.key))
    assert copy == ALICE.public
    assert hash(copy) == hash(ALICE.public)
    assert copy != BOB.public


def test_public_identity_refuses_wrong_length() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        PublicIdentity(b"short")


def test_wrong_passphrase_has_its_own_error(tmp_path: Path) -> None:
    path = tmp_path / "id.json"
    ALICE.save(path, passphrase=b"correct horse")
    with pytest.raises(WrongPassphrase):
        Identity.load(path, passphrase=b"battery staple")


def test_a_protected_key_file_is_told_apart(tmp_path: Path) -> None:
    clear, sealed = tmp_path / "clear.json", tmp_path / "sealed.json"
    ALICE.save(clear)
    ALICE.save(sealed, passphrase=b"correct horse")

    assert not Identity.is_protected(clear)
    assert Identity.is_protected(sealed)
