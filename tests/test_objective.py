"""Objectives: a feature name or a safe formula of features, as typed in the Prefect UI."""

from __future__ import annotations

import math

import pytest

from hardware.errors import SdflInputError
from hardware.platform import load_platform
from tasks.features import FeatureSettings, feature_columns
from tasks.objective import parse_objective

COLUMNS = feature_columns(FeatureSettings.from_config(load_platform().features))
ROW = {"PL_I": 2000.0, "PL_A": 1.5e5, "FWHM_nm": 40.0, "Abs_300": 0.25, "PL_peak_nm": 455.0, "SNR": 80.0}


# --- what a scientist may type -----------------------------------------------------------------


def test_a_feature_name_is_the_simplest_objective():
    objective = parse_objective("PL_I", COLUMNS)
    assert objective.features == ("PL_I",)
    assert objective(ROW) == 2000.0


@pytest.mark.parametrize(("expression", "expected"), [
    ("PL_I / FWHM_nm", 2000.0 / 40.0),
    ("PL_A * Abs_300", 1.5e5 * 0.25),
    ("log(PL_I) - 0.5 * FWHM_nm", math.log(2000.0) - 20.0),
    ("-FWHM_nm", -40.0),
    ("+PL_I", 2000.0),
    ("PL_I ** 0.5 + sqrt(SNR)", math.sqrt(2000.0) + math.sqrt(80.0)),
    ("log10(PL_A) * exp(-abs(PL_peak_nm - 460) / 10)", math.log10(1.5e5) * math.exp(-0.5)),
    ("  PL_I / (1 + FWHM_nm)  ", 2000.0 / 41.0),
])
def test_formulas_of_features_evaluate_on_a_row(expression, expected):
    assert parse_objective(expression, COLUMNS)(ROW) == pytest.approx(expected)


def test_the_objective_lists_its_features_once_in_order():
    objective = parse_objective("PL_I / FWHM_nm + log(PL_I)", COLUMNS)
    assert objective.features == ("PL_I", "FWHM_nm")
    assert objective.expression == "PL_I / FWHM_nm + log(PL_I)"


def test_a_flag_column_is_a_feature_too():
    assert parse_objective("flag_noisy", COLUMNS)({"flag_noisy": True}) == 1.0


# --- what is refused, with a message that says why ---------------------------------------------


def test_an_unknown_feature_is_refused_with_the_known_ones_listed():
    with pytest.raises(SdflInputError, match=r"unknown feature\(s\) PLQY") as error:
        parse_objective("PLQY / FWHM_nm", COLUMNS)
    message = str(error.value)
    assert "PL_I" in message and "FWHM_nm" in message
    assert "flag_" not in message  # only the numeric features are suggested


@pytest.mark.parametrize("expression", ["PL_I +", "PL_I / / FWHM_nm", "log(PL_I", "PL_I; FWHM_nm"])
def test_a_formula_that_does_not_parse_is_refused(expression):
    with pytest.raises(SdflInputError, match="is not a formula"):
        parse_objective(expression, COLUMNS)


@pytest.mark.parametrize(("expression", "what"), [
    ("__import__('os')", "only"),                # a call to anything but the five functions
    ("__import__('os').system('ls')", "only"),
    ("PL_I.real", "Attribute"),
    ("os.environ", "Attribute"),
    ("max(PL_I, FWHM_nm)", "only"),
    ("eval('PL_I')", "only"),
    ("log(PL_I, 2)", "of one argument"),
    ("[PL_I][0]", "Subscript"),
    ("{'a': PL_I}", "Dict"),
    ("(lambda: PL_I)()", "only"),
    ("lambda: PL_I", "Lambda"),
    ("PL_I > FWHM_nm", "Compare"),
    ("PL_I if SNR else 0", "IfExp"),
    ("PL_I % 7", "Mod"),
    ("PL_I // 2", "FloorDiv"),
    ("not PL_I", "Not"),
    ("PL_I and SNR", "BoolOp"),
    ("[x for x in PL_I]", "ListComp"),
])
def test_anything_but_arithmetic_on_features_is_refused(expression, what):
    with pytest.raises(SdflInputError, match=what):
        parse_objective(expression, COLUMNS)


@pytest.mark.parametrize("expression", ["", "   ", None])
def test_an_empty_objective_is_refused(expression):
    with pytest.raises(SdflInputError, match="feature name or a formula"):
        parse_objective(expression, COLUMNS)


@pytest.mark.parametrize("expression", ["2+2", "log(10)", "-1"])
def test_a_formula_without_a_feature_is_refused(expression):
    with pytest.raises(SdflInputError, match="uses no feature"):
        parse_objective(expression, COLUMNS)


@pytest.mark.parametrize("expression", [
    pytest.param("log * PL_I", id="function-name-as-a-value"),
    pytest.param("PL_I * 'x'", id="string-constant"),
    pytest.param("1j * PL_I", id="complex-constant"),
])
def test_a_formula_that_can_never_be_a_number_is_refused(expression):
    with pytest.raises(SdflInputError):
        parse_objective(expression, COLUMNS)


# --- evaluation never raises: a bad row is NaN -------------------------------------------------


@pytest.mark.parametrize(("expression", "row"), [
    ("PL_I / FWHM_nm", {"PL_I": 2000.0}),                     # a feature missing from the row
    ("PL_I / FWHM_nm", {"PL_I": 2000.0, "FWHM_nm": None}),    # a feature that was not measured
    ("PL_I / FWHM_nm", {"PL_I": float("nan"), "FWHM_nm": 40.0}),
    ("PL_I / FWHM_nm", {"PL_I": 2000.0, "FWHM_nm": 0.0}),     # division by zero
    ("log(PL_I)", {"PL_I": -5.0}),                            # log of a negative number
    ("log(PL_I)", {"PL_I": 0.0}),
    ("sqrt(PL_I)", {"PL_I": -1.0}),
    ("PL_I ** 0.5", {"PL_I": -4.0}),                          # would be a complex number
    ("exp(PL_I)", {"PL_I": 1e4}),                             # overflow
    ("PL_I ** 1000", {"PL_I": 1e10}),
    ("PL_I", {"PL_I": "bright"}),
])
def test_evaluation_gives_nan_instead_of_an_exception(expression, row):
    assert math.isnan(parse_objective(expression, COLUMNS)(row))
