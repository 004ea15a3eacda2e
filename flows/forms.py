"""The run forms of the deployments in the Prefect UI, made from the flows' parameter schemas.

`prefect deploy` gives each deployment its flow's parameter schema (from the settings models,
`flows/settings.py`); `make deploy` then writes the form made here in its place. What Prefect
3.8.8's UI does with a schema, read in its code and checked in a browser:

- A setting that may be left empty (`int | None`) comes as `anyOf` [integer, null]: the UI draws
  type tabs and 'Property is type "None"'. In the form it is the plain type with no default.
- A default of null is sent as null, which a plain type refuses; with no default a field left
  empty is left out of the run's parameters. The server checks a run against the form, and lets
  null through for a typed setting that has no default, so API clients may still send null.
- A boolean is a toggle, which always sends true or false: a boolean that may be left empty is a
  choice of None (empty), true and false.
- A setting marked `PerParameter` (the run-experiment condition) is one number field per parameter
  of the deployment's platform, with its unit, range and description from the platform file, and
  the centre of its range as default.
"""

from __future__ import annotations

from typing import Any

from flows.settings import FlowSettings, PerParameter, bounds_text, centred
from hardware.units import unit_label

NULL = {"type": "null"}
EMPTY_HINT = ". To leave it empty in this form: its ⋮ menu, Use JSON input, null"


def run_form(model: type[FlowSettings], schema: dict[str, Any], platform=None,
             preset: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run form of a deployment of `model`'s flow: `schema` (the flow's parameter schema) with
    plain fields, and the settings marked `PerParameter` laid out for `platform` (if given).

    `preset` are the deployment's own values. A field left empty is left out of the run's
    parameters, so the deployment's value applies: a setting that may be empty but has one says
    how to empty it.
    """
    properties = {}
    for name, field in schema.get("properties", {}).items():
        properties[name] = plain_field(field)
        if _may_be_empty(field) and (preset or {}).get(name) is not None:
            properties[name]["description"] += EMPTY_HINT
    if platform is not None:
        for name, setting in model.model_fields.items():
            if name in properties and any(isinstance(mark, PerParameter) for mark in setting.metadata):
                properties[name] = {**properties[name], **space_field(platform)}
    return {**schema, "properties": properties}


def plain_field(field: dict[str, Any]) -> dict[str, Any]:
    """A field that may be left empty (`anyOf` [X, null]) as X alone; any other field as it is."""
    if not _may_be_empty(field):
        return field
    (kept,) = [option for option in field["anyOf"] if option != NULL]
    plain = {key: value for key, value in field.items() if key != "anyOf"} | kept
    if "default" in plain and plain["default"] is None:
        del plain["default"]
    if plain.get("type") == "boolean":
        del plain["type"]
        plain["enum"] = [None, True, False]
    return plain


def _may_be_empty(field: dict[str, Any]) -> bool:
    """True for the schema of `X | None`: `anyOf` [X, null]."""
    options = field.get("anyOf", [])
    return len(options) == 2 and NULL in options


def space_field(platform) -> dict[str, Any]:
    """One number field per parameter of the platform's space: its description, unit and range
    from the platform file; default: the centre of its range, as the command line takes it (rounded
    to 12 decimals, so a form shows 0.085, not 0.08499999999999999)."""
    centre = centred(platform, {})
    fields = {}
    for position, parameter in enumerate(platform.parameters):
        unit = unit_label(parameter.unit)
        bounds = {"minimum": parameter.low, "maximum": parameter.high}
        fields[parameter.name] = {
            "title": parameter.name, "type": "number", **bounds, "default": round(centre[parameter.name], 12),
            "position": position, **({"unit": unit} if unit else {}),
            "description": (parameter.description or parameter.kind) + (f" ({unit})" if unit else "")
            + f"; {bounds_text(bounds)}",
        }
    return {
        "type": "object", "properties": fields, "additionalProperties": False,
        "description": f"one value per parameter of the {platform.platform.name} space; each starts at the centre "
                       "of its range. To give flowrates_ul_min instead, leave the condition out "
                       "(its ⋮ menu, Omit value)",
    }
