from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medxfer.datasets import dicom as dicom_module
from medxfer.datasets import phantom
from medxfer.datasets.manifest import ManifestError
from medxfer.datasets.metadata import SaltError
from medxfer.datasets.scan import MedxferWarning
from medxfer.datasets.sources import (
    UnreadableFilesError,
    detect_layout,
    load_labelled,
    load_scans,
)


def write_image(path, *, patient_id="P1", sex="F", age="040Y", value=0.5):
    path.parent.mkdir(parents=True, exist_ok=True)
    return phantom.encode_dicom(
        np.full((16, 16), value, np.float32), path,
        patient={"PatientID": patient_id, "PatientName": "DOE^JANE", "PatientSex": sex, "PatientAge": age},
    )


def write_manifest(path, rows, columns=("path", "label", "patient_id")):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(rows)
    return path


def test_class_folders_give_labels_from_folder_names(tmp_path):
    write_image(tmp_path / "normal" / "a.dcm")
    write_image(tmp_path / "opacity" / "deeper" / "b.dcm", patient_id="P2")
    scans = load_scans(tmp_path, labelled=True)
    assert scans.layout == "classes"
    assert {(r.path.name, r.label) for r in scans.records} == {("a.dcm", "normal"), ("b.dcm", "opacity")}
    assert scans.classes == ("normal", "opacity")


def test_patient_named_folders_are_not_taken_for_classes_unless_labels_are_needed(tmp_path):
    write_image(tmp_path / "DOE_JOHN_MRN12345" / "STUDY1" / "IM0001")
    write_image(tmp_path / "ROE_JANE_MRN67890" / "STUDY1" / "IM0001", patient_id="P2")
    scans = load_scans(tmp_path)
    assert scans.layout == "unlabelled" and scans.classes == ()
    assert "DOE_JOHN" not in repr([r.label for r in scans.records])


def test_file_beside_class_folders_is_recorded_without_a_label(tmp_path):
    write_image(tmp_path / "normal" / "a.dcm")
    write_image(tmp_path / "opacity" / "b.dcm")
    write_image(tmp_path / "stray.dcm")
    scans = load_scans(tmp_path, layout="classes")
    assert [(u.path.name, u.reason) for u in scans.unreadable] == [("stray.dcm", "file beside the class folders, so it has no label")]


def test_manifest_values_override_header_values_and_ids_are_pseudonymised(tmp_path):
    write_image(tmp_path / "img" / "a.dcm", sex="F", age="040Y", patient_id="MRN-777")
    manifest = write_manifest(
        tmp_path / "labels.csv", [["img/a.dcm", "opacity", "MRN-777", "M", "41", "north"]],
        columns=("path", "label", "patient_id", "sex", "age", "site"),
    )
    scans = load_scans(manifest)
    (record,) = scans.records
    assert record.label == "opacity"
    assert record.meta["sex"] == "M" and record.meta["age"] == 41.0 and record.meta["site"] == "north"
    assert record.patient_key.startswith("p")
    assert "MRN-777" not in repr(scans)


def test_manifest_patient_id_and_header_patient_id_give_the_same_key(tmp_path):
    write_image(tmp_path / "a.dcm", patient_id="MRN-777")
    write_image(tmp_path / "b.dcm", patient_id="MRN-777")
    manifest = write_manifest(tmp_path / "m.csv", [["a.dcm", "x", "MRN-777"]], columns=("path", "label", "patient_id"))
    with_id = load_scans(manifest).records[0].patient_key
    header_only = load_scans(write_manifest(tmp_path / "n.csv", [["b.dcm", "x"]], columns=("path", "label"))).records[0]
    assert with_id == header_only.patient_key


def test_manifest_problems_name_the_row(tmp_path):
    write_image(tmp_path / "a.dcm")
    dup = write_manifest(tmp_path / "dup.csv", [["a.dcm", "x", "1"], ["./a.dcm", "y", "1"]])
    with pytest.raises(ManifestError, match="row 3: ./a.dcm is the same file as row 2"):
        load_scans(dup)
    bad_split = write_manifest(tmp_path / "split.csv", [["a.dcm", "x", "1", "holdin"]],
                               columns=("path", "label", "patient_id", "split"))
    with pytest.raises(ManifestError, match="row 2: unknown split 'holdin'"):
        load_scans(bad_split)
    no_path = write_manifest(tmp_path / "nopath.csv", [["a.dcm"]], columns=("file",))
    with pytest.raises(ManifestError, match="no 'path' column"):
        load_scans(no_path)


