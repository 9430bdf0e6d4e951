"""The identity key file's passphrase, for the command line.

The protocol core seals a key file under a passphrase (protocol.md section
4.2); this module decides where the passphrase comes from:

- a key file that is protected is unlocked with the passphrase in
  `--passphrase-file FILE`, or else, when stdin is a terminal, with one
  typed at a prompt (no echo, `PASSPHRASE_ATTEMPTS` tries);
- a new identity created with `--passphrase-file` is protected from the
  start;
- `saltchat id --set-passphrase` protects the identity, or changes its
  passphrase: the new one is typed twice at a terminal, or read from
  `--new-passphrase-file`, or, for an identity without one, from
  `--passphrase-file`.

A passphrase file holds the passphrase as its content; one final line break
is not part of it. Nothing here prints or logs a passphrase.
"""

from __future__ import annotations

import getpass
from collections.abc import Callable
from pathlib import Path

from chat.core.errors import KeyFileError, WrongPassphrase
from chat.core.identity import Identity
from chat.limits import MAX_PASSPHRASE_BYTES, PASSPHRASE_ATTEMPTS

__all__ = [
    "PassphraseError",
    "Prompt",
    "load_identity",
    "read_passphrase_file",
    "set_passphrase",
]

Prompt = Callable[[str], str]
"""Asks for a passphrase without echo (``getpass.getpass``)."""


def _ask(question: str) -> str:
    # getpass asks on the terminal itself, without echo.
    return getpass.getpass(question)


class PassphraseError(Exception):
    """No usable passphrase; the message says what to do."""


def read_passphrase_file(path: str) -> bytes:
    """Read a passphrase from a file; one final line break is dropped.

    Raises:
        PassphraseError: unreadable, empty, or larger than the bound.
    """
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_PASSPHRASE_BYTES + 3)
    except OSError as exc:
        raise PassphraseError(
            f"cannot read passphrase file {path}: {exc.strerror}"
        ) from exc
    if data.endswith(b"\r\n"):
        data = data[:-2]
    elif data.endswith(b"\n"):
        data = data[:-1]
    return _checked(data, f"passphrase file {path}")


def _checked(passphrase: bytes, source: str) -> bytes:
    # Bounded before Argon2id sees it; an empty one protects nothing.
    if not passphrase:
        raise PassphraseError(f"{source} is empty; a passphrase protects nothing")
    if len(passphrase) > MAX_PASSPHRASE_BYTES:
        raise PassphraseError(
            f"{source} is longer than {MAX_PASSPHRASE_BYTES} bytes; use a shorter "
            "passphrase"
        )
    return passphrase


def _typed(prompt: Prompt, question: str) -> bytes:
    try:
        typed = prompt(question)
    except EOFError as exc:
        raise PassphraseError("no passphrase was typed") from exc
    return _checked(typed.encode("utf-8", "surrogateescape"), "the passphrase")


def load_identity(
    path: Path,
    passphrase_file: str | None,
    *,
    interactive: bool,
    prompt: Prompt = _ask,
    notice: Callable[[str], None] = print,
) -> Identity:
    """Load the identity at `path`, or create it on first use.

    Args:
        path: the key file.
        passphrase_file: the `--passphrase-file` flag, or None.
        interactive: True when stdin is a terminal (a prompt may be shown).
        prompt: asks for a passphrase without echo.
        notice: shows a one-line notice to the user (stderr).

    Raises:
        PassphraseError: the file is protected and no passphrase is at hand,
            or the one given is wrong.
        KeyFileError: the key file is unreadable or corrupt.
    """
    if not path.exists():
        passphrase = read_passphrase_file(passphrase_file) if passphrase_file else None
        return Identity.load_or_create(path, passphrase)
    if not Identity.is_protected(path):
        if passphrase_file:
            notice(
                f"{path} has no passphrase, so --passphrase-file is not used; "
                "protect it with `saltchat id --set-passphrase`"
            )
        return Identity.load(path)
    return _unlock(path, passphrase_file, interactive, prompt, notice)


def _unlock(
    path: Path,
    passphrase_file: str | None,
    interactive: bool,
    prompt: Prompt,
    notice: Callable[[str], None],
) -> Identity:
    # A file given on the command line is tried once: asking again would not
    # change its content.
    if passphrase_file:
        try:
            return Identity.load(path, read_passphrase_file(passphrase_file))
        except WrongPassphrase as exc:
            raise PassphraseError(
                f"the passphrase in {passphrase_file} does not unlock {path} "
                "(wrong passphrase, or the key file was altered)"
            ) from exc
    if not interactive:
        raise PassphraseError(
            f"{path} is protected by a passphrase and stdin is not a terminal: "
            "give the passphrase with --passphrase-file FILE"
        )

    for attempt in range(1, PASSPHRASE_ATTEMPTS + 1):
        try:
            return Identity.load(path, _typed(prompt, "Identity passphrase: "))
        except (WrongPassphrase, PassphraseError) as exc:
            if attempt < PASSPHRASE_ATTEMPTS:
                notice(f"{exc}; try again")
    raise PassphraseError(
        f"{PASSPHRASE_ATTEMPTS} wrong passphrases for {path}; giving up"
    )


def set_passphrase(
    path: Path,
    passphrase_file: str | None,
    new_passphrase_file: str | None,
    *,
    interactive: bool,
    prompt: Prompt = _ask,
    notice: Callable[[str], None] = print,
) -> Identity:
    """Protect the identity at `path` with a new passphrase (or change it).

    The identity is unlocked first (see `load_identity`); the new passphrase
    comes from `new_passphrase_file`, else, for an identity without one,
    from `passphrase_file`, else from a terminal, typed twice.

    Raises:
        PassphraseError: no new passphrase at hand, the two typed differ, or
            the current one is wrong. The key file is then unchanged.
        KeyFileError: the key file is unreadable, corrupt or cannot be written.
    """
    protected = path.exists() and Identity.is_protected(path)
    current_file = passphrase_file if protected else None
    identity = load_identity(
        path, current_file, interactive=interactive, prompt=prompt, notice=notice
    )

    if new_passphrase_file:
        new = read_passphrase_file(new_passphrase_file)
    elif passphrase_file and not protected:
        new = read_passphrase_file(passphrase_file)
    elif interactive:
        new = _typed(prompt, "New identity passphrase: ")
        if _typed(prompt, "The same passphrase again: ") != new:
            raise PassphraseError("the two passphrases differ; nothing was changed")
    else:
        flag = "--new-passphrase-file" if protected else "--passphrase-file"
        raise PassphraseError(
            f"stdin is not a terminal: give the new passphrase with {flag} FILE"
        )

    try:
        identity.save(path, new)
    except OSError as exc:
        raise KeyFileError(f"cannot write {path}: {exc.strerror}") from exc
    return identity
