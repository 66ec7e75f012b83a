"""Log lines: -v adds ours and no other library's; terminal times in ISO dates; JSON lines
carry their figures as fields."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator

import pytest
from PIL import Image
from rich.console import Console

from runner.cli.logs import configure_logging


@pytest.fixture
def restore_logging() -> Iterator[None]:
    yield
    configure_logging()
    logging.getLogger("runner").setLevel(logging.NOTSET)


def test_verbose_adds_our_debug_lines_and_no_other_librarys(
    capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    configure_logging(verbose=True)
    logging.getLogger("runner.engine.engine").debug("→ submitted abc")
    Image.new("RGB", (4, 4)).save(buffer := io.BytesIO(), "PNG")
    Image.open(io.BytesIO(buffer.getvalue())).load()  # Pillow logs STREAM b'IHDR' at DEBUG
    logging.getLogger("asyncio").debug("Using selector: EpollSelector")
    err = capsys.readouterr().err
    assert "→ submitted abc" in err
    assert "STREAM" not in err, err
    assert "selector" not in err, err


def test_a_terminal_stamps_log_lines_with_iso_dates(restore_logging: None) -> None:
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=100, color_system=None)
    configure_logging(console=console)
    logging.getLogger("runner.batch").info("using the built-in emulator")
    line = screen.getvalue().splitlines()[0]
    assert re.match(r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] INFO", line), line
