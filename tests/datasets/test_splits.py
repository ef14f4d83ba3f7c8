from __future__ import annotations

import csv
from collections import Counter

import pytest

from medxfer.datasets.sources import load_labelled
from medxfer.datasets.splits import (
    PatientLeakageError,
    SplitError,
    SplitWarning,
    assign_splits,
    check_no_leakage,
    write_splits_csv,
)


def manifest_rows(cohort):
    with open(cohort.manifest, newline="") as handle:
        return list(csv.DictReader(handle))


def write_rows(path, rows, columns):
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_every_patient_is_in_exactly_one_split_and_labels_are_stratified(cohort):
    scans = assign_splits(load_labelled(cohort.manifest), seed=0)
    splits_of = {}
    for record in scans.records:
        splits_of.setdefault(record.patient_key, set()).add(record.split)
    assert all(len(s) == 1 for s in splits_of.values())
    counts = Counter(r.split for r in scans.records)
    assert set(counts) == {"train", "val", "test"}
    assert 0.08 <= counts["test"] / len(scans.records) <= 0.25
    assert 0.08 <= counts["val"] / len(scans.records) <= 0.25
    for split in ("train", "val", "test"):
        labels = Counter(r.label for r in scans.records if r.split == split)
        assert labels["opacity"] / sum(labels.values()) == pytest.approx(0.5, abs=0.2), split


def test_same_seed_same_split_different_seed_different_split(cohort):
    data = load_labelled(cohort.manifest)
    first = [r.split for r in assign_splits(data, seed=7).records]
    assert first == [r.split for r in assign_splits(data, seed=7).records]
    assert first != [r.split for r in assign_splits(data, seed=8).records]


def test_split_does_not_depend_on_the_pseudonym_salt(cohort, monkeypatch):
    monkeypatch.setenv("MEDXFER_SALT", "first-salt-0123456789")
    first = {r.path: r.split for r in assign_splits(load_labelled(cohort.manifest), seed=3).records}
    monkeypatch.setenv("MEDXFER_SALT", "second-salt-0123456789")
    second = {r.path: r.split for r in assign_splits(load_labelled(cohort.manifest), seed=3).records}
    assert first == second


def test_injected_patient_overlap_is_caught_and_named_by_pseudonym(cohort, tmp_path):
    rows = manifest_rows(cohort)
    by_patient = Counter(r["patient_id"] for r in rows)
    repeat = next(pid for pid, n in by_patient.items() if n >= 2)
    seen = 0
    for row in rows:
        row["path"] = str((cohort.root / row["path"]).resolve())
        row["split"] = "train"
        if row["patient_id"] == repeat:
            row["split"] = "test" if seen else "train"
            seen += 1
    manifest = write_rows(tmp_path / "leaky.csv", rows, ["path", "label", "patient_id", "split"])
    data = load_labelled(manifest)
    with pytest.raises(PatientLeakageError, match="1 patient\\(s\\) have images in more than one split") as caught:
        assign_splits(data)
    assert repeat not in str(caught.value)
    with pytest.raises(PatientLeakageError):
        check_no_leakage(data.records)


