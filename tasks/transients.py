"""Transients: how long a signal takes to settle after a change of condition.

A step is fitted with the response of N stirred tanks in series, the standard model of a
residence-time distribution: y(t) = y0 + (y1 - y0) * F(t - t_switch; N, mean delay). The fit
uses every point of the transition, so 1 % noise does not decide the answer the way a single
noisy crossing would. The settling time is when the fitted curve comes within `tolerance` of
its final value; it is reported as a multiple of tau.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import optimize, special


@dataclass
class Settling:
    feature: str
    y_before: float
    y_final: float
    change_pct: float
    """(y_final - y_before) / y_final, in %."""
    settle_s: float
    """Time after the switch when the fitted response is within tolerance of y_final."""
    settle_tau: float
    mean_delay_s: float
    tanks: float
    r2: float
    noise_pct: float
    """Scatter of the points around the fit, % of y_final."""
    resolved: bool
    """False when the step is smaller than twice the noise: its settling time means nothing."""

    def to_dict(self) -> dict:
        return asdict(self)


def tanks_response(t, y0, y1, delay, tanks):
    x = np.maximum(np.asarray(t, dtype=float), 0.0)
    return y0 + (y1 - y0) * special.gammainc(tanks, tanks * x / max(delay, 1e-9))


def settling_time(
    times_s: np.ndarray,
    values: np.ndarray,
    t_switch_s: float,
    tau_s: float,
    feature: str = "signal",
    tolerance: float = 0.01,
    y_before: float | None = None,
) -> Settling:
    """Fit the step after `t_switch_s` and find when it is within `tolerance` of its final value.

    `times_s`/`values` should run from the switch to well past steady state (>= 2.5 tau).
    `y_before` is the level before the switch when it is known (the previous step's final
    value); otherwise it is fitted too. A step within `tolerance` of the final value, or smaller
    than twice the noise, settles at once (0 s); the second case is marked unresolved.
    """
    t = np.asarray(times_s, dtype=float) - t_switch_s
    y = np.asarray(values, dtype=float)
    keep = np.isfinite(y) & (t >= 0)
    t, y = t[keep], y[keep]
    if t.size < 8:
        raise ValueError(f"{feature}: need at least 8 points after the switch, got {t.size}")
    late = t >= t.max() - 0.5 * tau_s
    y1_guess = float(np.mean(y[late]))
    y0_guess = float(np.mean(y[: max(3, t.size // 50)])) if y_before is None else float(y_before)
    half = y0_guess + 0.5 * (y1_guess - y0_guess)
    crossing = int(np.argmax((y - half) * np.sign(y1_guess - y0_guess) >= 0))
    delay_guess = float(t[crossing]) if t[crossing] > 0 else tau_s
    scale = max(abs(y1_guess), abs(y0_guess), 1e-12)
    if y_before is None:
        model = tanks_response
        p0, lower, upper = [y0_guess, y1_guess, delay_guess, 50.0], [-np.inf, -np.inf, 0.0, 1.0], [np.inf, np.inf, 20 * tau_s, 5000.0]
        x_scale = [scale, scale, tau_s, 50.0]
    else:
        def model(tt, y1, delay, tanks):
            return tanks_response(tt, y0_guess, y1, delay, tanks)
        p0, lower, upper = [y1_guess, delay_guess, 50.0], [-np.inf, 0.0, 1.0], [np.inf, 20 * tau_s, 5000.0]
        x_scale = [scale, tau_s, 50.0]
    try:
        popt, _ = optimize.curve_fit(model, t, y, p0=p0, bounds=(lower, upper), x_scale=x_scale, max_nfev=4000)
    except (RuntimeError, ValueError):
        popt = np.array(p0)
    if y_before is None:
        y0, y1, delay, tanks = (float(v) for v in popt)
    else:
        y0 = y0_guess
        y1, delay, tanks = (float(v) for v in popt)
    residual = y - tanks_response(t, y0, y1, delay, tanks)
    total = float(np.sum((y - y.mean()) ** 2)) or 1e-300
    r2 = 1.0 - float(np.sum(residual**2)) / total
    noise = float(np.std(residual))
    resolved = abs(y1 - y0) > 2.0 * noise
    if abs(y1 - y0) <= tolerance * abs(y1) or not resolved:
        settle = 0.0
    else:
        # Share of the step that may remain: tolerance * |y1| / |y1 - y0|.
        remaining = tolerance * abs(y1) / abs(y1 - y0)
        settle = float(special.gammaincinv(tanks, 1.0 - remaining) * delay / tanks)
    return Settling(
        feature=feature, y_before=y0, y_final=y1, change_pct=100.0 * (y1 - y0) / y1 if y1 else float("inf"),
        settle_s=settle, settle_tau=settle / tau_s, mean_delay_s=delay, tanks=tanks, r2=r2,
        noise_pct=100.0 * noise / abs(y1) if y1 else float("nan"), resolved=resolved,
    )
