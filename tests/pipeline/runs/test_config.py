"""The training configuration: YAML file plus command-line flags, checked up front, saved resolved."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from medxfer.pipeline.runs.config import (
    CONFIG_KEYS,
    ConfigError,
    TrainConfig,
    config_from_mapping,
    diff_configs,
    load_config,
    reference_markdown,
    write_config,
)


def write_yaml(tmp_path: Path, text: str, name: str = "train.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_keys_are_the_fields_in_order_and_defaults_match_the_registries():
    from medxfer.pipeline.models.backbones import BACKBONES, DEFAULT_BACKBONE
    from medxfer.pipeline.models.finetune import STRATEGIES

    assert CONFIG_KEYS[:3] == ("data", "target_data", "out")
    assert CONFIG_KEYS == tuple(f.name for f in dataclasses.fields(TrainConfig))
    assert list(TrainConfig().to_dict()) == list(CONFIG_KEYS)
    defaults = TrainConfig()
    assert defaults.backbone == DEFAULT_BACKBONE and defaults.backbone in BACKBONES
    assert defaults.strategy in STRATEGIES
    assert defaults.validate() == defaults  # the defaults follow their own rules


def test_importing_the_module_loads_neither_torch_nor_monai():
    code = (
        "import sys, medxfer.pipeline.runs.config; "
        "print(sorted({'torch', 'monai'} & set(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_an_unknown_key_lists_the_valid_keys_and_suggests_the_close_one():
    with pytest.raises(ConfigError) as caught:
        config_from_mapping({"lrate": 0.01}, source="train.yaml")
    message = str(caught.value)
    assert message.startswith("train.yaml: unknown key 'lrate'")
    assert "did you mean 'lr'?" in message
    assert "valid keys: " + ", ".join(CONFIG_KEYS) in message


@pytest.mark.parametrize(
    "typo,meant",
    [
        ("learning_rate", "lr"),
        ("batch-size", "batch_size"),
        ("data_dir", "data"),
        ("epoch", "epochs"),
        ("xyzzy", None),
    ],
)
def test_the_suggestion_for_an_unknown_key_is_the_likely_one(typo, meant):
    with pytest.raises(ConfigError) as caught:
        config_from_mapping({typo: 1}, source="x.yaml")
    if meant is None:
        assert "did you mean" not in str(caught.value)
    else:
        assert f"(did you mean {meant!r}?)" in str(caught.value)


def test_an_unknown_key_far_from_every_key_gets_no_suggestion():
    with pytest.raises(ConfigError, match="unknown key 'zzzz'; valid keys: data,"):
        config_from_mapping({"zzzz": 1}, source="train.yaml")


@pytest.mark.parametrize(
    "settings,expected",
    [
        ({"lr": -0.1}, "lr must be a number > 0 and <= 1, got -0.1"),
        ({"lr": "abc"}, "lr must be a number > 0 and <= 1, got 'abc'"),
        ({"batch_size": True}, "batch_size must be a whole number >= 1, got True"),
        ({"amp": "yes"}, "amp must be true or false, got 'yes'"),
        (
            {"strategy": "fancy"},
            "strategy must be one of linear, partial, full, adapters, got 'fancy'",
        ),
        ({"backbone": "resnet5"}, "backbone must be one of"),
        (
            {"augment": "heavy"},
            "augment 'heavy' is not valid: unknown augmentation preset",
        ),
        (
            {"augment": {"rotation": 3}},
            "augment {'rotation': 3} is not valid: an augment mapping needs a preset key",
        ),
        ({"adapt": "adabn"}, "adapt 'adabn' needs target_data"),
        (
            {"adapt": "dann", "strategy": "linear", "target_data": "site_b"},
            "adapt 'dann' cannot work with strategy 'linear': nothing in the backbone trains",
        ),
        (
            {"val_fraction": 0.4, "test_fraction": 0.45},
            "val_fraction + test_fraction must be < 0.8",
        ),
        ({"val_fraction": 0.5}, "val_fraction must be a number > 0 and < 0.5, got 0.5"),
        (
            {"window": "40;400"},
            'window must be "default", "minmax", "percentile" or CENTER,WIDTH',
        ),
        ({"window": "40,-5"}, "got '40,-5'"),
        ({"image_size": 8}, "image_size must be a whole number from 16 to 2048, got 8"),
        (
            {"epochs": "many"},
            "epochs must be \"auto\" or a whole number >= 1, got 'many'",
        ),
        ({"epochs": 2.5}, 'epochs must be "auto" or a whole number >= 1, got 2.5'),
        ({"in_channels": 2}, "in_channels must be 1 or 3, got 2"),
        ({"volume_strategy": "all"}, "'all' is not available for training"),
        (
            {"weights": "model.onnx"},
            'weights must be "imagenet", "random" or the path of a',
        ),
        (
            {"device": "gpu"},
            'device must be "auto", "cpu", "cuda" or "cuda:N", got \'gpu\'',
        ),
        ({"cache": "sometimes"}, "cache must be one of auto, on, off, got 'sometimes'"),
        ({"lr": float("nan")}, "lr must be a number > 0 and <= 1, got nan"),
        (
            {"label_smoothing": 1},
            "label_smoothing must be a number >= 0 and < 1, got 1",
        ),
        (
            {"strategy": "partial", "trainable_stages": 5, "backbone": "resnet18"},
            "trainable_stages must be 1 to 4 for resnet18",
        ),
        (
            {"cache": "on", "strategy": "full"},
            "cache 'on' needs a frozen first part of the backbone",
        ),
        ({"cache_views": 0}, 'cache_views must be "auto" or a whole number >= 1, got 0'),
    ],
)
def test_a_bad_value_is_refused_naming_the_key_the_rule_and_the_value(
    settings, expected
):
    with pytest.raises(ConfigError) as caught:
        config_from_mapping(settings, source="train.yaml")
    message = str(caught.value)
    assert message.startswith("train.yaml: ")
    assert expected in message


def test_a_close_misspelling_of_a_name_is_suggested():
    with pytest.raises(ConfigError, match=r"got 'ful' \(did you mean 'full'\?\)"):
        config_from_mapping({"strategy": "ful"}, source="train.yaml")


def test_yaml_exponents_without_a_dot_are_read_as_numbers(tmp_path):
    path = write_yaml(tmp_path, "lr: 1e-3\nweight_decay: 5e-2\nwarmup_epochs: 2\n")
    config = load_config(path)
    assert config.lr == 0.001 and isinstance(config.lr, float)
    assert config.weight_decay == 0.05
    assert config.warmup_epochs == 2.0 and isinstance(config.warmup_epochs, float)


def test_yaml_on_and_off_mean_the_cache_settings(tmp_path):
    assert load_config(write_yaml(tmp_path, "cache: off\n")).cache == "off"
    assert load_config(write_yaml(tmp_path, "cache: on\n")).cache == "on"


def test_an_empty_file_gives_the_defaults(tmp_path):
    assert load_config(write_yaml(tmp_path, "")) == TrainConfig()
    assert load_config(write_yaml(tmp_path, "# nothing set\n")) == TrainConfig()
    assert load_config(None) == TrainConfig()


@pytest.mark.parametrize(
    "text,reason",
    [
        ("- lr: 0.1\n- epochs: 3\n", "the top level must be a mapping of settings"),
        ("just words\n", "the top level must be a mapping of settings"),
        ("lr: [0.1\n", "not valid YAML"),
    ],
)
def test_a_file_that_is_not_a_mapping_of_settings_is_refused_naming_it(
    tmp_path, text, reason
):
    path = write_yaml(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert reason in str(caught.value)


def test_a_missing_file_is_refused_naming_it(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: no such configuration file"):
        load_config(tmp_path / "nope.yaml")


def test_command_line_overrides_beat_the_file_and_none_means_not_given(tmp_path):
    path = write_yaml(tmp_path, "lr: 0.01\nepochs: 20\nbackbone: resnet18\n")
    config = load_config(path, {"lr": 0.1, "epochs": None, "data": tmp_path / "scans"})
    assert config.lr == 0.1  # the flag wins
    assert config.epochs == 20  # None: flag not given, the file's value stays
    assert config.backbone == "resnet18"
    assert config.data == str(tmp_path / "scans")  # a Path becomes text
    assert load_config(None, {"lr": None}) == TrainConfig()


def test_messages_name_the_file_or_the_command_line_as_the_source(tmp_path):
    path = write_yaml(tmp_path, "adapt: adabn\n")
    with pytest.raises(ConfigError, match=f"^{path}: adapt 'adabn' needs target_data"):
        load_config(path)
    # the file's adapt completed by a command-line target_data is fine
    assert load_config(path, {"target_data": "site_b"}).adapt == "adabn"
    with pytest.raises(ConfigError, match="^command line: lr must be"):
        load_config(path, {"lr": 5, "target_data": "site_b"})
    with pytest.raises(ConfigError, match="^command line: unknown key 'learning_rate'"):
        load_config(path, {"learning_rate": 0.1})
    strategy_file = write_yaml(tmp_path, "strategy: linear\n", "linear.yaml")
    with pytest.raises(
        ConfigError, match=f"^{strategy_file} and command line: adapt 'dann'"
    ):
        load_config(strategy_file, {"adapt": "dann", "target_data": "site_b"})


def test_data_is_required_only_when_asked(tmp_path):
    config = load_config(None)
    assert config.data is None
    with pytest.raises(ConfigError, match="no dataset given.*--data PATH"):
        load_config(None, need_data=True)
    assert load_config(None, {"data": "x"}, need_data=True).data == "x"


def test_check_paths_names_the_missing_path(tmp_path):
    (tmp_path / "scans").mkdir()
    missing = str(tmp_path / "site_b")
    with pytest.raises(
        ConfigError, match=f"target_data path '{missing}' does not exist"
    ):
        load_config(
            None,
            {"data": str(tmp_path / "scans"), "target_data": missing, "adapt": "adabn"},
            check_paths=True,
        )
    weights = str(tmp_path / "backbone.safetensors")
    with pytest.raises(ConfigError, match=f"weights file '{weights}' does not exist"):
        TrainConfig(weights=weights).validate(check_paths=True)
    Path(weights).write_bytes(b"")
    assert TrainConfig(weights=weights).validate(check_paths=True).weights == weights


def test_validate_normalises_and_checks_a_directly_built_config():
    assert TrainConfig(lr=1, epochs=3).validate() == TrainConfig(lr=1.0, epochs=3)
    with pytest.raises(ConfigError, match="configuration: dropout must be"):
        TrainConfig(dropout=1.5).validate()


def test_a_written_config_loads_back_identical_with_the_comment_line(tmp_path):
    config = load_config(
        None,
        {
            "data": str(tmp_path / "données patients"),
            "target_data": "site b",
            "out": str(tmp_path / "run"),
            "adapt": "dann",
            "augment": {"preset": "light", "rotation": 3, "gamma": (0.8, 1.2)},
            "window": "-600,1500",
            "volume_strategy": "2.5d",
            "lr": "3e-4",
            "epochs": 12,
            "cache": "off",
            "device": "cuda:1",
            "workers": 0,
            "amp": False,
        },
    )
    path = write_config(config, tmp_path / "run" / "config.yaml")
    text = path.read_text(encoding="utf-8")
    assert text.splitlines()[0] == (
        "# medxfer training configuration (fully resolved); "
        "rerun with: medxfer train --config config.yaml"
    )
    assert [
        line.split(":")[0] for line in text.splitlines()[1:] if line[:1].isalpha()
    ] == list(CONFIG_KEYS)
    assert load_config(path) == config
    assert (
        load_config(write_config(TrainConfig(), tmp_path / "defaults.yaml"))
        == TrainConfig()
    )


def test_diff_configs_reports_the_changed_keys():
    a = TrainConfig(lr=0.01, augment={"preset": "light", "rotation": 3})
    b = dataclasses.replace(a, lr=0.02, epochs=10)
    assert diff_configs(a, a) == {}
    assert diff_configs(a, b) == {"epochs": ("auto", 10), "lr": (0.01, 0.02)}
    c = dataclasses.replace(a, augment={"preset": "light", "rotation": 4})
    assert list(diff_configs(a, c)) == ["augment"]


def reference_rows() -> dict[str, list[str]]:
    """The reference table's rows: key -> [allowed values, default, meaning], cells unescaped."""
    rows = {}
    for line in reference_markdown().splitlines():
        if line.startswith("| `"):
            cells = [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
            rows[cells[0].strip("`")] = cells[1:]
    return rows


def test_the_reference_lists_every_key_in_order_with_its_default_and_a_description():
    rows = reference_rows()
    assert list(rows) == list(CONFIG_KEYS)
    defaults = TrainConfig().to_dict()
    for key, (allowed, default, meaning) in rows.items():
        assert yaml.safe_load(default.strip("`")) == defaults[key], key
        assert allowed and meaning, key


def test_the_reference_states_the_rules_the_checks_enforce():
    from medxfer.pipeline.models.finetune import STRATEGIES

    rows = reference_rows()
    for key, bad in (("lr", 0), ("image_size", 8), ("bootstrap", 100), ("age_bands", [40, 18])):
        with pytest.raises(ConfigError) as caught:
            config_from_mapping({key: bad}, source="train.yaml")
        assert f"{key} must be {rows[key][0]}, got" in str(caught.value)
    assert rows["strategy"][0].removeprefix("one of ").split(", ") == list(STRATEGIES)
