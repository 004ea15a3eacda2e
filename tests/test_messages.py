"""Messages a scientist understands: no literature tags, no unit "1" after a fraction, a reused
campaign name that says which setting differs, and a resume that notices another policy."""

from __future__ import annotations

import re

import optuna
import pytest

from hardware.errors import InvalidCondition, SdflInputError
from hardware.platform import PLATFORM_DIR, load_platform, shipped_platforms
from hardware.units import unit_label, with_unit
from tasks import ledger

TAG = re.compile(r"P\d+:L\d+|\bpaper \d{3}\b|FACTS", re.IGNORECASE)
"""A literature reference (`[P1:L48]`, "paper 003"): fine in a comment, not in what a user reads."""


def strings(value):
    """Every string inside a nested structure of dicts and lists."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from strings(item)


# --- literature tags ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", shipped_platforms())
def test_a_shipped_platform_shows_no_literature_tags(name):
    """Descriptions, regime-rule reasons and every other text of a platform file reach the user
    (`sdfl platform`, forms, warnings); its references live in the file's # comments."""
    tagged = [text for text in strings(load_platform(name).model_dump()) if TAG.search(text)]
    assert tagged == []


# --- fractions print without the unit "1" ------------------------------------------------------


def test_a_fraction_has_no_unit_label():
    assert unit_label("1") == ""
    assert unit_label("degC") == "degC"
    assert with_unit("[0.15, 0.55]", "1") == "[0.15, 0.55]"
    assert with_unit("[25, 42]", "s") == "[25, 42] s"


def test_the_space_shows_units_but_no_1_after_fractions(platform):
    space = platform.describe_space()
    assert "temperature_c in [120, 150] degC" in space
    assert "cui_fraction in [0.15, 0.55]," in space
    assert not re.search(r"\] 1\b", space)


def test_a_fraction_out_of_bounds_reads_without_a_unit(platform):
    condition = {p.name: 0.5 * (p.low + p.high) for p in platform.parameters} | {"cui_fraction": 0.9}
    with pytest.raises(InvalidCondition) as refused:
        platform.validate_condition(condition)
    assert "cui_fraction = 0.9 is outside [0.15, 0.55]. The space is:" in str(refused.value)
    assert not re.search(r"\] 1\b", str(refused.value))


def test_a_fraction_given_a_unit_says_to_leave_it_out(tmp_path):
    text = (PLATFORM_DIR / "virtual-cs3cu2i5.toml").read_text()
    path = tmp_path / "percent.toml"
    path.write_text(text.replace('name = "cui_fraction"', 'name = "cui_fraction"\nunit = "%"', 1))
    with pytest.raises(SdflInputError, match="without a unit; leave out unit = '%'"):
        load_platform(path)


# --- a reused campaign name -------------------------------------------------------------------


@pytest.fixture
def storage(tmp_path):
    return f"sqlite:///{tmp_path / 'optuna.db'}"


def test_a_reused_name_with_another_objective_names_the_objective_only(platform, storage):
    ledger.open_study("c", platform, "PL_I", storage, None)
    with pytest.raises(SdflInputError) as refused:
        ledger.open_study("c", platform, "PL_I / FWHM_nm", storage, None)
    message = str(refused.value)
    assert "another objective: it ran with 'PL_I', this run asks for 'PL_I / FWHM_nm'" in message
    assert "choose a new campaign name" in message.lower() and "resume it with objective 'PL_I'" in message
    assert "parameter space" not in message and "platform" not in message


def test_a_reused_name_as_a_target_campaign_names_the_kind(platform, storage):
    ledger.open_study("c", platform, "PL_I", storage, None)
    with pytest.raises(SdflInputError) as refused:
        ledger.open_study("c", platform, "PL_I", storage, None, ["minimize", "maximize", "minimize"])
    message = str(refused.value)
    assert "another kind of campaign: it ran as a single objective to maximize" in message
    assert "objective (" not in message and "parameter space" not in message


def test_a_reused_name_on_another_space_names_the_parameters_and_both_ranges(platform, storage, tmp_path):
    ledger.open_study("c", platform, "PL_I", storage, None)
    text = (PLATFORM_DIR / "virtual-cs3cu2i5.toml").read_text()
    wider = tmp_path / "wider.toml"
    wider.write_text(text.replace("low = 120", "low = 110", 1))
    with pytest.raises(SdflInputError) as refused:
        ledger.open_study("c", load_platform(wider), "PLQY", storage, None)
    message = str(refused.value)
    assert "objective (it ran with 'PL_I', this run asks for 'PLQY')" in message
    assert "temperature_c was in [120, 150] degC, now in [110, 150] degC" in message
    assert "cui_fraction" not in message  # only what differs


def test_a_reused_name_on_another_platform_names_it(platform, storage, tmp_path):
    ledger.open_study("c", platform, "PL_I", storage, None)
    text = (PLATFORM_DIR / "virtual-cs3cu2i5.toml").read_text()
    renamed = tmp_path / "renamed.toml"
    renamed.write_text(text.replace('name = "virtual-cs3cu2i5"', 'name = "my-rig"', 1)
                       .replace('name = "oa_cs_fraction"', 'name = "oleic_cs"'))
    with pytest.raises(SdflInputError) as refused:
        ledger.open_study("c", load_platform(renamed), "PL_I", storage, None)
    message = str(refused.value)
    assert "it had oa_cs_fraction, this platform has oleic_cs instead" in message
    assert "it ran on 'virtual-cs3cu2i5', this run uses 'my-rig'" in message
    assert "objective" not in message


def test_the_same_settings_resume(platform, storage):
    study, created = ledger.open_study("c", platform, "PL_I", storage, None)
    again, created_again = ledger.open_study("c", platform, "PL_I", storage, None)
    assert created and not created_again and again.study_name == study.study_name


# --- resuming with another policy ---------------------------------------------------------------


def test_a_resume_with_another_policy_returns_the_one_it_ran_with(platform, storage):
    study, _ = ledger.open_study("c", platform, "PL_I", storage, None)
    assert ledger.record_policy(study, "ucb") is None  # first run
    resumed = optuna.load_study(study_name="c", storage=storage)
    assert ledger.record_policy(resumed, "ucb") is None  # the same policy
    assert ledger.record_policy(resumed, "ei") == "ucb"
    assert optuna.load_study(study_name="c", storage=storage).user_attrs["policy"] == "ei"
    assert ledger.record_policy(optuna.load_study(study_name="c", storage=storage), "ei") is None


def test_a_policy_needs_a_name(platform, storage):
    study, _ = ledger.open_study("c", platform, "PL_I", storage, None)
    with pytest.raises(SdflInputError, match="policy"):
        ledger.record_policy(study, "")
