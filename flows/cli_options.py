"""The `sdfl` command's options, made from the flows' settings models (`flows/settings.py`).

Each setting becomes `--name-with-dashes` (plus the other names its `Cli` mark gives), with the
model's description, default, choices and range as its help. Values are read as text and the
model checks them, so the command line and a Python caller get the same rules and messages.
"""

from __future__ import annotations

import argparse
from typing import Any, get_args, get_origin

from flows.settings import FlowSettings, choices_of, cli_flags, range_text
from hardware.errors import SdflInputError


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _kind(annotation) -> str:
    """'dict', 'list', 'bool' or 'value' for a setting's type (None allowed or not)."""
    for arg in (annotation, *get_args(annotation)):
        origin = get_origin(arg) or arg
        if origin is dict:
            return "dict"
        if origin is list:
            return "list"
        if arg is bool:
            return "bool"
    return "value"


def _optional(annotation) -> bool:
    return type(None) in get_args(annotation)


def _help(field) -> str:
    parts = [field.description or ""]
    if range_text(field):
        parts.append(range_text(field))
    if field.is_required():
        parts.append("required")
    else:
        default = field.get_default(call_default_factory=True)
        shown = "none" if default is None else " ".join(map(str, default)) if isinstance(default, list) else default
        parts.append(f"default: {shown}")
    return "; ".join(p for p in parts if p).replace("%", "%%")


def add_settings(parser: argparse.ArgumentParser, model: type[FlowSettings], skip: tuple[str, ...] = ()) -> None:
    """One option per setting of `model`; unset options stay out of the namespace."""
    group = parser.add_argument_group(f"settings of the {model.flow_name} flow")
    for name, field in model.ordered_fields().items():
        if name in skip:
            continue
        names = [flag(name), *cli_flags(field)]
        kind = _kind(field.annotation)
        options: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": _help(field)}
        if kind == "bool":
            options["action"] = argparse.BooleanOptionalAction
        elif kind == "dict":
            options.update(nargs="+", metavar="NAME=VALUE", action="extend")
        elif kind == "list":
            options.update(nargs="+", metavar="VALUE", action="extend")
        else:
            allowed = choices_of(field)
            options["metavar"] = "{" + ",".join(map(str, allowed)) + "}" if allowed else name.upper()
        group.add_argument(*names, **options)


def settings_from(args: argparse.Namespace, model: type[FlowSettings], **extra: Any) -> FlowSettings:
    """The model's settings from the options given (the rest take the model's defaults)."""
    values: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        if name not in vars(args):
            continue
        raw = getattr(args, name)
        kind = _kind(field.annotation)
        if kind == "dict":
            values[name] = pairs(raw, (cli_flags(field) or (flag(name),))[0])
        elif isinstance(raw, str) and raw.lower() in ("none", "") and _optional(field.annotation):
            values[name] = None
        else:
            values[name] = raw
    values.update(extra)
    return model.from_values(values, flag=flag)


def pairs(tokens: list[str], option: str) -> dict[str, str]:
    """NAME=VALUE tokens (or NAME VALUE pairs) as a dict; SdflInputError naming the option."""
    out: dict[str, str] = {}
    pending: str | None = None
    for token in tokens:
        name, sep, value = token.partition("=")
        if sep:
            if pending is not None:
                raise SdflInputError(f"{option} {pending}: give a value, as {option} {pending}=VALUE")
            out[name.strip()] = value.strip()
        elif pending is None:
            pending = token
        else:
            out[pending], pending = token, None
    if pending is not None:
        raise SdflInputError(f"{option} {pending}: give a value, as {option} {pending}=VALUE")
    return out


def settings_markdown() -> str:
    """Every flow's settings as markdown tables (docs/settings.md is this text; a test keeps it so)."""
    from flows.settings import FAMILIES

    commands = {"run-experiment": "sdfl experiment", "residence-time-study": "sdfl study residence-time",
                "rig-procedure": "sdfl procedure", "seek-target": "sdfl seek-target"}
    lines = ["# Settings", "",
             "Generated from `flows/settings.py`, where each setting is declared once; the Prefect UI forms, the",
             "flows' Python keywords and `sdfl <command> --help` show the same. Regenerate with",
             "`python -m flows.cli_options > docs/settings.md`.", ""]
    for name, model in FAMILIES.items():
        command = commands.get(name, f"sdfl {name}")
        lines += [f"## {name}", "", f"{model.__doc__.strip()} Command: `{command}`.", "",
                  "| setting | option | default | allowed | description |", "|---|---|---|---|---|"]
        for field_name, field in model.ordered_fields().items():
            options = ", ".join(f"`{f}`" for f in (flag(field_name), *cli_flags(field)))
            if field.is_required():
                default = "required"
            else:
                value = field.get_default(call_default_factory=True)
                default = "empty" if value is None else f"`{' '.join(map(str, value))}`" if isinstance(value, list) \
                    else f"`{value}`"
            allowed = ", ".join(map(str, choices_of(field))) or range_text(field)
            text = (field.description or "").replace("|", "/")
            lines.append(f"| `{field_name}` | {options} | {default} | {allowed} | {text} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(settings_markdown(), end="")
