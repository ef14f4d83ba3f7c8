"""Turning what a decoding library raises into an ``UnreadableScanError`` with a one-line reason.

The NIfTI (nibabel) and PNG/JPEG/TIFF (Pillow) readers each give a table of the exceptions their
library raises on damaged input and the reason to report for each; the handling around it (an
``UnreadableScanError`` passes through, a missing file says so) is the same for both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from medxfer.datasets.scan import UnreadableScanError

# (exception types, reason for one of them): the first entry whose types match gives the reason.
Reasons = Sequence[tuple[type[Exception] | tuple[type[Exception], ...], Callable[[Exception], str]]]


@contextmanager
def unreadable_on(path: Path, reasons: Reasons) -> Iterator[None]:
    """Raise ``UnreadableScanError`` for ``path`` in place of an exception that ``reasons`` names
    (``from None``: the library's traceback says nothing more to a user) or of a missing file;
    an ``UnreadableScanError`` and any other exception propagate unchanged."""
    try:
        yield
    except UnreadableScanError:
        raise
    except FileNotFoundError:
        raise UnreadableScanError(path, "file not found or not accessible") from None
    except Exception as exc:
        for kinds, reason in reasons:
            if isinstance(exc, kinds):
                raise UnreadableScanError(path, reason(exc)) from None
        raise
