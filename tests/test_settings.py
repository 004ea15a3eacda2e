"""Each setting is declared once (flows/settings.py): the flow signature, the Prefect form, the
command line and the deployment file must all say what its model says."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import yaml
from conftest import REPO_DIR

from flows.cli import FLOW_COMMANDS, build_parser
from flows.cli_options import flag
from flows.settings import FAMILIES, FlowSettings, bounds_of, choices_of

FLOWS = {
    "run-experiment": "flows.experiment:run_experiment", "optimize": "flows.campaign:optimize",
    "explore": "flows.campaign:explore", "seek-target": "flows.campaign:seek_target",
    "manufacture": "flows.manufacture:manufacture", "residence-time-study": "flows.characterize:residence_time_study",
    "rig-procedure": "flows.procedures:rig_procedure", "demo": "flows.demo:demo",
}
COMMANDS = {model.flow_name: name for name, (model, _, _) in FLOW_COMMANDS.items()}
COMMANDS["residence-time-study"] = "study residence-time"


def load(entrypoint: str):
    import importlib

    module, name = entrypoint.split(":")
    return getattr(importlib.import_module(module), name)


def disagreements(model: type[FlowSettings], flow, parser_for_command) -> list[str]:
    """Every place where the flow's signature, its form schema or the command line says something
    other than the model about a setting's default, bounds or choices."""
    from prefect.utilities.callables import parameter_schema

    out = []
    signature = inspect.signature(flow)
    schema = parameter_schema(flow).model_dump_for_openapi()["properties"]
    actions = {a.dest: a for a in parser_for_command._actions if a.option_strings}
    if list(signature.parameters) != list(model.ordered_fields()):
        out.append(f"{model.flow_name}: flow parameters {list(signature.parameters)} are not the settings "
                   f"{list(model.ordered_fields())}")
    for name, field in model.model_fields.items():
        default = None if field.is_required() else field.get_default(call_default_factory=True)
        parameter = signature.parameters.get(name)
        if parameter is not None and not field.is_required() and parameter.default != default:
            out.append(f"{name}: the flow's default is {parameter.default!r}, the model's {default!r}")
        form = schema.get(name, {})
        if not field.is_required() and form.get("default") != default:
            out.append(f"{name}: the form's default is {form.get('default')!r}, the model's {default!r}")
        flat = {**form, **{k: v for option in form.get("anyOf", []) for k, v in option.items()}}
        for word, bound in bounds_of(field).items():
            if flat.get(word) != bound:
                out.append(f"{name}: the form's {word} is {flat.get(word)!r}, the model's {bound!r}")
        allowed = choices_of(field)
        if allowed and flat.get("enum") != allowed:
            out.append(f"{name}: the form offers {flat.get('enum')}, the model {allowed}")
        action = actions.get(name)
        if action is None:
            out.append(f"{name}: no command-line option")
            continue
        if flag(name) not in action.option_strings:
            out.append(f"{name}: the option is not called {flag(name)}")
        shown = "required" if field.is_required() else "default: " + (
            "none" if default is None else " ".join(map(str, default)) if isinstance(default, list) else str(default))
        if shown not in (action.help or ""):
            out.append(f"{name}: --help does not say {shown!r}: {action.help!r}")
        if action.default is not __import__("argparse").SUPPRESS:
            out.append(f"{name}: the command line has a default of its own ({action.default!r})")
    return out


def command_parser(flow_name: str):
    parser = build_parser()
    words = COMMANDS[flow_name].split()
    for word in words:
        parser = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices[word]
    return parser


@pytest.mark.parametrize("flow_name", sorted(FAMILIES))
def test_flow_form_and_command_line_say_what_the_model_says(flow_name):
    model = FAMILIES[flow_name]
    assert disagreements(model, load(FLOWS[flow_name]), command_parser(flow_name)) == []


