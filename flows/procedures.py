"""rig-procedure: a platform's start-up or shut-down steps (gas purge, solvent fill or flush) as a
flow, holding the reactor like an experiment does."""

from __future__ import annotations

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.reactor import reactor_lock
from flows.settings import ProcedureSettings, settings_flow
from hardware.platform import load_platform
from hardware.rig import open_rig
from tasks.procedures import run_procedure


@settings_flow(ProcedureSettings)
def rig_procedure(settings: ProcedureSettings) -> list[dict]:
    """Run the platform's start-up or shut-down steps on its rig and leave it safe. Returns the steps."""
    procedure, platform, seed = settings.procedure, settings.platform, settings.seed
    logger = get_run_logger()
    config = load_platform(platform)
    with reactor_lock(config.platform.name, logger):
        rig = open_rig(config, seed)
        with rig.lock:
            reports = run_procedure(rig, procedure)
    rows = "\n".join(f"| {r.step} | {r.t_start_s / 60:.1f} | {r.t_end_s / 60:.1f} | {r.detail} |" for r in reports)
    create_markdown_artifact(
        key="rig-procedure", description=f"{procedure} of {config.platform.name}",
        markdown=f"## {procedure}: {config.platform.name}\n\n| step | start (min) | end (min) | what |\n"
                 f"|---|---:|---:|---|\n{rows}\n",
    )
    for r in reports:
        logger.info("%s %s: %s", procedure, r.step, r.detail)
    return [r.to_dict() for r in reports]
