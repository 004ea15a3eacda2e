"""Platform configs: load the shipped rig, and see what a broken config file tells you.

Every broken config here is the shipped file with one line changed, so each test reads as
"if you write this in your TOML, this is the message you get".
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import pytest

from hardware.errors import InvalidCondition, PlatformConfigError
from hardware.platform import DEFAULT_PLATFORM, PLATFORM_DIR, load_platform, shipped_platforms
from hardware.virtual.chemistry import load_chemistry
from hardware.virtual.lab import VirtualLab

SHIPPED = PLATFORM_DIR / f"{DEFAULT_PLATFORM}.toml"
SHIPPED_TEXT = SHIPPED.read_text()

GOOD = {
    "temperature_c": 140.0, "reaction_time_s": 30.0, "cui_fraction": 0.45, "oa_cu_fraction": 0.08,
    "oam_fraction": 0.04, "cs_fraction": 0.35, "oa_cs_fraction": 0.12,
}


def edited_config(tmp_path: Path, old: str, new: str) -> Path:
    """The shipped config with the first `old` replaced by `new`, written to tmp_path."""
    assert old in SHIPPED_TEXT, f"the shipped config no longer contains {old!r}: update this test"
    path = tmp_path / "my-rig.toml"
    path.write_text(SHIPPED_TEXT.replace(old, new, 1))
    return path


def load_error(path: Path) -> str:
    """The message of the PlatformConfigError raised when loading `path`."""
    with pytest.raises(PlatformConfigError) as info:
        load_platform(path)
    message = str(info.value)
    assert "Traceback" not in message
    return message


# --- the shipped platform -----------------------------------------------------------------


def test_the_shipped_platform_loads_with_every_quantity_in_canonical_units():
    """Config files carry units ("50 mL", "30 min"); the loaded platform holds plain floats in uL, s, degC."""
    platform = load_platform()

    assert platform.platform.name == DEFAULT_PLATFORM
    assert platform.pump("cui").syringe_volume == pytest.approx(50_000.0)  # 50 mL
    assert platform.pump("pfo").syringe_volume == pytest.approx(100_000.0)  # 100 mL
    assert platform.pump("cui").max_rate == pytest.approx(40_000.0)  # 40 mL/min in uL/min
    assert platform.pump("cui").syringe_inner_diameter == pytest.approx(28.6)
    assert platform.reactor.name == "reactor"
    assert platform.reactor.volume == pytest.approx(840.0)
    assert platform.rules.min_total_precursor_flow == pytest.approx(600.0)
    assert platform.rules.max_temperature == pytest.approx(180.0)
    assert platform.heater.stable_band == pytest.approx(0.5)  # "0.5 K" as a temperature difference
    assert platform.heater.max_wait == pytest.approx(1800.0)  # "30 min"
    assert platform.spectrometers["pl"].min_integration == pytest.approx(0.006)  # "6 ms"
    assert platform.stocks["cs_oleate"].molar_mM == {"Cs": pytest.approx(30.2)}
    assert platform.stocks["cs_oleate"].volume_fraction == {"OA": pytest.approx(0.077)}  # "7.7 %"


def test_the_loaded_platform_records_where_it_came_from():
    """`source` and `sha256` let a dataset say exactly which config file produced it."""
    platform = load_platform(DEFAULT_PLATFORM)

    assert platform.source == str(SHIPPED)
    assert platform.sha256 == hashlib.sha256(SHIPPED.read_bytes()).hexdigest()
    assert DEFAULT_PLATFORM in shipped_platforms()
    assert load_platform(SHIPPED) == platform  # by path or by shipped name: the same rig


# --- broken config files: the message names the file, the field and what is wrong -----------


def test_a_missing_required_field_is_named_with_its_path(tmp_path):
    path = edited_config(tmp_path, 'volume = "840 uL"\n', "")
    message = load_error(path)
    assert str(path) in message
    assert "path[0].volume" in message
    assert "Field required" in message


def test_a_missing_rule_is_named_with_its_path(tmp_path):
    path = edited_config(tmp_path, 'min_total_precursor_flow = "600 uL/min"', "")
    message = load_error(path)
    assert str(path) in message
    assert "rules.min_total_precursor_flow: Field required" in message


def test_a_negative_volume_is_rejected(tmp_path):
    path = edited_config(tmp_path, 'volume = "840 uL"', 'volume = "-840 uL"')
    message = load_error(path)
    assert str(path) in message
    assert "path[0].volume" in message
    assert "greater than 0" in message
    assert "-840" in message


def test_an_unknown_unit_is_rejected(tmp_path):
    path = edited_config(tmp_path, 'volume = "840 uL"', 'volume = "840 uLL"')
    message = load_error(path)
    assert str(path) in message
    assert "path[0].volume" in message
    assert "unknown unit 'uLL'" in message


@pytest.mark.parametrize("written", ["840", '"840"'], ids=["toml-number", "string-without-unit"])
def test_a_bare_number_where_a_unit_is_required_is_rejected(tmp_path, written):
    """Writing 840 for a volume is ambiguous (uL? mL?), so the loader asks for the unit."""
    path = edited_config(tmp_path, 'volume = "840 uL"', f"volume = {written}")
    message = load_error(path)
    assert str(path) in message
    assert "path[0].volume" in message
    assert "has no unit" in message
    assert "write a volume such as '840 uL'" in message


def test_a_quantity_of_the_wrong_dimension_is_rejected(tmp_path):
    path = edited_config(tmp_path, 'volume = "840 uL"', 'volume = "840 s"')
    message = load_error(path)
    assert str(path) in message
    assert "path[0].volume" in message
    assert "'840 s' is not a volume" in message
    assert "'840 uL'" in message


def test_a_syringe_volume_in_seconds_names_the_pump_by_index(tmp_path):
    path = edited_config(tmp_path, 'syringe_volume = "50 mL"', 'syringe_volume = "50 s"')
    message = load_error(path)
    assert str(path) in message
    assert "pumps[0].syringe_volume" in message
    assert "is not a volume" in message


def test_a_typo_in_a_key_is_rejected_not_ignored(tmp_path):
    """Extra keys are forbidden: a misspelt rule would otherwise silently fall back to its default."""
    path = edited_config(tmp_path, "carrier_ratio = 1.0", "carrier_ratoi = 1.0")
    message = load_error(path)
    assert str(path) in message
    assert "rules.carrier_ratoi" in message
    assert "Extra inputs are not permitted" in message


def test_invalid_toml_syntax_names_the_file_and_line(tmp_path):
    path = edited_config(tmp_path, "[rules]", "[rules")
    message = load_error(path)
    assert str(path) in message
    assert "not valid TOML" in message
    assert "line" in message


def test_a_file_that_does_not_exist_lists_the_shipped_platforms(tmp_path):
    missing = tmp_path / "no-such-rig.toml"
    message = load_error(missing)
    assert str(missing) in message
    assert "not found" in message
    assert DEFAULT_PLATFORM in message

    message = load_error("no-such-rig")  # a shipped name that is not shipped
    assert "no-such-rig" in message
    assert DEFAULT_PLATFORM in message


def test_a_pump_using_an_unknown_stock_lists_the_known_stocks(tmp_path):
    path = edited_config(tmp_path, 'stock = "cui"', 'stock = "cul"')
    message = load_error(path)
    assert str(path) in message
    assert "pump 'cui' uses stock 'cul'" in message
    assert "known stocks" in message
    assert "'cs_oleate'" in message


def test_a_parameter_naming_an_unknown_pump_is_rejected(tmp_path):
    path = edited_config(tmp_path, 'pump = "oa_cs"', 'pump = "oa_cs2"')
    message = load_error(path)
    assert str(path) in message
    assert "parameter 'oa_cs_fraction'" in message
    assert "unknown pump 'oa_cs2'" in message


def test_a_parameter_cannot_set_a_balance_pump(tmp_path):
    """The solvent (balance) pump of a stream makes up the rest of the stream: it is computed, not searched."""
    path = edited_config(tmp_path, 'pump = "oa_cs"', 'pump = "ode_cs"')
    message = load_error(path)
    assert str(path) in message
    assert "parameter 'oa_cs_fraction' sets the balance pump 'ode_cs'" in message
    assert "computed" in message


def test_two_parameters_cannot_set_the_same_pump(tmp_path):
    """If cs_fraction and oa_cs_fraction both drive cs_oleate, one of them would be silently ignored."""
    path = edited_config(tmp_path, 'pump = "oa_cs"', 'pump = "cs_oleate"')
    message = load_error(path)
    assert "parameters 'cs_fraction' and 'oa_cs_fraction' both set pump 'cs_oleate'" in message


def test_bounds_must_have_low_below_high(tmp_path):
    path = edited_config(tmp_path, "low = 120\nhigh = 150", "low = 150\nhigh = 120")
    message = load_error(path)
    assert str(path) in message
    assert "parameters[0]" in message
    assert "parameter 'temperature_c': need finite low < high, got 150.0..120.0" in message


def test_a_fraction_bound_above_one_is_rejected(tmp_path):
    path = edited_config(tmp_path, "high = 0.60", "high = 1.60")
    message = load_error(path)
    assert str(path) in message
    assert "parameters[5]" in message
    assert "fraction parameter 'cs_fraction' must stay within 0..1" in message


@pytest.mark.parametrize(
    "unit, expected",
    [
        ("K", "parameter 'temperature_c' of kind 'temperature' must use unit 'degC', not 'K'"),
        ("s", "unit 's' is not a temperature: use 'degC'"),
        ("degreez", "unknown unit 'degreez': use 'degC'"),
    ],
)
def test_a_parameter_unit_must_match_its_kind(tmp_path, unit, expected):
    """Bounds are plain numbers, so the unit must be the canonical one of the parameter's kind."""
    path = edited_config(tmp_path, 'unit = "degC"', f'unit = "{unit}"')
    message = load_error(path)
    assert str(path) in message
    assert "parameters[0]" in message
    assert expected in message


