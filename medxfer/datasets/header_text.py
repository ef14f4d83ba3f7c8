"""What free-text DICOM header values may leave the reader: one policy for every output.

Header fields that are not patient identifiers can still hold a name: InstitutionName is often a
named clinic ("Dr Smith's practice"), and scanners write free text wherever the standard allows
it (ViewPosition "AP  J.SMITH", Manufacturer typed in by a service engineer). Every such value
is turned into something that cannot carry a name before it reaches ``Scan.meta``, and so
before any report, CSV, model card or log:

=====================  ======================================================================
``site``               InstitutionName -> a pseudonymous key ``site-`` + 8 hex digits (salted
                       HMAC, like the patient keys): the same site always gets the same key
``manufacturer``       a known vendor's canonical name (``Siemens``, ``GE``, ``Agfa``...,
                       ``MANUFACTURERS`` below) or, for any other text, a key ``vendor-`` + 8 hex
``view``               a defined term of ViewPosition (``AP``, ``PA``, ``LL``...; the first word
                       of "AP SUPINE") or ``other``
``modality``           a defined term of Modality (``CR``, ``DX``, ``CT``...) or ``other``
``body_part``          a defined term of BodyPartExamined (``CHEST``...) or ``other``
``photometric_...``    a defined term of PhotometricInterpretation or ``other``
=====================  ======================================================================

Values from a manifest are the user's own choice and are kept as written: to show site names in
a report, give a ``site`` column.
"""

from __future__ import annotations

import re

from medxfer.datasets.metadata import keyed_pseudonym

OTHER = "other"

# Compact (letters and digits, lower case) start of the Manufacturer text -> the name shown.
MANUFACTURERS = {
    "gemedical": "GE", "gehealthcare": "GE", "generalelectric": "GE", "siemens": "Siemens",
    "philips": "Philips", "agfa": "Agfa", "carestream": "Carestream", "kodak": "Kodak", "fuji": "Fujifilm",
    "canon": "Canon", "toshiba": "Toshiba", "konica": "Konica Minolta", "samsung": "Samsung",
    "shimadzu": "Shimadzu", "hologic": "Hologic", "hitachi": "Hitachi", "varian": "Varian", "varex": "Varex",
    "swissray": "Swissray", "drgem": "DRGEM", "rayence": "Rayence", "vieworks": "Vieworks",
    "trixell": "Trixell", "thales": "Thales", "mindray": "Mindray", "unitedimaging": "United Imaging",
    "neusoft": "Neusoft", "planmed": "Planmed", "planmeca": "Planmeca", "sirona": "Sirona", "careray": "CareRay",
    "iray": "iRay", "imagingdynamics": "Imaging Dynamics", "delmedical": "Del Medical", "sectra": "Sectra",
    "lodox": "Lodox", "icrco": "iCRco", "orex": "Orex",
    "allengers": "Allengers", "perlove": "Perlove", "wandong": "Wandong", "angell": "Angell",
}
_EXACT_MANUFACTURERS = {"ge": "GE", "uih": "United Imaging"}

# DICOM PS3.3 C.8.11.5.1.1 (radiography), C.8.11.7 (mammography) and common lateral spellings.
VIEW_POSITIONS = frozenset({
    "AP", "PA", "LL", "RL", "RLD", "LLD", "RLO", "LLO", "LAT", "LATERAL",
    "CC", "MLO", "ML", "LM", "LMO", "FB", "SIO", "ISO", "XCCL", "XCCM",
})
# DICOM PS3.3 C.7.3.1.1.1 defined terms (current and retired), as far as images go.
MODALITIES = frozenset({
    "CR", "DX", "RG", "MG", "IO", "PX", "XA", "RF", "CT", "MR", "PT", "NM", "US", "OT", "SC", "ES", "XC",
    "GM", "SM", "OP", "OPT", "OCT", "BDUS", "BMD", "DG", "TG", "RTIMAGE", "LS", "HC", "IVUS", "IVOCT",
    "CD", "DD", "DF", "DM", "DS", "EC", "FA", "MA", "MS", "ST", "VF", "SEG", "PR", "SR", "KO", "DOC",
})
# DICOM PS3.16 Annex L, the values seen on radiographs and CT.
BODY_PARTS = frozenset({
    "CHEST", "THORAX", "LUNG", "HEART", "ABDOMEN", "PELVIS", "ABDOMENPELVIS", "CHESTABDOMEN",
    "CHESTABDPELVIS", "HEAD", "SKULL", "BRAIN", "NECK", "HEADNECK", "SPINE", "WHOLESPINE", "CSPINE",
    "TSPINE", "LSPINE", "SSPINE", "SACRUM", "COCCYX", "CLAVICLE", "RIB", "STERNUM", "SHOULDER", "ARM",
    "HUMERUS", "ELBOW", "FOREARM", "WRIST", "HAND", "FINGER", "HIP", "LEG", "FEMUR", "KNEE", "TIBIA",
    "ANKLE", "FOOT", "TOE", "EXTREMITY", "UPRLIMB", "LOWRLIMB", "BREAST", "JAW", "TMJ", "SINUS",
    "FACE", "ORBIT", "WHOLEBODY",
})
PHOTOMETRIC = frozenset({
    "MONOCHROME1", "MONOCHROME2", "PALETTE COLOR", "RGB", "HSV", "ARGB", "CMYK", "YBR_FULL",
    "YBR_FULL_422", "YBR_PARTIAL_422", "YBR_PARTIAL_420", "YBR_ICT", "YBR_RCT", "XYB",
})


def _text(value: object) -> str | None:
    if value is None:
        return None
    text = " ".join(str(value).split())
    return text or None


def _compact(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def site_key(institution: object) -> str | None:
    """InstitutionName as a pseudonymous key (``site-`` + 8 hex digits); None when absent."""
    text = _text(institution)
    return None if text is None else keyed_pseudonym("site", text.upper(), "site-", 8)


def manufacturer(value: object) -> str | None:
    """A known vendor's name, or a pseudonymous ``vendor-`` key for any other Manufacturer text."""
    text = _text(value)
    if text is None:
        return None
    compact = _compact(text)
    if compact in _EXACT_MANUFACTURERS:
        return _EXACT_MANUFACTURERS[compact]
    for start, name in MANUFACTURERS.items():
        if compact.startswith(start):
            return name
    return keyed_pseudonym("vendor", text.upper(), "vendor-", 8)


def _defined_term(value: object, terms: frozenset[str], *, first_word: bool = False) -> str | None:
    text = _text(value)
    if text is None:
        return None
    text = text.upper()
    if text in terms:
        return text
    if first_word:
        word = re.split(r"[^A-Z0-9]+", text)[0]
        if word in terms:
            return word
    return OTHER


def view_position(value: object) -> str | None:
    """ViewPosition as a defined term (``"AP SUPINE"`` -> ``AP``) or ``other``."""
    return _defined_term(value, VIEW_POSITIONS, first_word=True)


def modality(value: object) -> str | None:
    """Modality as a defined term or ``other``."""
    return _defined_term(value, MODALITIES)


def body_part(value: object) -> str | None:
    """BodyPartExamined as a defined term or ``other``."""
    return _defined_term(value, BODY_PARTS)


def photometric(value: object) -> str | None:
    """PhotometricInterpretation as a defined term or ``other``."""
    return _defined_term(value, PHOTOMETRIC)
