from __future__ import annotations

import stat

import pytest

from medxfer.datasets.metadata import SaltError, normalise_sex, parse_age, patient_key, pseudonym_salt, study_key


@pytest.mark.parametrize(
    "value, years",
    [("045Y", 45.0), ("006M", 0.5), ("010W", round(70 / 365.25, 3)), ("003D", round(3 / 365.25, 3)),
     ("45", 45.0), (62, 62.0), (" 070Y ", 70.0)],
)
def test_age_strings_become_years(value, years):
    assert parse_age(value) == pytest.approx(years)


@pytest.mark.parametrize("value", [None, "", "abc", "045X", "200Y", -3])
def test_malformed_or_implausible_ages_are_unknown(value):
    assert parse_age(value) is None


@pytest.mark.parametrize("value, sex", [("M", "M"), ("female", "F"), (" f ", "F"), ("O", "O"), ("", None), ("X", None)])
def test_sex_is_normalised(value, sex):
    assert normalise_sex(value) == sex


def test_patient_key_is_stable_salted_and_hides_the_id():
    key = patient_key("MRN-000123", salt=b"a")
    assert key == patient_key(" MRN-000123 ", salt=b"a")
    assert key != patient_key("MRN-000123", salt=b"b")
    assert key != patient_key("MRN-000124", salt=b"a")
    assert "000123" not in key and len(key) == 17
    assert patient_key("", salt=b"a") is None and patient_key(None) is None


def test_salt_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("MEDXFER_SALT", "shared-secret-of-our-study")
    assert pseudonym_salt() == b"shared-secret-of-our-study"
    assert patient_key("123") == patient_key("123", salt=b"shared-secret-of-our-study")


def test_short_salt_is_refused(monkeypatch):
    monkeypatch.setenv("MEDXFER_SALT", "short")
    with pytest.raises(SaltError, match="at least 16 are needed"):
        patient_key("123")


def test_empty_salt_variable_counts_as_unset(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDXFER_SALT", "")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert pseudonym_salt() == (tmp_path / "medxfer" / "pseudonym-salt").read_bytes()


def test_unwritable_config_folder_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv("MEDXFER_SALT")
    (tmp_path / "medxfer").write_text("a file where the folder should be")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    with pytest.raises(SaltError, match="cannot create or read the pseudonym salt.*MEDXFER_SALT"):
        pseudonym_salt()


def test_truncated_salt_file_is_refused_not_used(monkeypatch, tmp_path):
    monkeypatch.delenv("MEDXFER_SALT")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    (tmp_path / "medxfer").mkdir()
    (tmp_path / "medxfer" / "pseudonym-salt").write_bytes(b"")
    with pytest.raises(SaltError, match="pseudonym-salt is 0 bytes"):
        pseudonym_salt()


def test_without_environment_a_private_salt_is_created_once(monkeypatch, tmp_path):
    monkeypatch.delenv("MEDXFER_SALT")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    first = pseudonym_salt()
    salt_file = tmp_path / "medxfer" / "pseudonym-salt"
    assert salt_file.read_bytes() == first and len(first) == 64
    assert stat.S_IMODE(salt_file.stat().st_mode) == 0o600
    assert pseudonym_salt() == first
    assert [p.name for p in (tmp_path / "medxfer").iterdir()] == ["pseudonym-salt"]  # no temporary left


def test_a_study_key_is_stable_salted_and_never_equals_a_patient_key():
    salt = b"0123456789abcdef-salt"
    uid = "1.2.826.0.1.3680043.8.498.12345"
    assert study_key(uid, salt) == study_key(f" {uid} ", salt) and study_key(uid, salt).startswith("s")
    assert study_key(uid, salt) != study_key(uid, b"another-salt-0123456789")
    assert study_key(uid, salt)[1:] != patient_key(uid, salt)[1:]
    assert uid not in study_key(uid, salt) and study_key("", salt) is None and study_key(None, salt) is None