def test_a_chemistry_model_without_a_class_name_is_rejected_on_load(tmp_path):
    path = edited_config(tmp_path, ":Cs3Cu2I5Chemistry", "")
    message = load_error(path)
    assert str(path) in message
    assert "chemistry.model" in message
    assert "write 'package.module:ClassName'" in message


# --- the chemistry plug-in is imported when the virtual lab is built ------------------------


@pytest.mark.parametrize(
    "model, cause",
    [
        ("hardware.virtual.cs3cu2i5:NoSuchModel", "has no attribute 'NoSuchModel'"),
        ("hardware.virtual.no_such_module:Cs3Cu2I5Chemistry", "No module named 'hardware.virtual.no_such_module'"),
    ],
    ids=["unknown-class", "unknown-module"],
)
def test_an_unimportable_chemistry_model_fails_when_the_lab_is_built(tmp_path, model, cause):
    """The config only checks the form of the import path; the import happens in VirtualLab(platform)."""
    path = edited_config(tmp_path, "hardware.virtual.cs3cu2i5:Cs3Cu2I5Chemistry", model)
    platform = load_platform(path)  # loads: the plug-in is not imported yet

    with pytest.raises(PlatformConfigError) as info:
        VirtualLab(platform)
    message = str(info.value)
    assert str(path) in message
    assert f"chemistry.model: cannot import {model!r}" in message
    assert cause in message
    assert "give 'package.module:ClassName' of a class importable in this environment" in message

    with pytest.raises(PlatformConfigError, match="cannot import"):
        load_chemistry(model)


