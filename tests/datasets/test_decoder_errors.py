"""A decoding library's exceptions become one ``UnreadableScanError`` reason, by the first match."""

from __future__ import annotations

from pathlib import Path

import pytest

from medxfer.datasets.decoder_errors import unreadable_on
from medxfer.datasets.scan import UnreadableScanError

REASONS = (
    (KeyError, lambda exc: f"key {exc}"),
    ((OSError, ValueError), lambda exc: f"damaged: {exc}"),
)


@pytest.mark.parametrize(
    ("raised", "reason"),
    [
        (KeyError("k"), "key 'k'"),
        (ValueError("bad"), "damaged: bad"),
        (OSError("io"), "damaged: io"),  # the first entry whose types match
        (FileNotFoundError(2, "No such file"), "file not found or not accessible"),
        (UnreadableScanError("x.png", "kept as it was"), "kept as it was"),
    ],
)
def test_a_listed_exception_becomes_its_reason(raised: Exception, reason: str) -> None:
    with pytest.raises(UnreadableScanError) as caught, unreadable_on(Path("x.png"), REASONS):
        raise raised
    assert caught.value.reason == reason and caught.value.path == Path("x.png")
    assert caught.value.__cause__ is None


def test_an_exception_not_listed_propagates_unchanged() -> None:
    error = RuntimeError("a bug, not a damaged file")
    with pytest.raises(RuntimeError) as caught, unreadable_on(Path("x.png"), REASONS):
        raise error
    assert caught.value is error