def test_manifest_with_excel_bom_and_upper_case_columns_is_read(tmp_path):
    write_image(tmp_path / "a.dcm")
    (tmp_path / "m.csv").write_text("\ufeffPath,Label,Split\na.dcm,normal,Validation\n", encoding="utf-8")
    (record,) = load_scans(tmp_path / "m.csv").records
    assert record.label == "normal" and record.split == "val"


def test_identifying_manifest_columns_are_dropped_with_a_warning(tmp_path):
    write_image(tmp_path / "a.dcm")
    manifest = write_manifest(tmp_path / "m.csv", [["a.dcm", "x", "Doe^Jane", "19700101"]],
                              columns=("path", "label", "patient_name", "birth_date"))
    with pytest.warns(UserWarning, match="birth_date, patient_name ignored"):
        scans = load_scans(manifest)
    assert "Doe^Jane" not in repr(scans) and "19700101" not in repr(scans)


def test_missing_listed_file_is_recorded(tmp_path):
    write_image(tmp_path / "a.dcm")
    scans = load_scans(write_manifest(tmp_path / "m.csv", [["a.dcm", "x", "1"], ["gone.dcm", "y", "2"]]))
    assert len(scans.records) == 1
    assert [(u.path.name, u.reason) for u in scans.unreadable] == [("gone.dcm", "listed in the manifest but not found")]


def test_unlabelled_folder_is_searched_recursively_and_skips_hidden_files(tmp_path):
    write_image(tmp_path / "a" / "b" / "c.dcm")
    write_image(tmp_path / "top.dcm")
    write_image(tmp_path / ".cache" / "hidden.dcm")
    (tmp_path / ".DS_Store").write_bytes(b"\x00\x01")
    scans = load_scans(tmp_path)
    assert scans.layout == "unlabelled"
    assert sorted(r.path.name for r in scans.records) == ["c.dcm", "top.dcm"]
    assert scans.unreadable == [] and all(r.label is None for r in scans.records)


def test_layout_detection(tmp_path):
    (tmp_path / "cls" / "a").mkdir(parents=True)
    (tmp_path / "cls" / "b").mkdir()
    (tmp_path / "man").mkdir()
    (tmp_path / "man" / "manifest.csv").write_text("path,label\n")
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "x.dcm").write_bytes(b"")
    assert detect_layout(tmp_path / "cls", labelled=True) == "classes"
    assert detect_layout(tmp_path / "cls") == "unlabelled"
    assert detect_layout(tmp_path / "man") == "manifest"
    assert detect_layout(tmp_path / "man" / "manifest.csv") == "manifest"
    assert detect_layout(tmp_path / "flat") == "unlabelled"
    with pytest.raises(FileNotFoundError):
        detect_layout(tmp_path / "nowhere")


def test_labelled_set_with_unreadable_files_fails_early_listing_all(tmp_path):
    write_image(tmp_path / "normal" / "a.dcm")
    write_image(tmp_path / "opacity" / "b.dcm")
    (tmp_path / "normal" / "empty.dcm").write_bytes(b"")
    (tmp_path / "opacity" / "noise.dcm").write_bytes(np.random.default_rng(0).bytes(2000))
    with pytest.raises(UnreadableFilesError) as caught:
        load_labelled(tmp_path)
    message = str(caught.value)
    assert "empty.dcm: empty file" in message and "noise.dcm: unrecognised content" in message
    assert len(caught.value.unreadable) == 2
    scans = load_labelled(tmp_path, skip_unreadable=True)
    assert len(scans.records) == 2 and len(scans.unreadable) == 2


def test_labelled_set_needs_two_classes(tmp_path):
    write_image(tmp_path / "normal" / "a.dcm")
    with pytest.raises(ValueError, match="at least two classes"):
        load_labelled(tmp_path)


def test_scanning_a_folder_reads_headers_only(tmp_path, monkeypatch, cohort):
    shutil.copytree(cohort.root / "images", tmp_path / "images")

    def no_decoding(*args, **kwargs):
        raise AssertionError("pixel data decoded during a folder scan")

    monkeypatch.setattr(dicom_module, "pixel_array", no_decoding)
    monkeypatch.setattr(pydicom.Dataset, "pixel_array", property(no_decoding))
    scans = load_scans(tmp_path / "images")
    assert len(scans.records) == cohort.n_images and scans.unreadable == []