def test_chemistry_options_the_model_does_not_take_are_rejected(tmp_path):
    path = edited_config(
        tmp_path, 'model = "hardware.virtual.cs3cu2i5:Cs3Cu2I5Chemistry"',
        'model = "hardware.virtual.cs3cu2i5:Cs3Cu2I5Chemistry"\noptions = { plqy_maximum = 0.5 }',
    )
    with pytest.raises(PlatformConfigError) as info:
        VirtualLab(load_platform(path))
    message = str(info.value)
    assert str(path) in message
    assert "chemistry.options" in message
    assert "plqy_maximum" in message


def test_a_chemistry_class_that_rejects_its_options_with_valueerror_gives_a_config_error():
    """A class whose constructor raises ValueError (here a pydantic model) must still give a PlatformConfigError."""
    with pytest.raises(PlatformConfigError, match="chemistry"):
        load_chemistry("hardware.platform:PlatformInfo", {}, source="my-rig.toml")


@pytest.mark.parametrize(
    "species, gives",
    [('{ OA = "7.7 %" }', "nothing"), ('{ Cs = "3 %", OA = "7.7 %" }', "fraction")],
    ids=["missing", "wrong-kind"],
)
def test_the_lab_refuses_stocks_without_the_species_its_chemistry_needs(tmp_path, species, gives):
    """Cs3Cu2I5Chemistry reads Cs in mM: a Cs-oleate stock without Cs (or with Cs as a %) cannot be simulated."""
    path = edited_config(tmp_path, 'species = { Cs = "30.2 mM", OA = "7.7 %" }', f"species = {species}")
    platform = load_platform(path)

    with pytest.raises(PlatformConfigError) as info:
        VirtualLab(platform)
    message = str(info.value)
    assert str(path) in message
    assert "chemistry model needs species 'Cs' as mM" in message
    assert f"the stocks give {gives}" in message


