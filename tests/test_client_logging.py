"""The client's log never carries what websockets dumps at DEBUG."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from chat import cli


@pytest.fixture
def websockets_level() -> Iterator[None]:
    # main() sets process-wide logger levels: put them back afterwards.
    websockets = logging.getLogger("websockets")
    root = logging.getLogger()
    saved = websockets.level, root.level
    yield
    websockets.setLevel(saved[0])
    root.setLevel(saved[1])


@pytest.mark.usefixtures("websockets_level")
def test_most_verbose_logging_leaves_out_websockets_frame_dumps(
    tmp_path: Path,
) -> None:
    # Frame dumps show the bytes of JOIN, mailbox token included.
    logging.getLogger().setLevel(logging.DEBUG)
    assert cli.main(["-vv", "--home", str(tmp_path), "id"]) == 0
    frames = logging.getLogger("websockets.client")
    assert not frames.isEnabledFor(logging.INFO)
    assert frames.isEnabledFor(logging.WARNING)
