"""File names as the operating system gives them, shown in messages and logs so that each can
be typed back.

A PACS export can hold names with a carriage return or bytes that are not UTF-8 (Python holds
those as lone surrogates, ``os.fsdecode``). Printed as they are, the first rewrites the terminal
line and the second cannot be encoded. ``shown`` leaves an ordinary name unchanged and writes
any other in bash's ``$'...'`` quoting (``images/$'a\\rb.dcm'`` is shown as
``$'images/a\\rb.dcm'``), which a shell reads back as exactly the same bytes, the way
``ls --quoting-style=shell-escape`` does. CSV outputs carry the names themselves
(``medxfer.csvfiles``).
"""

from __future__ import annotations

import os
from pathlib import Path

_NAMED = {"\a": "\\a", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\v": "\\v", "\f": "\\f", "\r": "\\r",
          "\x1b": "\\E", "\\": "\\\\", "'": "\\'"}


def _is_plain(text: str) -> bool:
    return text.isprintable() and not any("\udc80" <= c <= "\udcff" for c in text)


def shown(path: str | Path | os.PathLike[str]) -> str:
    """``path`` for a message: unchanged when every character is printable, else in bash's
    ``$'...'`` quoting, with ``\\xHH`` for each byte that is not valid UTF-8."""
    text = os.fspath(path)
    if _is_plain(text):
        return text
    parts = []
    for char in text:
        if "\udc80" <= char <= "\udcff":  # a byte that was not UTF-8 (surrogateescape)
            parts.append(f"\\x{ord(char) - 0xDC00:02x}")
        elif char in _NAMED:
            parts.append(_NAMED[char])
        elif not char.isprintable():
            parts.append("".join(f"\\x{byte:02x}" for byte in char.encode("utf-8", "surrogatepass")))
        else:
            parts.append(char)
    return "$'" + "".join(parts) + "'"


def printable(message: str) -> str:
    """A message for a terminal or a log: line breaks kept, every other control character and
    byte that is not UTF-8 escaped (the safety net for text that did not go through ``shown``)."""
    return "\n".join(_line(line) for line in message.split("\n"))


def _line(line: str) -> str:
    if _is_plain(line.replace("\t", " ")):
        return line
    return "".join(c if c == "\t" or _is_plain(c) else shown(c)[2:-1] for c in line)
