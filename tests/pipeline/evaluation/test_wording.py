"""Figures as text: the report's typography, the plain text of metrics.json's sentences, "n/a" for
anything that is no number."""

from __future__ import annotations

import numpy as np
import pytest

from medxfer.pipeline.evaluation.wording import (
    SPLIT_NAMES,
    SPLIT_WORDS,
    interval,
    not_available,
    number,
    p_value,
    percent,
    points,
    signed,
    with_interval,
)


@pytest.mark.parametrize("value", [None, float("nan"), float("inf"), np.float32("nan")])
def test_anything_that_is_no_number_reads_n_a(value):
    assert number(value) == "n/a" and number(value, typeset=False) == "n/a"
    assert signed(value) == "n/a" and percent(value) == "n/a" and p_value(value) == "n/a"
    assert interval([0.1, value]) is None and with_interval(value, [0.1, 0.2]) == "n/a"


def test_the_report_typesets_minus_signs_and_thousands_while_plain_text_keeps_python_s_format():
    assert number(-0.25) == "\u22120.250" and number(-0.25, typeset=False) == "-0.250"
    assert number(12345) == "12,345" and number(12345, typeset=False) == "12345"
    assert number(np.int64(7)) == "7" and number(1.23456, 2) == "1.23"


def test_an_interval_with_a_negative_bound_reads_to_instead_of_a_dash():
    assert interval([0.801, 0.912]) == "0.801\u20130.912"
    assert interval([-0.25, 0.05]) == "\u22120.250 to 0.050"
    assert interval([0.801, 0.912], joiner="-", typeset=False) == "0.801-0.912"


def test_a_value_with_its_interval():
    assert with_interval(0.861, [0.801, 0.912]) == "0.861 (0.801\u20130.912)"
    assert with_interval(0.861, None) == "0.861"


def test_percentages_are_spaced_in_the_report_and_python_style_in_sentences():
    assert percent(0.404) == "40 %" and percent(0.404, spaced=False) == "40%"
    assert percent(0.05, None) == "5 %" and percent(0.025, None) == "2.5 %" and percent(0.1234, 1) == "12.3 %"
    assert percent(0.4, spaced=False) == f"{0.4:.0%}"  # what flags and transfer wrote before


def test_points_and_p_values():
    assert points(0.17) == "+17 points" and points(-0.01) == "\u22121 point"
    assert p_value(0.0004) == "< 0.001" and p_value(0.0291) == "0.029"
    assert not_available("one class only") == "n/a (one class only)"


def test_a_split_is_the_training_set_in_a_sentence_and_the_train_set_in_a_label():
    assert SPLIT_NAMES["val"] == SPLIT_WORDS["val"] == "validation"
    assert (SPLIT_NAMES["train"], SPLIT_WORDS["train"]) == ("train", "training")
