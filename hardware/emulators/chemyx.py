"""A Chemyx Fusion pump on a pseudo-terminal, moving the virtual lab's syringe pumps.

It speaks the command set `hardware.drivers.chemyx` documents (echo, answer, ">" prompt) and
turns `start`/`stop`/`pause` into calls on `VirtualPump`s, so a driver under test moves liquid in
the virtual lab. Time is the lab's simulated clock: nothing here sleeps. Wire faults are switched
on through `emulator.faults`; the lab's own faults (a stall, an empty syringe, injected timeouts
and garbled replies) show up on the wire as a real pump would show them. The lab's fault plan acts
on every command line: a lost command gets no answer and is not executed; a garbled one is
executed and answered with noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hardware.drivers.chemyx import format_number
from hardware.emulators.pty import PtyServer
from hardware.errors import GarbledReply, InstrumentTimeout, SdflError
from hardware.virtual.devices import VirtualPump

# (rate factor to uL/min, volume factor to uL) for `set units` 0..3
UNITS = {0: (1000.0, 1000.0), 1: (1000.0 / 60.0, 1000.0), 2: (1.0, 1.0), 3: (1.0 / 60.0, 1.0)}
MIN_VOLUME_UL = 1.0
"""Smallest volume `read limit parameter` reports (an assumption; the real value depends on the syringe)."""
DIAMETER_RANGE_MM = (0.103, 50.0)
GARBAGE = b"\x8f?r\xfe\x00\x13\r\n>"
HELP = (
    "help", "start", "stop", "pause", "set units [0-3]", "set diameter [x.x]", "set rate [x.x]",
    "set volume [x.x]", "read limit parameter", "dispensed volume", "elapsed time", "pump status",
)


@dataclass
class ChemyxFaults:
    """Wire faults of the emulated pump. Counters go down by one per command they spoil."""

    silent_next: int = 0
    """The next N commands are lost: no echo, no answer, not executed."""
    garble_next: int = 0
    """The next N commands are executed but their reply arrives as noise."""
    invalid_next: int = 0
    """The next N commands are answered "Invalid Command!" and not executed."""
    clamp_rates: bool = False
    """`set rate` takes 10 % less than asked (as if the request were above a limit) and says so."""
    stall: bool = False
    """The motor is stalled: `pump status` answers 4, `start` is refused, a running pump stops."""
    match: str = ""
    """When set, the counters above only spoil commands containing this text (e.g. "start")."""


@dataclass
class Channel:
    """One syringe channel: its settings in the pump's current units, and its run."""

    pump: VirtualPump
    units: int = 2
    diameter_mm: float = 28.6
    rate: float = 0.0
    volume: float = 0.0
    state: int = 0  # 0 stopped, 1 running, 2 paused (4 stalled is derived)
    run_base_ul: float = 0.0  # the pump's dispensed volume when this run started
    run_volume_ul: float = 0.0
    run_started_s: float = 0.0

    def rate_ul_min(self) -> float:
        return self.rate * UNITS[self.units][0]

    def volume_ul(self) -> float:
        return self.volume * UNITS[self.units][1]


