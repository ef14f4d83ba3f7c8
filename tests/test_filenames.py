"""File names in messages: ordinary names unchanged, any other in bash's $'...' quoting, which a
shell reads back as the same bytes."""

from __future__ import annotations

import os
import subprocess

import pytest

from medxfer.filenames import printable, shown

NAMES = [b"plain/scan 01.dcm", b"a\rb.dcm", b"line\nbreak", b"x\xff\xfe.dcm", b"it's\\here\x1b.dcm", "é.dcm".encode()]


@pytest.mark.parametrize("raw", NAMES)
def test_bash_reads_the_shown_name_back_as_the_same_bytes(raw):
    text = shown(os.fsdecode(raw))
    assert text.isprintable()
    if text.startswith("$'"):
        echoed = subprocess.run(["bash", "-c", f"printf %s {text}"], capture_output=True, check=True).stdout
    else:
        echoed = text.encode()
    assert echoed == raw


def test_printable_escapes_control_characters_but_keeps_line_breaks():
    message = "error: " + os.fsdecode(b"a\rb\xff") + "\nsecond line\twith a tab"
    assert printable(message) == "error: a\\rb\\xff\nsecond line\twith a tab"
