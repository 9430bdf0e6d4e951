"""The identity passphrase on the command line: prompt, file, set and change."""

from __future__ import annotations

import getpass
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from chat import cli
from chat.limits import MAX_PASSPHRASE_BYTES, PASSPHRASE_ATTEMPTS


class _Terminal:
    """A stdin that is a terminal (the prompts themselves are faked)."""

    def isatty(self) -> bool:
        return True


def _typing(monkeypatch: pytest.MonkeyPatch, *answers: str) -> list[str]:
    """Answer the next prompts with `answers`; return the questions asked."""
    queue, asked = list(answers), []

    def fake(question: str) -> str:
        asked.append(question)
        return queue.pop(0)

    monkeypatch.setattr("sys.stdin", _Terminal())
    monkeypatch.setattr(getpass, "getpass", fake)
    return asked


def _run(
    capsys: pytest.CaptureFixture[str], home: Path, *argv: str
) -> tuple[int, str, str]:
    status = cli.main(["--home", str(home), *argv])
    out, err = capsys.readouterr()
    return status, out.strip(), err


def _secret(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _key_file(home: Path) -> dict[str, object]:
    document: dict[str, object] = json.loads((home / "identity.json").read_text())
    return document


Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> Run:
    def go(*argv: str) -> tuple[int, str, str]:
        return _run(capsys, tmp_path / "home", *argv)

    return go


def test_set_from_a_file_then_the_file_unlocks(run: Run, tmp_path: Path) -> None:
    _, fingerprint, _ = run("id")
    secret = _secret(tmp_path, "pass", "correct horse\n")

    status, out, err = run("id", "--set-passphrase", "--passphrase-file", secret)

    assert status == 0 and out == fingerprint
    assert "now protected" in err
    document = _key_file(tmp_path / "home")
    assert "seed" not in document and "argon2id" in document
    assert run("id", "--passphrase-file", secret)[:2] == (0, fingerprint)


def test_protected_identity_without_a_terminal_says_which_flag(
    run: Run, tmp_path: Path
) -> None:
    secret = _secret(tmp_path, "pass", "correct horse")
    run("id", "--set-passphrase", "--passphrase-file", secret)

    status, out, err = run("id")

    assert status == 1 and out == ""
    assert "--passphrase-file FILE" in err


def test_wrong_passphrase_file_is_a_clear_error(run: Run, tmp_path: Path) -> None:
    run("id", "--set-passphrase", "--passphrase-file", _secret(tmp_path, "a", "one"))

    status, _, err = run("id", "--passphrase-file", _secret(tmp_path, "b", "two"))

    assert status == 1
    assert "does not unlock" in err and "wrong passphrase" in err


def test_a_new_identity_with_a_passphrase_file_is_protected(
    run: Run, tmp_path: Path
) -> None:
    status, _, _ = run("id", "--passphrase-file", _secret(tmp_path, "p", "s3cret"))

    assert status == 0
    assert "argon2id" in _key_file(tmp_path / "home")


def test_terminal_prompts_for_the_passphrase(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, fingerprint, _ = run("id", "--passphrase-file", _secret(tmp_path, "p", "pw"))
    asked = _typing(monkeypatch, "not it", "pw")

    status, out, err = run("id")

    assert (status, out) == (0, fingerprint)
    assert len(asked) == 2
    assert err.count("wrong passphrase") == 1


def test_terminal_gives_up_after_the_last_attempt(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run("id", "--passphrase-file", _secret(tmp_path, "p", "pw"))
    asked = _typing(monkeypatch, *["wrong"] * PASSPHRASE_ATTEMPTS)

    status, _, err = run("id")

    assert status == 1
    assert len(asked) == PASSPHRASE_ATTEMPTS
    assert f"{PASSPHRASE_ATTEMPTS} wrong passphrases" in err


def test_set_passphrase_on_a_terminal_asks_twice(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, fingerprint, _ = run("id")
    asked = _typing(monkeypatch, "new one", "new one")

    assert run("id", "--set-passphrase")[:2] == (0, fingerprint)
    assert len(asked) == 2
    new = _secret(tmp_path, "new", "new one")
    assert run("id", "--passphrase-file", new)[:2] == (0, fingerprint)


def test_two_different_passphrases_change_nothing(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run("id")
    before = (tmp_path / "home" / "identity.json").read_bytes()
    _typing(monkeypatch, "new one", "new oen")

    status, _, err = run("id", "--set-passphrase")

    assert status == 1 and "differ" in err
    assert (tmp_path / "home" / "identity.json").read_bytes() == before


def test_change_without_a_terminal_needs_old_and_new_files(
    run: Run, tmp_path: Path
) -> None:
    old = _secret(tmp_path, "old", "old pass\r\n")
    new = _secret(tmp_path, "new", "new pass\n")
    _, fingerprint, _ = run("id", "--passphrase-file", old)

    refused = run("id", "--set-passphrase", "--passphrase-file", old)
    changed = run(
        "id", "--set-passphrase", "--passphrase-file", old, "--new-passphrase-file", new
    )

    assert refused[0] == 1 and "--new-passphrase-file FILE" in refused[2]
    assert changed[:2] == (0, fingerprint)
    assert run("id", "--passphrase-file", new)[:2] == (0, fingerprint)
    assert run("id", "--passphrase-file", old)[0] == 1


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("", "is empty"),
        ("\n", "is empty"),
        ("x" * (MAX_PASSPHRASE_BYTES + 1), "longer"),
    ],
)
def test_unusable_passphrase_file_is_refused(
    run: Run, tmp_path: Path, content: str, says: str
) -> None:
    status, _, err = run("id", "--passphrase-file", _secret(tmp_path, "p", content))

    assert status == 1 and says in err
    assert not (tmp_path / "home" / "identity.json").exists()


def test_missing_passphrase_file_is_named(run: Run, tmp_path: Path) -> None:
    status, _, err = run("id", "--passphrase-file", str(tmp_path / "nope"))

    assert status == 1 and "cannot read passphrase file" in err


def test_set_passphrase_goes_with_id_only(run: Run) -> None:
    with pytest.raises(SystemExit) as exit_:
        run("--set-passphrase", "--plain")
    assert exit_.value.code == 2