class ChemyxEmulator(PtyServer):
    """A one- or multi-channel Chemyx pump. Give one VirtualPump, or a list (channels 1, 2, ...)."""

    def __init__(self, pumps: VirtualPump | Sequence[VirtualPump], *, faults: ChemyxFaults | None = None):
        pumps = [pumps] if isinstance(pumps, VirtualPump) else list(pumps)
        if not pumps:
            raise ValueError("a Chemyx emulator needs at least one VirtualPump")
        self.channels = {i + 1: Channel(p, diameter_mm=p.config.syringe_inner_diameter) for i, p in enumerate(pumps)}
        self.faults = faults or ChemyxFaults()
        self.lab = pumps[0]._lab  # the pumps' lab: its clock, and sync() before reading volumes
        self.commands: list[str] = []
        """Every command line received, in order."""
        super().__init__(name="chemyx-emulator")

    # --- wire level ------------------------------------------------------------------------------
    def handle_line(self, line: bytes) -> bytes | None:
        text = line.decode("ascii", errors="replace").strip()
        self.commands.append(text)
        f = self.faults
        spoil = not f.match or f.match in text
        if spoil and f.silent_next > 0:
            f.silent_next -= 1
            return None
        if spoil and f.invalid_next > 0:
            f.invalid_next -= 1
            return self._frame(text, ["Invalid Command!"])
        try:
            with self.lab.faults.command(self.name):  # one fault draw for the whole command
                answer = self.execute(text)
        except InstrumentTimeout:  # the lab lost this command: say nothing
            return None
        except GarbledReply:  # the pump did it; its answer is noise
            return GARBAGE
        if spoil and f.garble_next > 0:
            f.garble_next -= 1
            return GARBAGE
        return self._frame(text, answer)

    @staticmethod
    def _frame(echo: str, lines: list[str]) -> bytes:
        return ("".join(f"{ln}\r\n" for ln in [echo, *lines]) + ">").encode("ascii", errors="replace")

    # --- the command set -----------------------------------------------------------------------
    def execute(self, text: str) -> list[str]:
        """Run one command (without framing); return the answer lines."""
        words = text.split()
        targets = list(self.channels.values())
        if words and words[0].isdigit():
            number = int(words.pop(0))
            if number not in self.channels:
                return ["Invalid Command!"]
            targets = [self.channels[number]]
        command = " ".join(words)
        first = targets[0]
        for ch in targets:  # a stalled motor stops whatever it was doing
            if self.faults.stall and ch.state == 1:
                ch.pump.stop()
                ch.state = 0
        motion = {"start": self._start_run, "stop": self._stop_run, "pause": self._pause_run}
        if command in motion:  # without a channel prefix these move every channel
            return [motion[command](ch) for ch in targets][-1:]
        if words[:1] == ["set"] and len(words) == 3:
            return [self._set(first, words[1], words[2])]
        if command == "pump status":
            return [f"pump status = {self._status_code(first)}"]
        if command == "dispensed volume":
            total_ul = first.pump.status().dispensed_ul  # syncs the lab
            run_ul = max(total_ul - first.run_base_ul, 0.0) if first.run_volume_ul else 0.0
            return [f"dispensed volume = {format_number(run_ul / UNITS[first.units][1])}"]
        if command == "elapsed time":
            minutes = (self.lab.clock.now() - first.run_started_s) / 60.0 if first.state else 0.0
            return [f"elapsed time = {format_number(minutes)}"]
        if command == "read limit parameter":  # max volume, min volume, max rate, min rate
            rate_f, vol_f = UNITS[first.units]
            p = first.pump
            values = (p.syringe_volume_ul / vol_f, MIN_VOLUME_UL / vol_f, p.max_rate_ul_min / rate_f,
                      p.min_rate_ul_min / rate_f)
            return [" ".join(format_number(v) for v in values)]
        if command == "help":
            return list(HELP)
        return ["Invalid Command!"]

    def _set(self, ch: Channel, what: str, value_text: str) -> str:
        try:
            value = float(value_text)
        except ValueError:
            return "Invalid Command!"
        if what == "units":
            if value not in UNITS:
                return "Invalid Command!"
            ch.units = int(value)
            return f"units = {ch.units}"
        if what == "diameter":
            ch.diameter_mm = min(max(value, DIAMETER_RANGE_MM[0]), DIAMETER_RANGE_MM[1])
            return f"diameter = {format_number(ch.diameter_mm, 3)}"
        if what == "rate":
            rate_f = UNITS[ch.units][0]
            lo, hi = ch.pump.min_rate_ul_min / rate_f, ch.pump.max_rate_ul_min / rate_f
            took = min(max(value, lo), hi)
            if self.faults.clamp_rates:
                took = value * 0.9
            ch.rate = float(format_number(took))
            return f"rate = {format_number(ch.rate)}"
        if what == "volume":
            limit = ch.pump.syringe_volume_ul / UNITS[ch.units][1]
            ch.volume = float(format_number(max(min(value, limit), -limit)))
            if ch.state == 2:  # new settings end a paused run
                ch.state = 0
            return f"volume = {format_number(ch.volume)}"
        return "Invalid Command!"

    def _start_run(self, ch: Channel) -> str:
        if self._status_code(ch) == 4:
            return "Pump stalled!"
        resume = ch.state == 2
        volume_ul = ch.run_volume_ul - self._run_dispensed_ul(ch) if resume else ch.volume_ul()
        try:
            ch.pump.infuse(ch.rate_ul_min(), volume_ul)
        except (InstrumentTimeout, GarbledReply):
            raise
        except SdflError as exc:  # the pump refuses (limits, empty syringe, alarm): an error line
            return f"Pump error: {exc}"
        if not resume:  # infuse() synced the lab, so this is the volume at the start
            ch.run_base_ul, ch.run_volume_ul = ch.pump.dispensed_ul(), volume_ul
            ch.run_started_s = self.lab.clock.now()
        ch.state = 1
        return "Pump start running..."

    def _stop_run(self, ch: Channel) -> str:
        ch.pump.stop()
        ch.state = 0
        return "Pump stop!"

    def _pause_run(self, ch: Channel) -> str:
        if self._status_code(ch) == 1:
            ch.pump.stop()
            ch.state = 2
        return "Pump pause!"

    # --- state -----------------------------------------------------------------------------------
    def _run_dispensed_ul(self, ch: Channel) -> float:
        self.lab.sync()  # apply automatic stops first, or the count would run past the programmed volume
        return max(ch.pump.dispensed_ul() - ch.run_base_ul, 0.0) if ch.run_volume_ul else 0.0

    def _status_code(self, ch: Channel) -> int:
        status = ch.pump.status()  # syncs the lab: automatic stops, stalls, empty syringes
        if self.faults.stall or status.alarm:
            return 4
        if ch.state == 1 and not status.running:
            ch.state = 0  # the programmed volume was delivered
        return ch.state
