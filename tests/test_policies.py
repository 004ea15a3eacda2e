"""Policies: one loop behind every proposal, and one registry of the names a user can choose."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import optuna
import pytest

from hardware.errors import SdflInputError
from hardware.platform import load_platform
from tasks import choices, proposal
from tasks.ledger import distributions
from tasks.proposal import propose, propose_by_desirability
from tasks.samplers import (
    BUILDERS,
    DEFAULT_POLICY,
    FAMILIES,
    SAMPLERS,
    TARGET_SAMPLERS,
    PolicySampler,
    ProposalSampler,
    TargetSampler,
    build_sampler,
    make_sampler,
    make_target_sampler,
    policy_help,
    policy_names,
    resolve_policy,
)
from tasks.targets import MeasuredDesirability, Target, check_target, desirability_for, errors_from_peaks

PLATFORM = load_platform("virtual-cs3cu2i5")
HAS_TORCH = importlib.util.find_spec("torch") is not None


# --- one loop: no proposal repeats a measured condition ---------------------------------------------------


def analytic_lab(U: np.ndarray) -> np.ndarray:
    """A cheap two-input 'lab' (peak nm, quality, FWHM): the peak red-shifts along x0 (500-530 nm)."""
    U = np.atleast_2d(U)
    return np.column_stack([500.0 + 30.0 * U[:, 0], 100.0 - 80.0 * (U[:, 1] - 0.7) ** 2,
                            16.0 + 4.0 * U[:, 0] + 20.0 * (U[:, 1] - 0.4) ** 2])


# 516 +- 5 nm, and quality and FWHM acceptable everywhere: every x0 in 0.37-0.70 is fully on target
WIDE_TARGET = Target(516.0, tolerance_nm=5.0, quality_range=(0.0, 10.0), fwhm_range_nm=(30.0, 40.0))


def on_target_observations(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Six measured conditions, all inside the on-target band (desirability 1: nothing can beat them)."""
    X = np.random.default_rng(seed).random((6, 2)) * [0.15, 1.0] + [0.45, 0.0]
    return X, analytic_lab(X)


def closest_measured(points: np.ndarray, X: np.ndarray) -> float:
    return float(np.linalg.norm(points[:, None, :] - X[None, :, :], axis=2).min())


def test_desirability_ei_never_repeats_a_measured_condition():
    """Once every measured condition is on target, the expected desirability is flat at 1 around
    them; the policy must still propose a new condition, not run a measured one again."""
    for seed in range(8):
        X, Y = on_target_observations(seed)
        desirability = MeasuredDesirability(desirability_for(WIDE_TARGET, errors_from_peaks(Y, WIDE_TARGET)),
                                            WIDE_TARGET)
        assert desirability(Y).min() == 1.0  # the set-up: all on target

        points, _ = propose_by_desirability(X, Y, desirability, seed=seed)

        assert closest_measured(points, X) > 1e-6, f"seed {seed} repeats a measured condition"


def test_both_proposals_keep_one_percent_from_measured_and_running_conditions():
    """`propose` and `propose_by_desirability` share the loop: the same distance rule holds for both."""
    X, Y = on_target_observations(0)
    running = np.array([[0.3, 0.3]])
    desirability = MeasuredDesirability(desirability_for(WIDE_TARGET, errors_from_peaks(Y, WIDE_TARGET)),
                                        WIDE_TARGET)
    by_desirability, _ = propose_by_desirability(X, Y, desirability, pending=running, seed=1)
    by_exploitation, _ = propose("eplt", X, np.zeros(len(X)), pending=running, seed=1)  # a flat objective
    for points in (by_desirability, by_exploitation):
        assert closest_measured(points, np.vstack([X, running])) > proposal.MIN_SEPARATION


# --- one registry of policy names ---------------------------------------------------------------------


def test_each_kind_of_campaign_offers_its_policies_default_first():
    assert policy_names("optimize") == ("ei", "ucb", "eplt", "mv", "ivr", "random", "tpe", "gp")
    assert policy_names("explore") == ("ivr", "mv", "random")
    assert set(policy_names("target")) == {"desirability-ei", "tpe", "random"}
    assert DEFAULT_POLICY == {"optimize": "ei", "explore": "ivr", "target": "desirability-ei"}
    assert FAMILIES == ("optimize", "explore", "target")
    for family in FAMILIES:
        assert policy_names(family)[0] == DEFAULT_POLICY[family]


def test_the_old_lists_are_derived_from_the_registry():
    assert SAMPLERS == policy_names("optimize")
    assert set(policy_names("explore")) <= set(SAMPLERS)  # make_sampler serves explore campaigns too
    assert TARGET_SAMPLERS == policy_names("target")


def test_every_declared_policy_has_a_sampler_and_proposal_implements_the_surrogate_ones():
    declared = {p.name for p in choices.POLICIES}
    assert set(BUILDERS) == declared
    built_by_proposal = {name for name, build in BUILDERS.items() if build is BUILDERS["ei"]}
    assert built_by_proposal == set(proposal.POLICIES)
    assert set(proposal.DESIRABILITY_POLICIES) <= set(policy_names("target"))


