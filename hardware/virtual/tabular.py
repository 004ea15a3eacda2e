"""Chemistry from data: a chemistry plug-in built from a table of conditions and optical outcomes.

Give it a CSV or Parquet table (published numbers or your own experiments) and say which column
is which reactor-state quantity; it fits one Gaussian-process surrogate per optical output and
renders the result as an `OpticalOutcome`, so the virtual lab becomes a twin of that data:

    [chemistry]
    model = "hardware.virtual.tabular:TableChemistry"
    options = { table = "data/tables/inp-zns-shell-temperature.csv",
                inputs = { shell_temperature_c = "zone:shell:temperature_c" } }

Choices, and why:
- Inputs. Each entry of `inputs` maps a table column to a state quantity: "temperature_c",
  "reaction_time_s", "precursor_flow_ul_min", "species:<name>:mM", "species:<name>:fraction"
  (the unit builds `required_species`, so the platform check finds a missing stock) or
  "zone:<name>:temperature_c" / "zone:<name>:time_s". A state without zones counts as one zone
  named "reactor" (temperature_c and reaction_time_s), as chemistry.py describes.
- Outputs. `outputs` maps a role to a column; roles are peak_nm, fwhm_nm, qy (0-1; required) and,
  optionally, absorbance_per_cm (at the PL excitation) and the pair
  abs_peak_nm + abs_peak_per_cm (an excitonic absorption band). Columns named like the roles
  are used by default; absorbance_per_cm only if the table has it.
- Surrogate. Inputs are scaled to 0..1 over the table's range. Each output gets a scikit-learn
  GaussianProcessRegressor: constant x anisotropic Matern(nu=2.5) + WhiteKernel, normalize_y.
  Positive outputs (qy, fwhm, absorbances) are fitted as log(y + floor), so the twin never gives
  a negative or NaN value and noise on them is relative; peaks are fitted as they are. Length
  scales are kept above the table's own spacing (median gap between the distinct values of a
  column, at least `min_length_scale`): a table of four temperatures cannot show wiggles finer
  than its steps, and without this floor a GP on a few points collapses to spikes at the data.
  With more than `max_fit_rows` rows the kernel is tuned on a random subset and then conditioned
  on every row. Fits run on one BLAS thread (the matrices are small; on a busy 2-core machine two
  threads made them ten times slower) and are cached by table content and options, so a lab
  rebuilt many times fits once.
- Outside the table. `outside="clamp"` (default): the GP may carry its trend a little past the
  table (`margin`, 10 % of each input's range, so a condition just beside the last row is not cut
  off), and beyond that every input is clamped: the twin answers the nearest edge of what was
  measured. `outside="extrapolate"`: the GP is asked as it is and drifts back to the table mean
  over about one length scale. Either way QY is kept in 0..1, widths and absorbances positive. Below the table's lowest concentration of a
  molar species the absorbance (the amount of product) falls in proportion, to zero at zero:
  a droplet of pure solvent (a flush, the absorbance reference) holds no product. A table with no
  molar-species input cannot tell solvent from precursor.
- Noise. Data scatter; the twin shows it as a fixed random field over the inputs (random Fourier
  features of a squared-exponential GP prior, seeded, length `noise_length_scale` in units of
  the table's range): the same condition always gives the same "truth", nearby conditions
  similar ones, and the virtual lab's own measurement noise stays on top. noise="fit" takes the
  scatter from the data: the pooled spread of replicate rows (identical inputs) when there are
  any, else the fitted WhiteKernel level. A float is a relative sd (qy, widths, absorbances), and
  the peak's sd as that fraction of the median width; a dict gives one sd per role (relative, or
  nm for peaks). noise=0 or `truth(state)` gives the noiseless surrogate mean.
- Rendering. One Gaussian emission band at the peak with the width, its height QY / (1.0645 x
  FWHM) per unit excitation absorbed (all absorbed light goes to this band, as in cs3cu2i5.py).
  Absorption is a continuum edge `stokes_shift_nm` below the peak (or at `edge_nm`), 6 nm wide,
  scaled so the absorbance at the excitation equals absorbance_per_cm; without that column it is
  the assumed `absorbance_per_cm` option (2.0 per cm: 0.2 over the 1 mm flow cell). The edge is
  kept at least 3 widths above the excitation so the excitation sits on the plateau. Below the
  edge the continuum is flat, so `excitation_nm` (300 nm, the virtual lab's default) matters only
  when the table gives an absorption band; set it for platforms that excite elsewhere.
- Paths. A relative `table` path is looked up from the current directory, then from the sdfl
  repository root (the platform loader passes no source file); absolute paths are used as given.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from sklearn.exceptions import ConvergenceWarning
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel
from threadpoolctl import threadpool_limits

from hardware.virtual.chemistry import Band, OpticalOutcome, ReactorState

REPO_ROOT = Path(__file__).resolve().parents[2]
EXCITATION_NM = 300.0
"""The virtual lab's PL excitation when the platform's light source gives no wavelength."""
GAUSS_AREA = 1.0645
"""Area of a unit-height Gaussian per nm of FWHM."""
EDGE_WIDTH_NM = 6.0
FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}

STATE_QUANTITIES = ("temperature_c", "reaction_time_s", "precursor_flow_ul_min")
INPUT_FORMS = ("'temperature_c', 'reaction_time_s', 'precursor_flow_ul_min', 'species:<name>:mM', "
               "'species:<name>:fraction', 'zone:<name>:temperature_c', 'zone:<name>:time_s'")


@dataclass(frozen=True)
class OutputRole:
    """How one optical output is fitted: on a log scale (positive outputs) or as it is."""

    name: str
    log: bool
    floor: float = 0.0
    """Added before the log, so zeros are allowed (qy, absorbance)."""
    low: float = -np.inf
    high: float = np.inf


ROLES = {
    "peak_nm": OutputRole("peak_nm", log=False, low=1.0),
    "fwhm_nm": OutputRole("fwhm_nm", log=True, low=1.0),
    "qy": OutputRole("qy", log=True, floor=1e-3, low=0.0, high=1.0),
    "absorbance_per_cm": OutputRole("absorbance_per_cm", log=True, floor=1e-3, low=0.0),
    "abs_peak_nm": OutputRole("abs_peak_nm", log=False, low=1.0),
    "abs_peak_per_cm": OutputRole("abs_peak_per_cm", log=True, floor=1e-3, low=0.0),
}
REQUIRED_ROLES = ("peak_nm", "fwhm_nm", "qy")


# --- inputs: table columns as reactor-state quantities -----------------------------------


@dataclass(frozen=True)
class StateInput:
    """One reactor-state quantity a table column stands for."""

    column: str
    kind: Literal["state", "species", "zone"]
    name: str
    """The quantity (state), species name, or zone name."""
    unit: str = ""
    """'mM' or 'fraction' (species), 'temperature_c' or 'time_s' (zones)."""

    def read(self, state: ReactorState) -> Any:
        if self.kind == "state":
            return getattr(state, self.name)
        if self.kind == "species":
            return state.species(self.name)
        zone = state.zones.get(self.name)
        if zone is None:
            if self.name == "reactor" and not state.zones:
                return state.temperature_c if self.unit == "temperature_c" else state.reaction_time_s
            raise ValueError(
                f"table column {self.column!r} is the {self.unit} of zone {self.name!r}, but the reactor "
                f"state has zones {sorted(state.zones) or 'none'}; name a zone of the platform's path"
            )
        return getattr(zone, self.unit)


def parse_input(column: str, spec: str, where: str = "chemistry table") -> StateInput:
    """A StateInput from its text form, e.g. 'species:Cu:mM' or 'zone:shell:temperature_c'."""
    text = spec.strip() if isinstance(spec, str) else ""
    parts = text.split(":")
    if len(parts) == 1 and text in STATE_QUANTITIES:
        return StateInput(column, "state", text)
    if len(parts) == 3 and parts[0] == "species" and parts[1] and parts[2] in ("mM", "fraction"):
        return StateInput(column, "species", parts[1], parts[2])
    if len(parts) == 3 and parts[0] == "zone" and parts[1] and parts[2] in ("temperature_c", "time_s"):
        return StateInput(column, "zone", parts[1], parts[2])
    raise ValueError(f"{where}: inputs[{column!r}] = {spec!r} is not a reactor-state quantity; use one of {INPUT_FORMS}")


# --- reading and checking the table -------------------------------------------------------


def resolve_table_path(table: str | os.PathLike) -> Path:
    """The table file: absolute as given; relative from the current directory, then the repo root."""
    path = Path(table).expanduser()
    candidates = [path] if path.is_absolute() else [Path.cwd() / path, REPO_ROOT / path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ValueError(
        f"chemistry table {str(table)!r} not found (looked for {', '.join(map(str, candidates))}); "
        "give an absolute path, or one relative to the current directory or the sdfl repository root"
    )


def read_table(table: str | os.PathLike) -> pd.DataFrame:
    """A CSV or Parquet table as a DataFrame."""
    path = resolve_table_path(table)
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise ValueError(f"chemistry table {path}: unknown format {path.suffix!r}; "
                         f"save it as one of {sorted(FORMATS)}")
    try:
        return pd.read_csv(path) if kind == "csv" else pd.read_parquet(path)
    except Exception as exc:  # a damaged file: say which
        raise ValueError(f"chemistry table {path}: cannot read it as {kind} ({exc})") from exc


def numeric_column(frame: pd.DataFrame, column: str, where: str) -> np.ndarray:
    """One column as finite floats, or an error naming the rows that are not."""
    raw = frame[column]
    values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=float)
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        shown = ", ".join(f"row {i + 1} ({raw.iloc[i]!r})" for i in bad[:5]) + (" ..." if bad.size > 5 else "")
        raise ValueError(f"{where}: column {column!r} has {bad.size} value(s) that are not finite numbers: {shown} "
                         "(rows counted from 1 under the header); fix or drop those rows")
    return values


def check_table(frame: pd.DataFrame, inputs: list[StateInput], outputs: dict[str, str], where: str) -> None:
    """Raise ValueError naming the file and column for anything the fit cannot use."""
    wanted = [i.column for i in inputs] + list(outputs.values())
    missing = [c for c in dict.fromkeys(wanted) if c not in frame.columns]
    if missing:
        raise ValueError(f"{where}: missing column(s) {missing}; the table has {list(frame.columns)}. "
                         "Rename them in the table or map them with the `inputs` / `outputs` options")
    if len(frame) < 2 * len(inputs):
        raise ValueError(f"{where}: {len(frame)} row(s) for {len(inputs)} input(s); the surrogate needs at least "
                         f"{2 * len(inputs)} (2 per input): add rows or use fewer inputs")
    for column in dict.fromkeys(wanted):
        numeric_column(frame, column, where)
    for item in inputs:
        if np.ptp(numeric_column(frame, item.column, where)) == 0:
            raise ValueError(f"{where}: input column {item.column!r} holds a single value, so the table says "
                             "nothing about it; drop it from `inputs`")
    qy = numeric_column(frame, outputs["qy"], where)
    if qy.min() < 0 or qy.max() > 1:
        raise ValueError(f"{where}: column {outputs['qy']!r} (QY) runs from {qy.min():g} to {qy.max():g}; "
                         "give QY as a fraction from 0 to 1 (divide percentages by 100)")
    for role, column in outputs.items():
        values = numeric_column(frame, column, where)
        if role in ("peak_nm", "fwhm_nm", "abs_peak_nm") and values.min() <= 0:
            raise ValueError(f"{where}: column {column!r} ({role}) must be positive, found {values.min():g}")
        if role in ("absorbance_per_cm", "abs_peak_per_cm") and values.min() < 0:
            raise ValueError(f"{where}: column {column!r} ({role}) must not be negative, found {values.min():g}")


def output_columns(frame: pd.DataFrame, outputs: dict[str, str] | None, where: str) -> dict[str, str]:
    """Role -> column, with defaults (columns named like the roles) filled in."""
    given = dict(outputs or {})
    unknown = sorted(set(given) - set(ROLES))
    if unknown:
        raise ValueError(f"{where}: outputs names unknown role(s) {unknown}; roles are {list(ROLES)}")
    chosen = {role: given.get(role, role) for role in REQUIRED_ROLES}
    for role in ("absorbance_per_cm", "abs_peak_nm", "abs_peak_per_cm"):
        if role in given or role in frame.columns:
            chosen[role] = given.get(role, role)
    if ("abs_peak_nm" in chosen) != ("abs_peak_per_cm" in chosen):
        raise ValueError(f"{where}: an absorption peak needs both abs_peak_nm and abs_peak_per_cm columns")
    return chosen


# --- the surrogate -------------------------------------------------------------------------


@dataclass
class OutputFit:
    """One fitted output: the GP on the transformed scale and its noise sd on that scale."""

    role: OutputRole
    column: str
    gp: GaussianProcessRegressor
    fitted_sd: float
    """Scatter of the data on the fitted scale (relative for log outputs, nm for peaks)."""
    noise_from: str

    def forward(self, y: np.ndarray) -> np.ndarray:
        return np.log(y + self.role.floor) if self.role.log else y

    def backward(self, z: np.ndarray) -> np.ndarray:
        y = np.exp(z) - self.role.floor if self.role.log else z
        return np.clip(y, self.role.low, self.role.high)


def length_scale_floor(x_scaled: np.ndarray, minimum: float) -> np.ndarray:
    """Per input, the shortest length scale the table can support: the median step between its values."""
    floors = []
    for column in x_scaled.T:
        steps = np.diff(np.unique(column))
        floors.append(max(minimum, float(np.median(steps)) if steps.size else 1.0))
    return np.array(floors)


def replicate_sd(x: np.ndarray, z: np.ndarray) -> float | None:
    """Pooled sd of rows with identical inputs, or None when there are too few replicates."""
    keys = pd.DataFrame(x).round(12).astype(str).agg("|".join, axis=1)
    groups = pd.Series(z).groupby(keys.to_numpy())
    dof = int((groups.size() - 1).sum())
    if dof < 2:
        return None
    squares = float(groups.apply(lambda g: float(((g - g.mean()) ** 2).sum())).sum())
    return float(np.sqrt(squares / dof))


def fit_output(x: np.ndarray, z: np.ndarray, floors: np.ndarray, restarts: int = 0,
               max_fit_rows: int = 600) -> GaussianProcessRegressor:
    """A GP (constant x anisotropic Matern 5/2 + white noise) on scaled inputs; the same data always
    gives the same fit (restarts and the tuning subset are drawn with a fixed seed)."""
    kernel = ConstantKernel(1.0, (1e-3, 1e4)) * Matern(
        length_scale=np.maximum(1.0, floors), length_scale_bounds=[(f, 1e3) for f in floors], nu=2.5,
    ) + WhiteKernel(1e-4, (1e-8, 1.0))
    rows = np.arange(len(z))
    if len(z) > max_fit_rows:
        rows = np.random.default_rng(0).choice(len(z), max_fit_rows, replace=False)
    # One BLAS thread: the matrices are small, and on a busy machine more threads made fits 10x slower.
    with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
        warnings.simplefilter("ignore", ConvergenceWarning)
        gp = GaussianProcessRegressor(kernel, normalize_y=True, n_restarts_optimizer=restarts, random_state=0)
        gp.fit(x[rows], z[rows])
        if len(rows) < len(z):
            gp = GaussianProcessRegressor(gp.kernel_, normalize_y=True, optimizer=None).fit(x, z)
    return gp


def white_noise_sd(gp: GaussianProcessRegressor) -> float:
    """The fitted WhiteKernel level as an sd on the output's own (transformed) scale."""
    level = gp.kernel_.k2.noise_level
    return float(np.sqrt(level) * np.atleast_1d(gp._y_train_std)[0])