def test_the_shipped_platform_builds_a_virtual_lab():
    lab = VirtualLab(load_platform(), seed=1)
    assert set(lab.pumps) == {p.name for p in lab.platform.pumps}


# --- conditions in the parameter space -------------------------------------------------------


def test_a_valid_condition_comes_back_as_floats_in_space_order():
    platform = load_platform()
    written = {"oa_cs_fraction": 0.12, "cs_fraction": 0.35, "temperature_c": 140, "reaction_time_s": 30,
               "oam_fraction": 0.04, "oa_cu_fraction": 0.08, "cui_fraction": 0.45}

    checked = platform.validate_condition(written)

    assert list(checked) == platform.parameter_names
    assert checked == GOOD
    assert all(type(value) is float for value in checked.values())


def test_bounds_are_inclusive():
    platform = load_platform()
    corner = {p.name: p.low for p in platform.parameters}
    assert platform.validate_condition(corner) == corner


def test_a_bad_condition_names_every_problem_and_describes_the_space():
    platform = load_platform()
    condition = dict(GOOD, temperature_c=200.0, cs_fraction=math.nan, oam_fraction="lots", stirring_rpm=300)
    del condition["reaction_time_s"]

    with pytest.raises(InvalidCondition) as info:
        platform.validate_condition(condition)
    message = str(info.value)

    assert "virtual-cs3cu2i5" in message
    assert "unknown parameter(s) ['stirring_rpm']" in message
    assert "missing parameter(s) ['reaction_time_s']" in message
    assert "temperature_c = 200 is outside [120, 150] degC" in message
    assert "cs_fraction = nan is outside [0.15, 0.6]" in message
    assert "oam_fraction = 'lots' is not a number" in message
    assert "The space is: temperature_c in [120, 150] degC, reaction_time_s in [25, 42] s" in message


@pytest.mark.parametrize(
    "name, value, expected",
    [
        ("reaction_time_s", 42.5, "reaction_time_s = 42.5 is outside [25, 42] s"),
        ("cui_fraction", 0.1, "cui_fraction = 0.1 is outside [0.15, 0.55]"),
        ("temperature_c", math.inf, "temperature_c = inf is outside [120, 150] degC"),
        ("temperature_c", None, "temperature_c = None is not a number"),
    ],
)
def test_each_bad_value_is_named(name, value, expected):
    platform = load_platform()
    with pytest.raises(InvalidCondition, match="condition rejected") as info:
        platform.validate_condition(dict(GOOD, **{name: value}))
    assert expected in str(info.value)


def test_a_condition_must_be_a_mapping():
    with pytest.raises(InvalidCondition, match="mapping of parameter to value, got list"):
        load_platform().validate_condition(list(GOOD.values()))


def test_a_temperature_bound_above_the_carrier_limit_is_rejected(tmp_path):
    """PFO is the carrier up to 180 C: the search space may not reach beyond the rig's limit."""
    path = edited_config(tmp_path, "low = 120\nhigh = 150", "low = 120\nhigh = 250")
    message = load_error(path)
    assert "parameters[0]" in message and "above rules.max_temperature (180 C)" in message


# --- pint's definitions, kept between processes -----------------------------------------------

UNITS_SCRIPT = """
from hardware.units import to_canonical, unit_cache_folder
print(to_canonical("0.3 mL/h", "flowrate"), to_canonical("150 degC", "temperature"), unit_cache_folder())
"""


def test_units_read_the_same_from_a_fresh_a_kept_and_a_damaged_cache(tmp_path):
    """The parsed definitions are kept in the user's cache folder; a damaged cache (a file another
    process was still writing) is set aside, the units still read, and the next process keeps them again."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}

    def read_units() -> tuple[str, Path]:
        out = subprocess.run([sys.executable, "-c", UNITS_SCRIPT], env=env, capture_output=True, text=True,
                             check=True, cwd=Path(__file__).resolve().parents[1]).stdout.split()
        assert out[:2] == ["5.0", "150.0"], out
        return out[2]

    folder = Path(read_units())
    assert folder.is_relative_to(tmp_path) and list(folder.glob("*.pickle"))
    read_units()  # from the kept cache
    for kept in folder.glob("*.pickle"):
        kept.write_bytes(kept.read_bytes()[:100])  # half-written
    read_units()
    assert not folder.exists() or not any(len(p.read_bytes()) == 100 for p in folder.glob("*.pickle"))
    read_units()
    assert list(folder.glob("*.pickle"))