def test_a_default_typed_again_by_hand_is_caught():
    """A flow written by hand with its own default for a setting (the drift this test exists for)."""
    from prefect import flow

    from flows.settings import ProcedureSettings

    @flow(name="rig-procedure")
    def drifted(procedure: str = "shutdown", platform: str = "virtual-cs3cu2i5", seed: int | None = None):
        return None

    found = disagreements(ProcedureSettings, drifted, command_parser("rig-procedure"))
    assert any("procedure: the flow's default is 'shutdown'" in line for line in found), found
    assert any("the form's default is 'shutdown'" in line for line in found), found

    parser = command_parser("rig-procedure")
    action = next(a for a in parser._actions if a.dest == "procedure" and a.option_strings)
    action.help = action.help.replace("default: startup", "default: shutdown")  # --help typed by hand
    found = disagreements(ProcedureSettings, load(FLOWS["rig-procedure"]), parser)
    assert any("--help does not say 'default: startup'" in line for line in found), found


def test_the_deployment_file_only_sets_values_the_model_accepts_and_never_restates_a_default():
    config = yaml.safe_load((Path(REPO_DIR) / "deployments" / "prefect.yaml").read_text())
    by_entrypoint = {entry: FAMILIES[name] for name, entry in FLOWS.items()}
    problems = []
    for deployment in config["deployments"]:
        model = by_entrypoint[deployment["entrypoint"]]
        sets = [deployment.get("parameters") or {}] + [s.get("parameters") or {} for s in deployment.get("schedules", [])]
        for params in sets:
            for name, value in params.items():
                field = model.model_fields.get(name)
                if field is None:
                    problems.append(f"{deployment['entrypoint']}: {name} is not a setting")
                elif name != "platform" and not field.is_required() and value == field.get_default(
                        call_default_factory=True):
                    problems.append(f"{deployment['entrypoint']}: {name}: {value!r} restates the default; remove it")
        stub = {name: "check" for name, field in model.model_fields.items() if field.is_required()}
        model.from_values({**stub, **(deployment.get("parameters") or {})})
    assert not problems, "\n".join(problems)


def test_no_text_a_scientist_reads_in_the_ui_is_in_angle_brackets():
    """The Prefect UI reads descriptions as Markdown and drops `<data root>` as an unknown HTML tag:
    the deployment file, the flows' docstrings and the settings say such things in words."""
    tag = re.compile(r"<[A-Za-z][^>]*>")
    config = yaml.safe_load((Path(REPO_DIR) / "deployments" / "prefect.yaml").read_text())
    texts = {f"prefect.yaml: {d['entrypoint']} on {d['name']}": d.get("description") for d in config["deployments"]}
    for flow_name, model in FAMILIES.items():
        texts[f"{flow_name}: docstring"] = load(FLOWS[flow_name]).description
        texts.update({f"{flow_name}: {name}": field.description for name, field in model.model_fields.items()})
    assert {where: text for where, text in texts.items() if tag.search(text or "")} == {}


@pytest.mark.usefixtures("prefect_harness")
def test_python_callers_get_the_same_rules(tmp_path):
    from flows.campaign import optimize
    from hardware.errors import SdflInputError

    with pytest.raises(SdflInputError, match="reactors must be at most 16"):
        optimize(campaign="c", reactors=500, data_root=str(tmp_path))
    with pytest.raises(SdflInputError, match="budget must be at least 1"):
        optimize(campaign="c", budget=-3, data_root=str(tmp_path))


def test_the_settings_page_is_up_to_date():
    from flows.cli_options import settings_markdown

    page = (Path(REPO_DIR) / "docs" / "settings.md").read_text()
    assert page == settings_markdown(), "regenerate it: python -m flows.cli_options > docs/settings.md"


@pytest.mark.parametrize("values, words", [
    ({"campaign": "c", "seed": True}, ["seed must be a number, got True"]),
    ({"campaign": "c", "budget": 2.5}, ["budget must be a whole number"]),
    ({"campaign": "c", "kappa": float("inf")}, ["kappa must be a finite number"]),
    ({"campaign": "c", "polcy": "ei"}, ["polcy is not a setting", "did you mean 'policy'"]),
    ({"campaign": "c", "policy": "EI"}, ["policy must be one of", "did you mean 'ei'"]),
    ({"campaign": "c", "reactors": 17}, ["reactors must be at most 16"]),
])
def test_a_wrong_value_from_python_names_the_setting(values, words):
    from flows.settings import OptimizeSettings
    from hardware.errors import SdflInputError

    with pytest.raises(SdflInputError) as caught:
        OptimizeSettings.from_values(values)
    for word in words:
        assert word in str(caught.value), str(caught.value)