# --- the scatter field ---------------------------------------------------------------------


@dataclass(frozen=True)
class SmoothField:
    """A fixed random function of the scaled inputs, mean 0, sd 1, smooth over `length` (random
    Fourier features of a squared-exponential GP prior)."""

    frequencies: np.ndarray
    phases: np.ndarray
    weights: np.ndarray

    @classmethod
    def draw(cls, dimensions: int, length: float, seed: int, stream: int, features: int = 512) -> SmoothField:
        rng = np.random.default_rng([seed, stream])
        return cls(rng.standard_normal((features, dimensions)) / length,
                   rng.uniform(0.0, 2.0 * np.pi, features), rng.standard_normal(features))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.sqrt(2.0 / self.weights.size) * np.cos(x @ self.frequencies.T + self.phases) @ self.weights


# --- the plug-in -----------------------------------------------------------------------------

_FIT_CACHE: OrderedDict[str, dict[str, OutputFit]] = OrderedDict()
_FIT_CACHE_SIZE = 16


class TableChemistry:
    """A chemistry model interpolated from a table of conditions -> optical outcomes, with scatter.

    table: CSV or Parquet path (see the module notes for relative paths), or a DataFrame.
    inputs: table column -> state quantity ("temperature_c", "species:Cu:mM", "zone:shell:time_s" ...).
    outputs: role -> table column (roles: peak_nm, fwhm_nm, qy, absorbance_per_cm, abs_peak_nm,
        abs_peak_per_cm); columns named like the roles need no entry.
    noise: "fit" (from the data), a relative sd, or {role: sd}; 0 for the bare surrogate mean.
    seed: draws the scatter field (the fit itself does not depend on it).
    outside, margin: "clamp" inputs beyond `margin` x range past the table, or "extrapolate".
    noise_length_scale: how far apart (share of each input's range) two conditions scatter independently.
    min_length_scale, restarts, max_fit_rows: GP fitting (shortest length scale, optimizer restarts,
        rows used to tune the kernel).
    absorbance_per_cm: assumed absorbance at the excitation when the table has none.
    edge_nm, stokes_shift_nm: where the absorption edge sits (fixed, or this far below the PL peak).
    abs_peak_fwhm_nm: width of the absorption band when the table gives abs_peak_nm.
    excitation_nm: the PL excitation wavelength (300 nm in the virtual lab).
    """

    def __init__(
        self,
        table: str | os.PathLike | pd.DataFrame,
        inputs: dict[str, str],
        outputs: dict[str, str] | None = None,
        noise: float | str | dict[str, float] = "fit",
        seed: int = 0,
        outside: Literal["clamp", "extrapolate"] = "clamp",
        margin: float = 0.1,
        noise_length_scale: float = 0.15,
        min_length_scale: float = 0.1,
        restarts: int = 0,
        max_fit_rows: int = 600,
        absorbance_per_cm: float = 2.0,
        edge_nm: float | None = None,
        stokes_shift_nm: float = 30.0,
        abs_peak_fwhm_nm: float = 25.0,
        excitation_nm: float = EXCITATION_NM,
    ):
        if isinstance(table, pd.DataFrame):
            frame, self.source = table.reset_index(drop=True), "chemistry table <DataFrame>"
        else:
            path = resolve_table_path(table)
            frame, self.source = read_table(path), f"chemistry table {path}"
        where = self.source
        if not isinstance(inputs, dict) or not inputs:
            raise ValueError(f"{where}: `inputs` must map at least one table column to a state quantity ({INPUT_FORMS})")
        self.inputs = [parse_input(column, spec, where) for column, spec in inputs.items()]
        seen: dict[tuple, str] = {}
        for item in self.inputs:
            key = (item.kind, item.name, item.unit)
            if key in seen:
                raise ValueError(f"{where}: columns {seen[key]!r} and {item.column!r} map to the same quantity")
            seen[key] = item.column
        if outside not in ("clamp", "extrapolate"):
            raise ValueError(f"outside must be 'clamp' or 'extrapolate', not {outside!r}")
        if margin < 0:
            raise ValueError(f"margin must be >= 0 (a share of each input's range), got {margin!r}")
        if noise_length_scale <= 0 or min_length_scale <= 0:
            raise ValueError("noise_length_scale and min_length_scale must be positive (units of the table's range)")
        self.outputs = output_columns(frame, outputs, where)
        check_table(frame, self.inputs, self.outputs, where)

        self.required_species = {i.name: i.unit for i in self.inputs if i.kind == "species"}
        x = np.column_stack([numeric_column(frame, i.column, where) for i in self.inputs])
        self.low, self.high = x.min(axis=0), x.max(axis=0)
        self.table = frame
        self.outside = outside
        self.margin = float(margin)
        self.seed = int(seed)
        self.assumed_absorbance_per_cm = float(absorbance_per_cm)
        self.edge_nm = edge_nm
        self.stokes_shift_nm = float(stokes_shift_nm)
        self.abs_peak_fwhm_nm = float(abs_peak_fwhm_nm)
        self.excitation_nm = float(excitation_nm)
        fit_options = (min_length_scale, restarts, max_fit_rows)
        self.fits = self._fit(frame, x, fit_options)
        self.noise_sd = self._noise_levels(noise, frame)
        self.fields = {role: SmoothField.draw(len(self.inputs), noise_length_scale, self.seed, i)
                       for i, role in enumerate(ROLES) if role in self.fits}

    # --- fitting -------------------------------------------------------------------------
    def _fit(self, frame: pd.DataFrame, x: np.ndarray, options: tuple) -> dict[str, OutputFit]:
        key = _cache_key(frame, self.inputs, self.outputs, options)
        if key in _FIT_CACHE:
            _FIT_CACHE.move_to_end(key)
            return _FIT_CACHE[key]
        min_length, restarts, max_rows = options
        xs = self.scale(x)
        floors = length_scale_floor(xs, min_length)
        fits = {}
        for role_name, column in self.outputs.items():
            role = ROLES[role_name]
            y = numeric_column(frame, column, self.source)
            z = np.log(y + role.floor) if role.log else y
            gp = fit_output(xs, z, floors, restarts, max_rows)
            replicate = replicate_sd(xs, z)
            sd, origin = (replicate, "replicates") if replicate is not None else (white_noise_sd(gp), "white kernel")
            fits[role_name] = OutputFit(role, column, gp, sd, origin)
        _FIT_CACHE[key] = fits
        while len(_FIT_CACHE) > _FIT_CACHE_SIZE:
            _FIT_CACHE.popitem(last=False)
        return fits

    def _noise_levels(self, noise: float | str | dict[str, float], frame: pd.DataFrame) -> dict[str, float]:
        """Noise sd of each output on its fitted scale (relative for log outputs, nm for peaks)."""
        if isinstance(noise, str):
            if noise != "fit":
                raise ValueError(f"noise must be 'fit', a relative sd or a dict of sds per role, not {noise!r}")
            return {role: fit.fitted_sd for role, fit in self.fits.items()}
        if isinstance(noise, dict):
            unknown = sorted(set(noise) - set(self.fits))
            if unknown:
                raise ValueError(f"noise names role(s) {unknown} the table does not fit; roles: {sorted(self.fits)}")
            return {role: float(noise.get(role, 0.0)) for role in self.fits}
        level = float(noise)
        if not np.isfinite(level) or level < 0:
            raise ValueError(f"noise must be >= 0, got {noise!r}")
        width = float(np.median(numeric_column(frame, self.outputs["fwhm_nm"], self.source)))
        return {role: level * (width if not fit.role.log else 1.0) for role, fit in self.fits.items()}

    # --- evaluating ------------------------------------------------------------------------
    def scale(self, x: np.ndarray) -> np.ndarray:
        return (x - self.low) / (self.high - self.low)

    def state_inputs(self, state: ReactorState) -> tuple[np.ndarray, tuple[int, ...]]:
        """The table's inputs read from a state: (rows x inputs in table units, the state's shape)."""
        columns = np.broadcast_arrays(*[np.asarray(i.read(state), dtype=float) for i in self.inputs])
        shape = columns[0].shape
        x = np.column_stack([c.reshape(-1) for c in columns])
        if not np.isfinite(x).all():
            bad = [i.column for i, c in zip(self.inputs, columns) if not np.isfinite(c).all()]
            raise ValueError(f"{self.source}: the reactor state gives non-finite values for {bad}")
        return x, shape

    def _predict(self, state: ReactorState, noisy: bool) -> dict[str, np.ndarray]:
        x, shape = self.state_inputs(state)
        xs = self.scale(x)
        if self.outside == "clamp":
            xs = np.clip(xs, -self.margin, 1.0 + self.margin)
        values = {}
        for role, fit in self.fits.items():
            z = fit.gp.predict(xs)
            if noisy and self.noise_sd[role] > 0:
                z = z + self.noise_sd[role] * self.fields[role](xs)
            values[role] = fit.backward(z).reshape(shape)
        values["amount"] = self._amount(x).reshape(shape)
        return values

    def _amount(self, x: np.ndarray) -> np.ndarray:
        """Share of the product the table would give: falls to 0 below the lowest molar concentration."""
        factor = np.ones(len(x))
        for j, item in enumerate(self.inputs):
            if item.kind == "species" and item.unit == "mM" and self.low[j] > 0:
                factor *= np.clip(x[:, j] / self.low[j], 0.0, 1.0)
        return factor

    def truth(self, state: ReactorState) -> dict[str, np.ndarray]:
        """The noiseless surrogate mean of each output role (and `amount`, 0..1)."""
        return self._predict(state, noisy=False)

    def properties(self, state: ReactorState) -> dict[str, np.ndarray]:
        """What the twin renders: the surrogate mean plus the fixed scatter field."""
        return self._predict(state, noisy=True)

    def outcome(self, state: ReactorState) -> OpticalOutcome:
        v = self.properties(state)
        peak, fwhm, qy, amount = v["peak_nm"], v["fwhm_nm"], v["qy"], v["amount"]
        target = v.get("absorbance_per_cm", self.assumed_absorbance_per_cm + 0 * peak)
        absorption = []
        at_excitation = 0.0
        if "abs_peak_nm" in v:
            band = Band(v["abs_peak_nm"], self.abs_peak_fwhm_nm + 0 * peak, v["abs_peak_per_cm"] * amount)
            absorption.append(band)
            at_excitation = band_at(self.excitation_nm, band)
        edge = (peak - self.stokes_shift_nm) if self.edge_nm is None else self.edge_nm + 0 * peak
        edge = np.maximum(edge, self.excitation_nm + 3 * EDGE_WIDTH_NM)
        plateau = 1.0 / (1.0 + np.exp((self.excitation_nm - edge) / EDGE_WIDTH_NM))
        edge_height = np.maximum(target * amount - at_excitation, 0.0) / plateau
        return OpticalOutcome(
            emission=[Band(peak, fwhm, qy / (GAUSS_AREA * fwhm))],
            absorption=absorption,
            edge_nm=edge,
            edge_height=edge_height,
            edge_width_nm=EDGE_WIDTH_NM,
            extras={"qy": qy, "plqy": qy, "peak_nm": peak, "fwhm_nm": fwhm,
                    "absorbance_per_cm": target * amount, "amount": amount},
        )

    def report(self) -> pd.DataFrame:
        """One row per output: its column, fitted scale, noise sd and the GP's length scales per input."""
        rows = []
        for role, fit in self.fits.items():
            lengths = np.atleast_1d(fit.gp.kernel_.k1.k2.length_scale)
            rows.append({"role": role, "column": fit.column, "scale": "log" if fit.role.log else "linear",
                         "fitted_sd": fit.fitted_sd, "noise_from": fit.noise_from, "noise_sd": self.noise_sd[role],
                         **{f"length_{i.column}": float(s) for i, s in zip(self.inputs, lengths)}})
        return pd.DataFrame(rows)


def band_at(wavelength_nm: float, band: Band) -> np.ndarray:
    """A band's value at one wavelength (Gaussian in photon energy, as optics.render_bands draws it)."""
    center, fwhm = np.asarray(band.center_nm, dtype=float), np.asarray(band.fwhm_nm, dtype=float)
    sigma_e = fwhm / center**2 / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    return band.height * np.exp(-0.5 * ((1.0 / wavelength_nm - 1.0 / center) / sigma_e) ** 2)


def _cache_key(frame: pd.DataFrame, inputs: list[StateInput], outputs: dict[str, str], options: tuple) -> str:
    used = [i.column for i in inputs] + list(outputs.values())
    digest = hashlib.sha256(pd.util.hash_pandas_object(frame[list(dict.fromkeys(used))], index=False).to_numpy())
    digest.update(repr((inputs, sorted(outputs.items()), options)).encode())
    return digest.hexdigest()
