"""The lists a user chooses from, declared once: surrogates, policies, what to do after a crash
or an alarm. Light on purpose (no numpy, no Optuna): the `sdfl` command checks a choice before
anything heavy is imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

SurrogateKind = Literal["gp", "ensemble"]
SURROGATE_HELP = "gp: Gaussian process (Matern 5/2); ensemble: bootstrap ensemble of 10 small neural networks"

InFlight = Literal["fail", "rerun"]
IN_FLIGHT_HELP = ("on resume, an experiment that was running when the campaign stopped: fail records it as "
                  "failed, rerun runs it again")

Finish = Literal["stop", "hold"]
FINISH_HELP = "stop: leave the rig safe; hold: pumps and heater stay on for a next experiment"

OnAlarm = Literal["pause", "continue", "stop"]
ON_ALARM_HELP = ("after an out-of-control QC sample. pause: wait for an operator's decision (continue, "
                 "re-equilibrate or stop) in a Prefect UI form, or stop when no Prefect server is set; continue: "
                 "log it and go on; stop: end the lot safely")

StartFrom = Literal["previous", "solvent"]
START_FROM_HELP = "previous: step directly from one reaction time to the next; solvent: flush with solvent first"

Procedure = Literal["startup", "shutdown"]
PROCEDURE_HELP = "startup: purge and fill before a run; shutdown: flush the product out after it"

EI_MARGIN = 0.0
"""Expected improvement's margin xi, as a share of the spread of the observed objective: none, as
in Optuna's and BoTorch's EI. On the public test set a margin of 0.01 cost EI 8 experiments
(median) to 95 % of the optimum on the default twin and 3 points of the mean best at 15
(benchmarks/policies.py, docs/benchmarks.md)."""


# --- policies: how a campaign picks its next condition -----------------------------------------
Family = Literal["optimize", "explore", "target"]


@dataclass(frozen=True)
class Policy:
    """A campaign policy as the user names it. `tasks.samplers` builds its Optuna sampler."""

    name: str
    summary: str
    families: tuple[str, ...]
    initial_design: bool = True
    """False for random: no Latin-hypercube design before it (it is random already)."""
    default_for: tuple[str, ...] = ()

    def sampler(self, family: str, platform, surrogate: str, seed: int, **options):
        """The Optuna sampler that runs this policy in a campaign of `family`."""
        from tasks import samplers

        return samplers.build_sampler(self, family, platform, surrogate, seed, **options)


POLICIES: tuple[Policy, ...] = (
    Policy("ei", "expected improvement", ("optimize",), default_for=("optimize",)),
    Policy("ucb", "upper confidence bound, mean + kappa standard deviations", ("optimize",)),
    Policy("eplt", "pure exploitation of the model's mean", ("optimize",)),
    Policy("mv", "maximum variance (where the model knows least)", ("optimize", "explore")),
    Policy("ivr", "integrated variance reduction (a model good everywhere)", ("optimize", "explore"),
           default_for=("explore",)),
    Policy("desirability-ei", "a model per objective, expected improvement of the desirability", ("target",),
           default_for=("target",)),
    Policy("random", "uniform random conditions that keep the platform's rules", ("optimize", "explore", "target"),
           initial_design=False),
    Policy("tpe", "Optuna's tree-structured Parzen estimator", ("optimize", "target")),
    Policy("gp", "Optuna's Gaussian-process sampler (needs torch: the gp extra)", ("optimize",)),
)
"""Every policy, declared once."""


def policies(family: str) -> tuple[Policy, ...]:
    """The policies a campaign of `family` offers, its default first."""
    offered = [p for p in POLICIES if family in p.families]
    return tuple(sorted(offered, key=lambda p: family not in p.default_for))


def policy_names(family: str) -> tuple[str, ...]:
    return tuple(p.name for p in policies(family))


def default_policy(family: str) -> str:
    return policy_names(family)[0]


def policy_literal(family: str):
    """The family's policy names as a `Literal` type (the form's drop-down)."""
    return Literal[policy_names(family)]


def policy_help(family: str) -> str:
    return "; ".join(f"{p.name}: {p.summary}" for p in policies(family))


def resolve_policy(name: str, family: str) -> Policy:
    """The policy a campaign of `family` runs for `name`; SdflInputError naming the choices."""
    from hardware.errors import SdflInputError, did_you_mean

    for policy in policies(family):
        if policy.name == name:
            return policy
    names = policy_names(family)
    raise SdflInputError(f"policy {name!r} is not one of the {family} policies; choose one of {', '.join(names)}"
                         f"{did_you_mean(name, names)}")