def test_split_column_with_train_and_test_only_gets_val_carved_from_train(cohort, tmp_path):
    rows = manifest_rows(cohort)
    patients = sorted({r["patient_id"] for r in rows})
    test_patients = set(patients[: len(patients) // 5])
    for row in rows:
        row["path"] = str((cohort.root / row["path"]).resolve())
        row["split"] = "test" if row["patient_id"] in test_patients else "train"
    manifest = write_rows(tmp_path / "tt.csv", rows, ["path", "label", "patient_id", "split"])
    scans = assign_splits(load_labelled(manifest), seed=0)
    given = {str((cohort.root / r["path"]).resolve()) if not r["path"].startswith("/") else r["path"]: r["split"] for r in rows}
    for record in scans.records:
        if given[str(record.path)] == "test":
            assert record.split == "test"
        else:
            assert record.split in ("train", "val")
    assert Counter(r.split for r in scans.records)["val"] > 0
    check_no_leakage(scans.records)


def test_half_filled_split_column_is_refused(cohort, tmp_path):
    rows = manifest_rows(cohort)
    for i, row in enumerate(rows):
        row["path"] = str((cohort.root / row["path"]).resolve())
        row["split"] = "train" if i % 2 else ""
    manifest = write_rows(tmp_path / "half.csv", rows, ["path", "label", "patient_id", "split"])
    with pytest.raises(SplitError, match="blank for"):
        assign_splits(load_labelled(manifest))


def test_too_few_patients_is_a_clear_error(cohort, tmp_path):
    rows = manifest_rows(cohort)
    few = [r for r in rows if r["patient_id"] in sorted({x["patient_id"] for x in rows})[:4]]
    for row in few:
        row["path"] = str((cohort.root / row["path"]).resolve())
    manifest = write_rows(tmp_path / "few.csv", few, ["path", "label", "patient_id"])
    data = load_labelled(manifest)
    with pytest.raises(SplitError, match="only 4 patient\\(s\\) to split"):
        assign_splits(data)


def test_without_patient_ids_it_warns_and_splits_by_file(cohort, tmp_path, monkeypatch):
    data = load_labelled(cohort.manifest)
    import dataclasses

    anonymous = dataclasses.replace(data, records=[dataclasses.replace(r, patient_key=None) for r in data.records])
    with pytest.warns(SplitWarning, match="have no patient id"):
        scans = assign_splits(anonymous)
    assert Counter(r.split for r in scans.records).keys() == {"train", "val", "test"}


def test_splits_csv_lists_every_file_with_pseudonyms_only(cohort, tmp_path):
    scans = assign_splits(load_labelled(cohort.manifest), seed=0)
    out = write_splits_csv(scans, tmp_path / "run" / "splits.csv")
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["path", "label", "split", "patient_key"]
    assert {r["path"] for r in rows} == {r["path"] for r in manifest_rows(cohort)}
    raw_ids = {r["patient_id"] for r in manifest_rows(cohort)}
    text = out.read_text()
    assert not any(pid in text for pid in raw_ids)
    assert [p.name for p in out.parent.iterdir()] == ["splits.csv"]  # no temporary file left behind


@pytest.mark.parametrize("val, test", [(0.0, 0.15), (2.0, 0.15), (0.15, -0.1), (0.5, 0.45)])
def test_impossible_fractions_are_refused(cohort, val, test):
    with pytest.raises(SplitError, match="fraction|less than 10%"):
        assign_splits(load_labelled(cohort.manifest), val_fraction=val, test_fraction=test)


def test_a_class_missing_from_a_split_is_reported(cohort):
    import dataclasses

    data = load_labelled(cohort.manifest)
    rare_patients = sorted({r.patient_key for r in data.records if r.label == "opacity"})[:2]
    records = [r for r in data.records if r.label == "normal" or r.patient_key in rare_patients]
    rare = dataclasses.replace(data, records=records)
    with pytest.warns(SplitWarning, match="opacity have no images in (val|test)"):
        assign_splits(rare, seed=0)


def test_some_files_without_patient_id_are_counted_in_a_warning(cohort):
    import dataclasses

    data = load_labelled(cohort.manifest)
    records = [dataclasses.replace(r, patient_key=None) if i < 5 else r for i, r in enumerate(data.records)]
    with pytest.warns(SplitWarning, match=f"5 of {len(records)} file\\(s\\) have no patient id"):
        assign_splits(dataclasses.replace(data, records=records))


def test_a_label_a_spreadsheet_would_run_is_written_as_text_and_read_back(cohort, tmp_path):
    from medxfer import csvfiles

    rows = [{**row, "path": str(cohort.root / row["path"]),
             "label": "=HYPERLINK(1)" if row["label"] == "opacity" else row["label"]} for row in manifest_rows(cohort)]
    manifest = write_rows(tmp_path / "m.csv", rows, ["path", "label", "patient_id"])
    out = write_splits_csv(assign_splits(load_labelled(manifest)), tmp_path / "splits.csv")
    assert b",'=HYPERLINK(1)," in out.read_bytes()
    assert {row["label"] for row in csvfiles.read_csv(out)} == {"normal", "=HYPERLINK(1)"}
