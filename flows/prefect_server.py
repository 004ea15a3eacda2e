"""Prefect's temporary API server as `sdfl` runs it: given time to start on a busy machine, and gone
when the `sdfl` process that started it is gone, even after `kill -9`.

Without PREFECT_API_URL, Prefect starts a temporary API server (uvicorn) in a child process for the
first flow run, and stops it only when the parent exits normally. `use_sdfl_temporary_server()`
registers sdfl's own kind of that server before any flow runs: its child runs uvicorn through this
module (`python -m flows.prefect_server --parent <pid> <uvicorn options>`), which checks twice a
second that its parent is still there and shuts the server down when it is not. The child runs in
a session of its own, so Ctrl-C in a terminal stops only sdfl: sdfl still reaches the server while
it marks the run crashed, then stops the server as it exits.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

from hardware.errors import TemporaryServerDidNotStart

STARTUP_TIMEOUT_S = 180
"""How long sdfl waits for the temporary server to answer (Prefect's default, 20 s, is too short on a
busy machine). A PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS of the user's own wins."""

PARENT_CHECK_S = 0.5
"""How often the server's process checks that its parent is still running."""

LAUNCHES = 3
"""How many times one start may launch the server. Prefect launches it again on another port whenever it
exits with uvicorn's start-up failure code, for the whole time limit; a server that fails for another
reason (an unusable PREFECT_HOME) would fail the same way every time."""

SHUTDOWN_GRACE_S = 5.0
"""How long an orphaned server may take to shut down cleanly before it is ended at once."""

_CHILD_MODULE = "flows.prefect_server"


class SdflServerChanges:
    """What sdfl changes in Prefect's `SubprocessASGIServer`: a longer time limit, one clear error,
    and a child process that stops when this process is gone. `use_sdfl_temporary_server` puts it
    on top of Prefect's class (whose module takes 2 s to import, so only when a server is needed)."""

    startup_timeout_s: int = STARTUP_TIMEOUT_S
    failure: TemporaryServerDidNotStart | None = None
    launches: int = 0

    def start(self, timeout: int | None = None) -> None:
        """Start the server once; if that failed, every later call fails at once with the same error."""
        if self.failure is not None:
            raise self.failure
        timeout = timeout or self.startup_timeout_s
        self.launches = 0
        try:
            super().start(timeout)
        except Exception as exc:
            self.failure = TemporaryServerDidNotStart(self._failure_message(timeout))
            self._end_process()
            raise self.failure from exc

    def _failure_message(self, timeout: int) -> str:
        """One line: what failed and what to do."""
        from prefect.settings import get_current_settings

        server = "or start a Prefect server (`make server`) and set PREFECT_API_URL=http://127.0.0.1:4200/api"
        process = self.server_process
        if self.launches > LAUNCHES or (process is not None and process.poll() is not None):
            home = get_current_settings().home
            return ("Prefect's temporary server failed while starting, so no flow could run. Fix what its messages "
                    f"above say (often: PREFECT_HOME, now {home}, must be a folder you can write to), {server}")
        return (f"Prefect's temporary server did not start within {timeout} s (is the machine busy?), so no flow "
                "could run. Retry when the machine is less busy, allow more time with "
                f"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=600, {server}")

    def _end_process(self) -> None:
        """Stop a server that did not come up, but stay the registered server (so none is started again)."""
        process, self.server_process = self.server_process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def _run_uvicorn_command(self) -> subprocess.Popen:
        """Prefect's own command (prefect 3.9 `SubprocessASGIServer`), with uvicorn run by this module."""
        import prefect
        from prefect.settings import get_current_settings

        self.launches += 1
        if self.launches > LAUNCHES:
            raise RuntimeError(f"the temporary server failed to start {LAUNCHES} times")
        env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1",
               **get_current_settings().to_environment_variables(exclude_unset=True)}
        uvicorn_options = ["--app-dir", str(prefect.__module_path__.parent), "--factory",
                           "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(self.port),
                           "--log-level", "error", "--lifespan", "on"]
        return subprocess.Popen([sys.executable, "-m", _CHILD_MODULE, "--parent", str(os.getpid()), *uvicorn_options],
                                env=env, start_new_session=True)


def use_sdfl_temporary_server() -> None:
    """Make Prefect start sdfl's temporary server if a flow needs one. Call before any flow runs.

    Does nothing with a Prefect server (PREFECT_API_URL set) or when a temporary server is already
    chosen (Prefect's test harness registers its own)."""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url:
        return
    from prefect.server.api.server import SubprocessASGIServer

    if None in SubprocessASGIServer._instances:
        return

    class SdflTemporaryServer(SdflServerChanges, SubprocessASGIServer):
        """Prefect's temporary server, in a child process that stops when this process is gone."""

    server = SdflTemporaryServer()  # Prefect keeps it as the one temporary server of this process
    if "startup_timeout_seconds" in settings.server.ephemeral.model_fields_set:  # the user chose a limit
        server.startup_timeout_s = settings.server.ephemeral.startup_timeout_seconds


# --- in the server's process -------------------------------------------------------------------------
def serve(argv: list[str]) -> None:
    """Run uvicorn with the options in `argv` (after `--parent <pid>`) while that parent lives."""
    if len(argv) < 2 or argv[0] != "--parent":
        raise SystemExit(f"usage: python -m {_CHILD_MODULE} --parent <pid> <uvicorn options>")
    parent = int(argv[1])
    threading.Thread(target=_stop_when_orphaned, args=(parent,), name="sdfl-parent-watch", daemon=True).start()
    import uvicorn

    uvicorn.main(args=argv[2:], prog_name="uvicorn")  # exits with uvicorn's code (3: port taken, Prefect retries)


def _stop_when_orphaned(parent: int) -> None:
    """Once the parent is gone (this process was handed to another), shut the server down."""
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_S)
    os.kill(os.getpid(), signal.SIGTERM)  # uvicorn's own clean shutdown (or, before it started, the end)
    time.sleep(SHUTDOWN_GRACE_S)
    os._exit(1)


if __name__ == "__main__":
    serve(sys.argv[1:])
