"""Chemyx Fusion 4000/6000 syringe pump driver (RS-232 / USB serial, ASCII command set).

The pump echoes each command, answers one or more lines and prompts ">". Every set command is
checked against the value the pump says it took; a difference means it clamped the request, and
the driver stops there. Several channels of one pump share a `SerialLink`.

A lost or garbled reply costs one command a retry (hardware/retry.py): queries, checked set
commands, `stop` and `pause` are sent again. `start` is not safe to repeat blindly (a start whose
reply was lost may have started the pump), so the driver first asks the pump what happened.

Protocol as this driver assumes it (Chemyx serial-command pages; not verified on hardware):
- commands are lower case and end with CR LF; a channel prefix ("2 set rate 10") on multi-channel pumps;
- answers read "name = value" (e.g. "rate = 10") or a bare value;
- `read limit parameter` answers four numbers, "max_volume min_volume max_rate min_rate", in the
  current units (the vendor's help text: "Pump Return Max/Min volume & Rate"; Chemyx's MATLAB
  driver reads them in this order);
- `pump status`: 0 stopped, 1 running, 2 paused, 3 delayed start, 4 stalled;
- `start` answers "Pump start running..." (or "Pump delay..."); anything else means it did not start;
- `dispensed volume` is the volume of the current (or last) run, in the current volume unit; a
  `start` that takes effect restarts it;
- set commands are accepted while the pump runs, and `start` then re-programs the running pump
  (so `infuse` can change a condition without stopping the flow).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from hardware.drivers.serial_link import Link, SerialLink
from hardware.errors import (
    CommandRejected,
    GarbledReply,
    InstrumentDisconnected,
    InstrumentTimeout,
    PumpStalled,
    SafetyLimitExceeded,
    SyringeEmpty,
    TransientInstrumentError,
    ValueClamped,
    WrongDevice,
)
from hardware.interfaces import PumpStatus
from hardware.retry import COMMAND_ATTEMPTS, RetryCounter, retry

UNITS_UL_MIN = 2
"""`set units` code for uL/min (0 mL/min, 1 mL/hr, 2 uL/min, 3 uL/hr); volumes are then in uL."""
STATUS_CODES = {0: "stopped", 1: "running", 2: "paused", 3: "delayed", 4: "stalled"}
STARTED_REPLIES = ("pump start running", "pump delay")
INVALID = "invalid command!"


log = logging.getLogger(__name__)


def format_number(value: float, decimals: int = 5) -> str:
    """A number as the pump takes it: fixed point, no trailing zeros ("12.5", "40000")."""
    text = f"{value:.{decimals}f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


@dataclass(frozen=True)
class PumpLimits:
    """What `read limit parameter` reports for the programmed syringe, in uL and uL/min (in the
    pump's order: max volume, min volume, max rate, min rate)."""

    max_volume_ul: float
    min_volume_ul: float
    max_rate_ul_min: float
    min_rate_ul_min: float


class ChemyxPump:
    """One channel of a Chemyx Fusion pump; satisfies `hardware.interfaces.SyringePump`.

    Opening it asks the pump for its status, so a wrong port fails at once (`WrongDevice`).
    Rates and volumes are checked against the syringe's limits before anything is sent.
    `retries` counts the commands retried after a lost or garbled reply (shared by a rig).

    Volume bookkeeping: `_used_ul` is what was dispensed since the last fill, not counting the
    part of the pump's run counter (`dispensed volume`) above `_counted_ul`; `_run_open` says
    the run counter belongs to a run this driver started.
    """

    def __init__(self, port_or_url: str | None = None, *, name: str, syringe_volume_ul: float,
                 syringe_inner_diameter_mm: float, min_rate_ul_min: float, max_rate_ul_min: float,
                 channel: int | None = None, baudrate: int = 9600, timeout_s: float = 1.0,
                 link: Link | None = None, retries: RetryCounter | None = None):
        if (port_or_url is None) == (link is None):
            raise ValueError("give exactly one of: a port (or pyserial URL), or a shared link")
        self.name = name
        self.syringe_volume_ul = float(syringe_volume_ul)
        self.syringe_inner_diameter_mm = float(syringe_inner_diameter_mm)
        self.min_rate_ul_min = float(min_rate_ul_min)
        self.max_rate_ul_min = float(max_rate_ul_min)
        self.channel = channel
        self._owns_link = link is None
        if link is None:
            try:
                link = SerialLink(port_or_url, baudrate, timeout_s)
            except InstrumentDisconnected as exc:
                raise InstrumentDisconnected(name, str(exc)) from exc
        self.link = link
        self.retries = retries if retries is not None else RetryCounter()
        self._fill_ul = self.syringe_volume_ul
        self._used_ul = 0.0
        self._run_open = False
        self._counted_ul = 0.0
        self._rate_ul_min = 0.0
        try:
            self._probe()
        except BaseException:
            self.close()
            raise

    # --- framing -------------------------------------------------------------------------------
    def _command(self, text: str) -> str:
        return text if self.channel is None else f"{self.channel} {text}"

    def _exchange_once(self, text: str) -> list[str]:
        """Send one command once; return the answer lines (echo and prompt removed)."""
        command = self._command(text)
        try:
            raw = self.link.exchange(command.encode("ascii") + b"\r\n", b">")
        except InstrumentDisconnected as exc:
            raise InstrumentDisconnected(self.name, f"{exc}; check the cable and the pump's power") from exc
        if not raw.endswith(b">"):  # silence, or a reply cut short by the timeout
            got = f"only {raw[:60]!r}" if raw else "nothing"
            raise InstrumentTimeout(self.name, f"no reply to {command!r} on {self.link.port} ending with "
                                    f"the '>' prompt in time (got {got})")
        text_reply = raw.decode("ascii", errors="replace")
        lines = [ln.strip() for ln in text_reply[:-1].replace("\r", "\n").split("\n") if ln.strip()]
        if any(ln.lower() == INVALID for ln in lines):
            raise CommandRejected(self.name, f"the pump answered 'Invalid Command!' to {command!r}")
        if not lines or lines[0] != command:
            raise GarbledReply(self.name, f"reply to {command!r} does not start with its echo: {raw[:60]!r}")
        return lines[1:]

    def _retried(self, text: str, command):
        """Run `command` (which sends `text`), again after a lost or garbled reply."""
        return retry(command, instrument=self.name, what=repr(self._command(text)), counter=self.retries,
                     before_retry=self.link.discard_input)

    def _ask(self, text: str) -> list[str]:
        """Send a command that is safe to repeat; return the answer lines."""
        return self._retried(text, lambda: self._exchange_once(text))

    def _value(self, text: str) -> float:
        """Send a command, safe to repeat, whose answer is one number ("rate = 10" or "10")."""
        return self._retried(text, lambda: self._number(text, self._exchange_once(text)))

    def _number(self, text: str, lines: list[str]) -> float:
        if not lines:
            raise GarbledReply(self.name, f"no value in the reply to {text!r}")
        value = lines[-1].rsplit("=", 1)[-1].strip()
        try:
            number = float(value)
        except ValueError:
            raise GarbledReply(self.name, f"{text!r} answered {lines[-1]!r}, not a number") from None
        if not math.isfinite(number):
            raise GarbledReply(self.name, f"{text!r} answered {lines[-1]!r}, not a finite number")
        return number

    def _set(self, what: str, value: float, unit: str, decimals: int = 5) -> None:
        """`set <what> <value>`, then check the pump took exactly that value."""
        sent = format_number(value, decimals)
        took = self._value(f"set {what} {sent}")
        if not math.isclose(took, float(sent), rel_tol=1e-6, abs_tol=1e-9):
            raise ValueClamped(
                self.name,
                f"asked for {what} {sent} {unit} but the pump took {format_number(took)}: the request is "
                "outside the pump's limits for this syringe (nothing was started); check `read limit parameter`",
            )

    def _status_code(self) -> int:
        """`pump status` as a code of STATUS_CODES (asked again after a lost or unreadable reply)."""
        text = "pump status"
        return self._retried(text, lambda: self._code(self._number(text, self._exchange_once(text))))

    def _code(self, number: float) -> int:
        if number not in STATUS_CODES:
            raise GarbledReply(self.name, f"unknown pump status {number:g}")
        return int(number)

    def _probe(self) -> None:
        """Ask for the status (a few tries, like any query); no Chemyx answer at all is `WrongDevice`."""
        command = self._command("pump status")
        try:
            self._status_code()
        except (InstrumentTimeout, GarbledReply, CommandRejected) as exc:
            raise WrongDevice(
                self.name,
                f"the device on {self.link.port} does not answer like a Chemyx pump ({exc}; {COMMAND_ATTEMPTS} "
                f"tries). Fix: check that this is the pump's port, that the pump is on, and that its baud rate "
                f"matches; a Chemyx pump echoes {command!r} and ends its answer with '>'",
            ) from exc

    # --- the SyringePump protocol ---------------------------------------------------------
    def check_request(self, rate_ul_min: float, volume_ul: float) -> None:
        """Raise SafetyLimitExceeded unless the rate and volume fit this pump and syringe."""
        if not (math.isfinite(rate_ul_min) and self.min_rate_ul_min <= rate_ul_min <= self.max_rate_ul_min):
            raise SafetyLimitExceeded(
                self.name, f"rate {rate_ul_min:g} uL/min is outside the limit "
                f"[{self.min_rate_ul_min:g}, {self.max_rate_ul_min:g}] uL/min; nothing was sent")
        if not (math.isfinite(volume_ul) and 0 < volume_ul <= self.syringe_volume_ul):
            raise SafetyLimitExceeded(
                self.name, f"volume {volume_ul:g} uL must be finite, above 0 and at most the syringe volume "
                f"{self.syringe_volume_ul:g} uL; nothing was sent")

    def infuse(self, rate_ul_min: float, volume_ul: float) -> None:
        """Program a finite infusion (uL/min, uL) and start it; every setting is verified first."""
        self.check_request(rate_ul_min, volume_ul)
        with self.link.lock:
            self._close_run()
            left = self._fill_ul - self._used_ul
            if volume_ul > left + 1e-9:
                raise SyringeEmpty(
                    self.name, f"asked for {volume_ul:g} uL but the syringe holds {left:.0f} uL; refill it "
                    "and call set_fill()")
            units = self._value(f"set units {UNITS_UL_MIN}")
            if units != UNITS_UL_MIN:
                raise ValueClamped(self.name, f"asked for units {UNITS_UL_MIN} (uL/min), the pump took {units:g}")
            self._set("diameter", self.syringe_inner_diameter_mm, "mm", decimals=3)
            self._set("rate", rate_ul_min, "uL/min")
            self._set("volume", volume_ul, "uL")
            try:
                self._start()
            except BaseException:
                self._stop_quietly()
                raise
            self._rate_ul_min = float(rate_ul_min)

    def _start(self) -> None:
        """Send `start`. After a lost or garbled reply, ask the pump whether it started before
        sending `start` again (at most COMMAND_ATTEMPTS starts in all)."""
        for attempt in range(1, COMMAND_ATTEMPTS + 1):
            try:
                lines = self._exchange_once("start")
            except TransientInstrumentError as exc:
                self.link.discard_input()
                started = self._started_anyway()
                if not started and attempt == COMMAND_ATTEMPTS:
                    raise
                self.retries.add(self.name)
                log.debug("%s: no readable reply to 'start' (%s); the pump %s", self.name, exc,
                          "had started" if started else f"is idle, start try {attempt + 1} of {COMMAND_ATTEMPTS}")
                if started:
                    break
                continue
            self._check_started(lines)
            break
        self._run_open, self._counted_ul = True, 0.0  # the pump's run counter restarted with this run

    def _started_anyway(self) -> bool:
        """Whether a `start` whose reply was lost took effect.

        Stalled raises PumpStalled; stopped or paused means the start was lost. Running means it
        started, unless the pump was still running the previous run: a start restarts the run
        counter, so a counter below what was already counted means the new run is going. When the
        start was lost, what the previous run moved meanwhile is counted before the next try.
        (A run so short that it ended before this check would be started again; runs last minutes.)
        """
        code = self._status_code()
        if code == 4:
            raise PumpStalled(self.name, "the pump reports a stall after 'start': check the syringe, the plunger "
                              "clamp and the line for a blockage")
        if not self._run_open:  # no run of ours before: running can only be this start
            return code in (1, 3)
        run_ul = self._value("dispensed volume")
        if code in (1, 3) and run_ul < self._counted_ul:
            return True
        self._used_ul += max(run_ul - self._counted_ul, 0.0)
        self._counted_ul = run_ul
        return False

    def _check_started(self, lines: list[str]) -> None:
        """Raise unless the reply to `start` says the pump runs (or waits for its delay)."""
        reply = " ".join(lines)
        if any(reply.lower().startswith(ok) for ok in STARTED_REPLIES):
            return
        code = self._status_code()
        if code == 4:
            raise PumpStalled(self.name, f"the pump refused to start and reports a stall ({reply!r}): "
                              "check the syringe, the plunger clamp and the line for a blockage")
        raise CommandRejected(self.name, f"the pump did not start: it answered {reply!r} (status {code})")

    def stop(self) -> None:
        with self.link.lock:
            self._ask("stop")
            self._rate_ul_min = 0.0

    def pause(self) -> None:
        """Pause the run (`start` would resume it; `infuse` programs a new one)."""
        with self.link.lock:
            self._ask("pause")
            self._rate_ul_min = 0.0

    def status(self) -> PumpStatus:
        with self.link.lock:
            code = self._status_code()
            run_ul = max(self._value("dispensed volume") - self._counted_ul, 0.0) if self._run_open else 0.0
        dispensed = self._used_ul + run_ul
        running = code in (1, 3)
        return PumpStatus(
            running=running,
            rate_ul_min=self._rate_ul_min if running else 0.0,
            dispensed_ul=dispensed,
            remaining_ul=max(self._fill_ul - dispensed, 0.0),
            alarm="stalled (pump status 4)" if code == 4 else None,
        )

    # --- bookkeeping, limits, identity --------------------------------------------------------
    def _close_run(self) -> None:
        """Count the last run's dispensed volume before a new run restarts the pump's counter."""
        if self._run_open:
            run_ul = self._value("dispensed volume")
            self._used_ul += max(run_ul - self._counted_ul, 0.0)
            self._counted_ul = run_ul

    def set_fill(self, volume_ul: float | None = None) -> None:
        """Tell the driver the syringe was refilled (full by default). Call it with the pump stopped."""
        volume = self.syringe_volume_ul if volume_ul is None else float(volume_ul)
        if not (math.isfinite(volume) and 0 <= volume <= self.syringe_volume_ul):
            raise SafetyLimitExceeded(self.name, f"fill {volume:g} uL must be in [0, {self.syringe_volume_ul:g}] uL")
        self._fill_ul, self._used_ul, self._run_open, self._counted_ul = volume, 0.0, False, 0.0

    def read_limits(self) -> PumpLimits:
        """The pump's own volume and rate limits for this syringe (sets units and diameter first)."""
        with self.link.lock:
            self._value(f"set units {UNITS_UL_MIN}")
            self._set("diameter", self.syringe_inner_diameter_mm, "mm", decimals=3)
            text = "read limit parameter"
            return self._retried(text, lambda: self._limits(self._exchange_once(text)))

    def _limits(self, lines: list[str]) -> PumpLimits:
        """Parse the answer to `read limit parameter`: max volume, min volume, max rate, min rate."""
        values = [float(v) for v in " ".join(lines).replace("=", " ").split() if _is_number(v)]
        if len(values) < 4:
            raise GarbledReply(self.name, f"'read limit parameter' answered {lines!r}, not four numbers")
        max_volume, min_volume, max_rate, min_rate = values[-4:]
        return PumpLimits(max_volume, min_volume, max_rate, min_rate)

    def identify(self) -> str:
        """One line for `sdfl doctor`: where the pump is and what it reports (harmless queries only)."""
        with self.link.lock:
            limits = " ".join(self._ask("read limit parameter"))
            code = self._status_code()
        where = self.link.port + ("" if self.channel is None else f" channel {self.channel}")
        return (f"Chemyx pump {self.name!r} on {where}: status {code} ({STATUS_CODES[code]}), "
                f"limits (max volume, min volume, max rate, min rate) = {limits}")

    def close(self) -> None:
        """Close the port if this driver opened it (a shared link stays open for the other channels)."""
        if self._owns_link:
            self.link.close()

    def __enter__(self) -> ChemyxPump:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _stop_quietly(self) -> None:
        """Best-effort stop after a failed start; an error here must not hide the first one."""
        try:
            self._ask("stop")
        except Exception as exc:  # noqa: BLE001 - the first error is the one that matters
            log.warning("%s: stop after a failed start did not go through either: %s", self.name, exc)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