@pytest.mark.parametrize("header", ["PatientID", "Patient ID", "patient-id", " PATIENT_ID "])
def test_patient_id_column_spellings_are_recognised_and_pseudonymised(tmp_path, header):
    write_image(tmp_path / "a.dcm", patient_id="OTHER")
    manifest = write_manifest(tmp_path / "m.csv", [["a.dcm", "x", "MRN0000"]], columns=("path", "label", header))
    (record,) = load_scans(manifest).records
    assert record.patient_key == load_scans(write_manifest(
        tmp_path / "n.csv", [["a.dcm", "x", "MRN0000"]], columns=("path", "label", "patient_id"))).records[0].patient_key
    assert "MRN0000" not in repr(record)


def test_columns_equal_after_normalising_are_refused(tmp_path):
    write_image(tmp_path / "a.dcm")
    manifest = write_manifest(tmp_path / "m.csv", [["a.dcm", "x", "y"]], columns=("path", "Label", "label"))
    with pytest.raises(ManifestError, match="columns Label, label all mean label"):
        load_scans(manifest)


def test_manifest_that_is_not_utf8_names_the_file(tmp_path):
    write_image(tmp_path / "a.dcm")
    (tmp_path / "m.csv").write_bytes("path,label,site\na.dcm,x,Zürich\n".encode("latin-1"))
    with pytest.raises(ManifestError, match="m.csv, line 2: the site column is not UTF-8 text"):
        load_scans(tmp_path / "m.csv")


def test_a_path_that_is_not_utf8_names_the_file_the_os_gives_with_a_warning(tmp_path):
    import os

    name = b"\xe9t\xe9.dcm"  # Latin-1 "ete.dcm" with accents, as a file system may hold it
    write_image(Path(os.fsdecode(os.path.join(os.fsencode(tmp_path), name))))
    (tmp_path / "m.csv").write_bytes(b"path,label\n" + name + b",x\n")
    with pytest.warns(MedxferWarning, match="line 2: a path holds bytes that are not UTF-8"):
        scans = load_scans(tmp_path / "m.csv")
    assert [os.fsencode(r.path.name) for r in scans.records] == [name] and not scans.unreadable


def test_manifest_paths_with_backslashes_and_outside_the_folder_are_found(tmp_path):
    write_image(tmp_path / "images" / "sub" / "a.dcm")
    write_image(tmp_path / "elsewhere" / "b.dcm")
    (tmp_path / "lists").mkdir()
    manifest = write_manifest(tmp_path / "lists" / "m.csv", [["..\\images\\sub\\a.dcm", "x"], ["../elsewhere/b.dcm", "y"]],
                              columns=("path", "label"))
    scans = load_scans(manifest)
    assert scans.unreadable == []
    assert sorted(scans.relative(r.path) for r in scans.records) == ["../elsewhere/b.dcm", "../images/sub/a.dcm"]


@pytest.mark.parametrize("classes", [("normal", "opacity"), ("malignant", "benign")])
def test_symlinked_class_folders_are_followed_and_broken_links_reported(tmp_path, classes):
    first, second = classes
    write_image(tmp_path / "store" / first / "a.dcm")
    write_image(tmp_path / "store" / second / "b.dcm")
    data = tmp_path / "data"
    data.mkdir()
    for label in classes:
        (data / label).symlink_to(tmp_path / "store" / label)
    (tmp_path / "store" / second / "gone.dcm").symlink_to(tmp_path / "nowhere.dcm")
    (tmp_path / "store" / second / "loop").symlink_to(tmp_path / "store")  # leads into both classes
    scans = load_scans(data, layout="classes")
    # The loop makes a.dcm reachable under both classes: refused under both names, whichever
    # class the file system lists first; b.dcm is reached once (the loop back into its own class
    # is cut) and keeps its label.
    labelled = [(r.path.relative_to(data).as_posix(), r.label) for r in scans.records]
    assert labelled == [(f"{second}/b.dcm", second)]
    by_name = {u.path.relative_to(data).as_posix(): u.reason for u in scans.unreadable}
    assert set(by_name) == {f"{first}/a.dcm", f"{second}/loop/{first}/a.dcm", f"{second}/gone.dcm"}
    assert "cannot be opened" in by_name[f"{second}/gone.dcm"]
    assert "same file is also under class" in by_name[f"{first}/a.dcm"]


