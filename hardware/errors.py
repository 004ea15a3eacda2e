"""Named errors for everything that can go wrong between a condition and a spectrum.

Each error says what went wrong and how to fix it. Errors are split by what the caller
should do: `TransientInstrumentError` is worth a retry, `FatalInstrumentError` means the
rig must be put in its safe state, and `SdflInputError` means the input was wrong.
"""

from __future__ import annotations

from enum import StrEnum


class SdflError(Exception):
    """Base class of every sdfl error."""


def did_you_mean(name: object, choices) -> str:
    """" (did you mean 'FWHM_nm'?)" when `name` is close to one of `choices`, else ""."""
    import difflib

    if not isinstance(name, str):
        return ""
    options = [str(c) for c in choices]
    folded = {c.lower(): c for c in options}
    close = difflib.get_close_matches(name.lower(), list(folded), n=1, cutoff=0.6)
    if not close:  # a prefix ("FWHM" for "FWHM_nm") is as good a hint as a near spelling
        close = [c for c in folded if c.startswith(name.lower()) and len(name) >= 2][:1]
    return f" (did you mean {folded[close[0]]!r}?)" if close and folded[close[0]] != name else ""


# --- bad input -------------------------------------------------------------------------


class SdflInputError(SdflError, ValueError):
    """The input (a condition, a config file, a spectrum) is wrong; nothing was run."""


class PlatformConfigError(SdflInputError):
    """A platform config file is missing, unreadable or invalid.

    The message names the file, the field and what is allowed.
    """


class InvalidCondition(SdflInputError):
    """A condition names an unknown parameter, misses one, or is outside the bounds."""


class InfeasibleCondition(SdflInputError):
    """A condition is inside the bounds but breaks a formulation rule.

    `rule` names the rule (for example ``min_total_flow``) so callers can count or
    filter rejections without parsing the message.
    """

    def __init__(self, rule: str, message: str):
        super().__init__(f"[rule {rule}] {message}")
        self.rule = rule
        self._parts = (rule, message)

    def __reduce__(self):
        """Picklable with its two parts (errors cross process pools and Prefect results)."""
        return type(self), self._parts


class InvalidSpectrum(SdflInputError):
    """A spectrum holds NaN or infinite values, or has the wrong shape."""


class SaturatedSpectrum(InvalidSpectrum):
    """A spectrum reached the detector's full scale, so its peak is clipped."""


# --- instrument failures ---------------------------------------------------------------


class InstrumentError(SdflError):
    """An instrument did not do what it was asked."""

    def __init__(self, instrument: str, message: str):
        super().__init__(f"{instrument}: {message}")
        self.instrument = instrument
        self._parts = (instrument, message)

    def __reduce__(self):
        """Picklable with its two parts (errors cross process pools and Prefect results)."""
        return type(self), self._parts


class TransientInstrumentError(InstrumentError):
    """A failure that a retry of the same step usually cures (noise on the line)."""


class InstrumentTimeout(TransientInstrumentError):
    """The instrument did not answer in time."""


class GarbledReply(TransientInstrumentError):
    """The instrument answered with bytes that do not parse."""


class FatalInstrumentError(InstrumentError):
    """A failure that needs a person: the rig goes to its safe state and the run stops."""


class InstrumentDisconnected(FatalInstrumentError):
    """The instrument is gone (unplugged, powered off, USB reset)."""


class PumpStalled(FatalInstrumentError):
    """A syringe pump stopped moving while it should be infusing."""


class ClogDetected(FatalInstrumentError):
    """Line pressure rose past its limit: a channel is blocked."""


class SyringeEmpty(FatalInstrumentError):
    """A syringe holds less liquid than the step needs, or ran dry."""


class HeaterNotStable(FatalInstrumentError):
    """The reactor did not settle at its set point within the allowed time."""


class SafetyLimitExceeded(FatalInstrumentError):
    """A request broke a hardware safety limit (temperature, rate, volume)."""


class CommandRejected(FatalInstrumentError):
    """The instrument refused a command (for example a Chemyx pump's "Invalid Command!")."""


class ValueClamped(SafetyLimitExceeded):
    """The instrument took a different value than the one asked for (it clamped it to a limit)."""


class WrongDevice(FatalInstrumentError):
    """The device on the port does not answer like the expected instrument (wrong port or baud rate)."""


class SpectrometerNotFound(FatalInstrumentError):
    """No spectrometer with the wanted serial number is attached (or it cannot be opened)."""


# --- the lab is not ready for the next experiment ----------------------------------------


class LabNotReady(SdflError):
    """The next experiment cannot start until a person acts; nothing was run.

    Not a bad condition (a campaign must not spend its budget on it) and not an instrument
    fault: the syringes need refilling, or the data root cannot take the record.
    """


class RefillNeeded(LabNotReady):
    """The syringes hold too little for the next run.

    `short` maps each short pump to (uL needed, uL held). `rule` is "syringe_volume", the
    formulation rule that found it.
    """

    rule = "syringe_volume"

    def __init__(self, message: str, short: dict[str, tuple[float, float]] | None = None):
        super().__init__(message)
        self.short = dict(short or {})
        self._parts = (message, self.short)

    def __reduce__(self):
        """Picklable with its two parts (errors cross process pools and Prefect results)."""
        return type(self), self._parts

    @property
    def pumps(self) -> list[str]:
        return sorted(self.short)


class DataRootUnusable(LabNotReady):
    """The data root cannot be written (read-only, full, or a file where a folder should be)."""


class ReactorLockUnusable(LabNotReady):
    """The reactor lock's folder or file cannot be used (not writable, not a folder)."""


class RecordNotSaved(SdflError):
    """The experiment ran but its record could not be written to the data root.

    `rescued_to` is where the record was kept instead (None if that failed too).
    """

    def __init__(self, message: str, rescued_to: str | None = None):
        super().__init__(message)
        self.rescued_to = rescued_to
        self._parts = (message, rescued_to)

    def __reduce__(self):
        return type(self), self._parts


class LedgerUnusable(SdflError):
    """The campaign's Optuna storage cannot be opened or read (damaged file, unreachable server)."""


class TemporaryServerDidNotStart(SdflError):
    """Prefect's temporary API server did not start, so no flow could run; nothing was run."""


# --- failure kinds: what a campaign does about a failed experiment, as data ------------------------


class FailureKind(StrEnum):
    """What kind of failure ended an experiment; it decides what the campaign does next, and it
    crosses process boundaries as this text (a reactor on another machine reports it)."""

    REFUSED = "refused"
    """The request was wrong for the platform (a condition outside its rules); nothing ran. The
    campaign records it against the condition and goes on."""
    NOT_READY = "not_ready"
    """A person must act before the next experiment (refill, data root); nothing ran, no budget spent."""
    INSTRUMENT = "instrument"
    """An instrument failed (the rig was made safe, the experiment recorded as failed)."""
    FATAL = "fatal"
    """An instrument failure that needs a person at the rig."""
    CRASHED = "crashed"
    """The process that ran the experiment died with it (the worker lost power, was killed)."""
    ERROR = "error"
    """Anything else: a record that could not be written, a bug."""


def failure_kind(exc: BaseException) -> FailureKind:
    """The kind of failure `exc` is."""
    for kind, errors in _KINDS:
        if isinstance(exc, errors):
            return kind
    return FailureKind.ERROR


_KINDS = ((FailureKind.REFUSED, SdflInputError), (FailureKind.NOT_READY, LabNotReady),
          (FailureKind.FATAL, FatalInstrumentError), (FailureKind.INSTRUMENT, InstrumentError))
