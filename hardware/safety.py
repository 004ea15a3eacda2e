"""Hardware safety limits that do not depend on the experiment: what the tubing and the carrier
phase can take. A platform file may set a lower limit, never a higher one.

Where each limit is enforced:
- temperature: here at config load (rules.max_temperature <= tubing and carrier limits), then in
  every heater driver (a set point above the limit is refused before a byte is sent);
- rate and volume: in every pump driver, from the syringe (min/max rate, syringe volume), and a
  pump is always programmed with a finite volume (the experiment's need times the volume margin);
- pressure: only where a pump or sensor reports it (the virtual lab's clog check); a Chemyx pump
  has no pressure sensor, so a blocked line shows up as a stall.
"""

from __future__ import annotations

TUBING_MAX_C: dict[str, float] = {
    # Continuous-service temperatures from fluoropolymer and PEEK datasheets (not melting points:
    # PFA melts at 310 C [P3:L90] but creeps and leaks at fittings well before).
    "PFA": 260.0,
    "PTFE": 260.0,
    "FEP": 200.0,
    "PEEK": 250.0,
    "ETFE": 150.0,
    "stainless": 400.0,
}

CARRIER_MAX_C: dict[str, float] = {
    # The perfluorinated-oil carrier of segmented flow: keep below 180 C [P2:L70].
    "PFO": 180.0,
}


def temperature_limit(tubing_material: str, carrier_phase: str) -> tuple[float, str]:
    """The highest safe reactor temperature for this tubing and carrier, and why.

    An empty material or carrier adds no limit; an unknown one is an error (say what it is, so
    its limit is not guessed).
    """
    limits = [(float("inf"), "no material limit")]
    for what, table, value in (("tubing_material", TUBING_MAX_C, tubing_material),
                               ("carrier_phase", CARRIER_MAX_C, carrier_phase)):
        if not value:
            continue
        if value not in table:
            raise ValueError(f"platform.{what} {value!r} has no known temperature limit; known: {sorted(table)} "
                             "(add it to hardware/safety.py with its datasheet limit)")
        limits.append((table[value], f"{value} {what.split('_')[0]} limit {table[value]:g} C"))
    return min(limits)