def test_a_file_linked_into_two_classes_is_refused_not_given_either_label(tmp_path):
    write_image(tmp_path / "normal" / "a.dcm")
    write_image(tmp_path / "opacity" / "b.dcm")
    (tmp_path / "opacity" / "also_a.dcm").symlink_to(tmp_path / "normal" / "a.dcm")
    scans = load_scans(tmp_path, layout="classes")
    assert [r.path.name for r in scans.records] == ["b.dcm"]
    assert sorted(u.path.name for u in scans.unreadable) == ["a.dcm", "also_a.dcm"]


def test_labelled_loading_refuses_folders_that_look_like_one_per_patient(tmp_path):
    for i in range(5):
        write_image(tmp_path / f"DOE^JOHN_MRN{i:05d}" / "STUDY1" / "IM0001", patient_id=f"MRN{i:05d}")
    with pytest.raises(ValueError, match="look like one folder per patient") as caught:
        load_labelled(tmp_path)
    assert "DOE" not in str(caught.value)
    assert len(load_labelled(tmp_path, layout="classes").classes) == 5  # when the user insists


def test_empty_trailing_columns_from_spreadsheets_are_ignored(tmp_path):
    write_image(tmp_path / "a.dcm")
    (tmp_path / "m.csv").write_text("path,label,,\na.dcm,normal,,\n")
    (record,) = load_scans(tmp_path / "m.csv").records
    assert record.label == "normal"
    (tmp_path / "n.csv").write_text("path,label,\na.dcm,normal,stray\n")
    with pytest.raises(ManifestError, match="a value in a column without a name"):
        load_scans(tmp_path / "n.csv")


@pytest.mark.parametrize("column", ["MRN", "Patient Number", "subject", "PID"])
def test_patient_identifier_columns_are_hashed_not_dropped(tmp_path, column):
    write_image(tmp_path / "a.dcm")
    manifest = write_manifest(tmp_path / "m.csv", [["a.dcm", "x", "MRN-42"]], columns=("path", "label", column))
    (record,) = load_scans(manifest).records
    assert record.patient_key == load_scans(write_manifest(
        tmp_path / "n.csv", [["a.dcm", "x", "MRN-42"]], columns=("path", "label", "patient_id"))).records[0].patient_key
    assert "MRN-42" not in repr(record)


@pytest.mark.parametrize("column", ["Patient's Name", "PatientsName", "Patient DOB", "AccessionNo", "date of birth"])
def test_identifying_column_spellings_are_dropped(tmp_path, column):
    write_image(tmp_path / "a.dcm")
    manifest = write_manifest(tmp_path / "m.csv", [["a.dcm", "x", "SECRET-VALUE"]], columns=("path", "label", column))
    with pytest.warns(UserWarning, match="ignored"):
        scans = load_scans(manifest)
    assert "SECRET-VALUE" not in repr(scans)


def test_bad_salt_stops_before_scanning_instead_of_failing_every_file(tmp_path, monkeypatch):
    write_image(tmp_path / "a.dcm")
    monkeypatch.setenv("MEDXFER_SALT", "short")
    with pytest.raises(SaltError):
        load_scans(tmp_path)


def test_layout_that_needs_a_folder_refuses_a_file(tmp_path):
    manifest = write_manifest(tmp_path / "m.csv", [])
    with pytest.raises(NotADirectoryError, match="needs a folder"):
        load_scans(manifest, layout="classes")


def test_row_with_more_values_than_columns_is_refused(tmp_path):
    write_image(tmp_path / "a.dcm")
    (tmp_path / "m.csv").write_text("path,label,site\na.dcm,normal,Mercy, North\n")
    with pytest.raises(ManifestError, match="line 2: 4 values but 3 columns"):
        load_scans(tmp_path / "m.csv")


def test_a_label_that_is_not_printable_text_is_refused_naming_it(tmp_path):
    import os

    write_image(tmp_path / "normal" / "a.dcm")
    write_image(Path(os.fsdecode(os.fsencode(tmp_path) + b"/opac\xffity/b.dcm")), patient_id="P2")
    with pytest.raises(ValueError, match=r"label\(s\) \$'opac\\xffity' hold a control character"):
        load_labelled(tmp_path, layout="classes")