def test_only_random_skips_the_initial_design():
    assert [p.name for p in choices.POLICIES if not p.initial_design] == ["random"]


def test_policy_help_names_every_policy_with_its_summary():
    text = policy_help("optimize")
    assert text.startswith("ei: expected improvement; ucb: ")
    for policy in choices.POLICIES:
        if "optimize" in policy.families:
            assert f"{policy.name}: {policy.summary}" in text
    assert "desirability-ei" not in text and "desirability-ei" in policy_help("target")


def test_a_misspelt_policy_is_refused_with_the_choices_and_a_hint():
    with pytest.raises(SdflInputError) as error:
        resolve_policy("eii", "optimize")
    message = str(error.value)
    assert "policy" in message and "did you mean 'ei'?" in message
    for name in policy_names("optimize"):
        assert name in message


@pytest.mark.parametrize("name, family", [("tpe", "explore"), ("gp", "target"), ("ivr", "target"),
                                          ("desirability-ei", "optimize")])
def test_a_policy_of_another_kind_of_campaign_is_refused(name, family):
    with pytest.raises(SdflInputError, match="policy"):
        resolve_policy(name, family)


def test_gp_resolves_without_torch_and_says_what_to_install_when_built(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed: importing it fails
    policy = resolve_policy("gp", "optimize")  # naming and checking the policy needs no torch
    with pytest.raises(SdflInputError, match=r"needs torch: install the gp extra \(make gp"):
        policy.sampler("optimize", PLATFORM, "gp", 0)


# --- every policy builds its sampler ------------------------------------------------------------------


def target_objective():
    return check_target(Target(450.0), PLATFORM)


@pytest.mark.parametrize("family, name", [(f, n) for f in FAMILIES for n in policy_names(f)])
def test_every_policy_builds_a_sampler_for_the_default_platform(family, name):
    policy = resolve_policy(name, family)
    if name == "gp" and not HAS_TORCH:
        with pytest.raises(SdflInputError, match="torch"):
            policy.sampler(family, PLATFORM, "gp", 0)
        return
    objective = target_objective() if family == "target" else None
    sampler = policy.sampler(family, PLATFORM, "gp", 0, objective=objective)
    assert isinstance(sampler, optuna.samplers.BaseSampler)
    if name in proposal.POLICIES:
        assert isinstance(sampler, PolicySampler) and sampler.policy == name
    if name == "desirability-ei":
        assert isinstance(sampler, TargetSampler)


def test_the_old_entry_points_are_thin_wrappers():
    assert isinstance(make_sampler("mv", PLATFORM, "gp", 0), PolicySampler)
    objective = target_objective()
    assert isinstance(make_target_sampler("desirability-ei", PLATFORM, objective, "gp", 0), TargetSampler)
    assert isinstance(make_target_sampler("tpe", PLATFORM, objective, "gp", 0), optuna.samplers.TPESampler)
    with pytest.raises(SdflInputError, match="did you mean 'desirability-ei'"):
        make_target_sampler("desirability", PLATFORM, objective, "gp", 0)
    with pytest.raises(SdflInputError, match="policy"):
        make_sampler("desirability-ei", PLATFORM, "gp", 0)
    with pytest.raises(SdflInputError, match="policy"):
        build_sampler("ei", "target", PLATFORM, "gp", 0)


# --- one base sampler ---------------------------------------------------------------------------------


def test_both_samplers_share_the_set_up_and_leave_enqueued_trials_alone():
    assert issubclass(PolicySampler, ProposalSampler) and issubclass(TargetSampler, ProposalSampler)

    def low_half(u):
        return bool(u[0] <= 0.5)

    sampler = make_target_sampler("desirability-ei", PLATFORM, target_objective(), "gp", 3, feasible=low_half)
    study = optuna.create_study(directions=["minimize", "maximize", "minimize"], sampler=sampler)
    centre = {p.name: (p.low + p.high) / 2 for p in PLATFORM.parameters}
    study.enqueue_trial(centre)
    first, second = study.ask(distributions(PLATFORM)), study.ask(distributions(PLATFORM))  # both running
    assert first.params == centre  # the enqueued condition, untouched
    name, middle = PLATFORM.parameter_names[0], (PLATFORM.parameters[0].low + PLATFORM.parameters[0].high) / 2
    assert second.params[name] <= middle + 1e-9  # random before two observations, within the rules


def test_random_gives_the_same_conditions_in_every_kind_of_campaign():
    """One random sampler: the same seed draws the same conditions for a single objective or a target."""
    drawn = []
    for family, directions in (("optimize", ["maximize"]), ("target", ["minimize", "maximize", "minimize"])):
        sampler = build_sampler("random", family, PLATFORM, "gp", 5, objective=target_objective())
        study = optuna.create_study(directions=directions, sampler=sampler)
        trials = [study.ask(distributions(PLATFORM)) for _ in range(3)]
        drawn.append([t.params for t in trials])
    assert drawn[0] == drawn[1]
