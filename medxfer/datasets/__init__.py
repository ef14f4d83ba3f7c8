"""Reading scans, indexing datasets and splitting them by patient (part 1 of the pipeline)."""

from medxfer.datasets.intensity import Window
from medxfer.datasets.inventory import inspect_path, summarise
from medxfer.datasets.manifest import ManifestError
from medxfer.datasets.reader import read_header, read_scan
from medxfer.datasets.scan import Scan, UnreadableScanError
from medxfer.datasets.sources import (
    ScanRecord,
    ScanSet,
    UnreadableFile,
    UnreadableFilesError,
    load_labelled,
    load_scans,
)
from medxfer.datasets.splits import (
    PatientLeakageError,
    SplitError,
    SplitWarning,
    assign_folds,
    assign_splits,
    check_no_leakage,
    write_splits_csv,
)
from medxfer.datasets.volume import VOLUME_STRATEGIES, volume_to_2d

__all__ = [
    "VOLUME_STRATEGIES",
    "ManifestError",
    "PatientLeakageError",
    "Scan",
    "ScanRecord",
    "ScanSet",
    "SplitError",
    "SplitWarning",
    "UnreadableFile",
    "UnreadableFilesError",
    "UnreadableScanError",
    "Window",
    "assign_folds",
    "assign_splits",
    "check_no_leakage",
    "inspect_path",
    "load_labelled",
    "load_scans",
    "read_header",
    "read_scan",
    "summarise",
    "volume_to_2d",
    "write_splits_csv",
]
