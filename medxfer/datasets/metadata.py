"""Non-identifying metadata: the keys every reader fills, value normalisation, and patient pseudonyms.

Keys a reader may set in ``Scan.meta`` (absent or ``None`` when unknown):

=============================  ==============================================================
``format``                     ``dicom``, ``nifti``, ``png``, ``jpeg`` or ``tiff``
``modality``                   DICOM Modality (``CR``, ``DX``, ``CT``...; ``other``)
``view``                       view position (``PA``, ``AP``, ``LL``...; ``other``)
``sex``                        ``M``, ``F`` or ``O``
``age``                        age in years (float; ``006M`` is 0.5)
``manufacturer``               a known vendor's name, else a pseudonymous ``vendor-`` key
``site``                       pseudonymous key of the institution name (``site-`` + 8 hex)
``body_part``                  body part examined (``CHEST``...; ``other``)
``pixel_spacing``              (row, column) spacing in millimetres
``photometric_interpretation``  as stored (``MONOCHROME1``, ``RGB``...; ``other``)
``bits_stored``                bits per stored sample
``patient_key``                salted hash of the patient identifier, for grouping only
``study_key``                  salted hash of the StudyInstanceUID, to group a study's images
=============================  ==============================================================

The raw PatientName, PatientID, birth date and accession number are never copied anywhere, and
free-text header values go through ``medxfer.datasets.header_text`` first.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import re
import secrets
import tempfile
from pathlib import Path

SALT_ENV = "MEDXFER_SALT"
MIN_SALT_BYTES = 16
KEY_HEX_CHARS = 16

_AGE = re.compile(r"^\s*(\d{1,3})\s*([DWMY])\s*$", re.IGNORECASE)
_DAYS_PER_UNIT = {"D": 1.0, "W": 7.0, "M": 365.25 / 12.0, "Y": 365.25}


def parse_age(value: object) -> float | None:
    """Age in years from a DICOM Age String (``045Y``, ``006M``, ``010W``, ``003D``) or a number.

    Returns ``None`` for empty, malformed or implausible (negative, over 150) values.
    """
    if value is None:
        return None
    if isinstance(value, (int, float)):
        years = float(value)
    else:
        text = str(value).strip()
        if not text:
            return None
        match = _AGE.match(text)
        if match:
            years = int(match.group(1)) * _DAYS_PER_UNIT[match.group(2).upper()] / 365.25
        else:
            try:
                years = float(text)
            except ValueError:
                return None
    if math.isnan(years) or not 0.0 <= years <= 150.0:
        return None
    return round(years, 3)


def normalise_sex(value: object) -> str | None:
    """``M``, ``F`` or ``O`` from DICOM PatientSex or common manifest spellings; ``None`` if unknown."""
    if value is None:
        return None
    text = str(value).strip().upper()
    if text in ("M", "MALE", "MAN"):
        return "M"
    if text in ("F", "FEMALE", "WOMAN", "W"):
        return "F"
    if text in ("O", "OTHER"):
        return "O"
    return None


def _config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "medxfer"


def pseudonym_salt() -> bytes:
    """The secret salt for patient keys.

    Taken from ``$MEDXFER_SALT`` when set (share it to compare keys across machines); otherwise a
    random salt created once per user at ``$XDG_CONFIG_HOME/medxfer/pseudonym-salt`` (mode 0600).
    A secret salt matters: hospital patient IDs are short and a public salt could be brute-forced.
    Raises ``SaltError`` for a salt shorter than ``MIN_SALT_BYTES`` or a salt file that cannot be
    created or read.
    """
    env = os.environ.get(SALT_ENV)
    if env:  # set and not empty
        return _checked(env.encode("utf-8"), f"${SALT_ENV}")
    path = _config_dir() / "pseudonym-salt"
    try:
        if not path.exists():
            _create_salt_file(path)
        return _checked(path.read_bytes(), str(path))
    except OSError as exc:
        raise SaltError(f"cannot create or read the pseudonym salt {path}: {exc.strerror}; set ${SALT_ENV}") from None


class SaltError(ValueError):
    """The pseudonym salt is missing, unreadable or too short: a set-up problem, not a bad file."""


def _checked(salt: bytes, source: str) -> bytes:
    if len(salt) < MIN_SALT_BYTES:
        raise SaltError(
            f"the pseudonym salt from {source} is {len(salt)} bytes; at least {MIN_SALT_BYTES} are needed "
            "so that patient keys cannot be reversed by trying every ID"
        )
    return salt


def _create_salt_file(path: Path) -> None:
    """Write a random salt completely to a private temporary file, then link it into place, so
    that no process ever reads a half-written salt and concurrent first runs agree on one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".pseudonym-salt.", dir=path.parent)  # created with mode 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(secrets.token_hex(32).encode("ascii"))
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:  # another process won the race: keep its salt
            pass
        except OSError:  # a file system without hard links: a rename is still all-or-nothing
            if not path.exists():
                os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def patient_key(patient_id: object, salt: bytes | None = None) -> str | None:
    """Pseudonymous, stable key for a patient identifier (HMAC-SHA256, 16 hex characters).

    Returns ``None`` for a missing or blank identifier. Equal identifiers give equal keys under the
    same salt; the identifier cannot be recovered from the key without the salt.
    """
    if patient_id is None:
        return None
    text = str(patient_id).strip()
    if not text:
        return None
    digest = hmac.new(salt if salt is not None else pseudonym_salt(), text.encode("utf-8"), hashlib.sha256)
    return "p" + digest.hexdigest()[:KEY_HEX_CHARS]


def study_key(study_uid: object, salt: bytes | None = None) -> str | None:
    """Pseudonymous, stable key for a DICOM StudyInstanceUID (HMAC-SHA256 under the patient-key
    salt, in its own domain so that it never equals a patient key; "s" and 16 hex characters).
    ``None`` for a missing or blank UID."""
    if study_uid is None or not str(study_uid).strip():
        return None
    return keyed_pseudonym("study", str(study_uid).strip(), "s", KEY_HEX_CHARS, salt)


def keyed_pseudonym(domain: str, text: str, prefix: str, hex_chars: int, salt: bytes | None = None) -> str:
    """``prefix`` and ``hex_chars`` hex digits of HMAC-SHA256(salt, ``domain:text``): the same
    text always gives the same key under one salt, and the text cannot be recovered from it.
    Each ``domain`` (study, site, vendor) has its own keys."""
    digest = hmac.new(salt if salt is not None else pseudonym_salt(), f"{domain}:{text}".encode(),
                      hashlib.sha256)
    return prefix + digest.hexdigest()[:hex_chars]
