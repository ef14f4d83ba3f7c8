"""The ``medxfer`` command: parse the arguments, run the subcommand, turn errors into exit codes."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Sequence

from medxfer.datasets.manifest import ManifestError
from medxfer.datasets.scan import MedxferWarning
from medxfer.datasets.sources import UnreadableFilesError
from medxfer.datasets.splits import PatientLeakageError, SplitError
from medxfer.filenames import printable, shown
from medxfer.pipeline.cli.parser import build_parser

# What a user can do after Ctrl-C, per command (outputs are written atomically: none is half-written).
RESUME_HINTS = {
    "predict": "the scans done so far are kept in OUT.parts/: run the same command again to continue",
    "train": "run the same command with --resume to continue from the last finished epoch",
}


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Print medxfer's own warnings; other libraries' warning text may quote file contents
    (patient identifiers included), so it is not echoed."""
    if issubclass(category, MedxferWarning):
        print(f"medxfer: warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 success, 1 a clear error about the data, 2 usage)."""
    args = build_parser().parse_args(argv)
    # Decoder failures are reported per file by medxfer; pydicom's own log of them is noise here,
    # and its messages can quote header values.
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)
    # File names from a PACS export need not be valid UTF-8: escape rather than stop half-way.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = _show_warning
            return args.func(args)
    except BrokenPipeError:  # `medxfer inspect --json | head`: the reader has gone, not an error
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keep Python's exit flush quiet
        return 0
    except KeyboardInterrupt:
        hint = RESUME_HINTS.get(args.command, "nothing was left half-written")
        if args.command == "predict":
            hint = hint.replace("OUT.parts/", shown(f"{args.out}.parts/"))
        print(f"\nmedxfer {args.command}: interrupted; {hint}", file=sys.stderr)
        return 130
    except (UnreadableFilesError, ManifestError, SplitError, PatientLeakageError, OSError, ValueError) as exc:
        print(printable(f"medxfer {args.command}: error: {exc}"), file=sys.stderr)
        return 1
