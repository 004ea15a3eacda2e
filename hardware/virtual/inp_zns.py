"""A model of InP/ZnS core/shell quantum dots made in a cascade of stirred tanks (paper 001, Lignos 2021).

InP cores grow in the "core" tanks. Sulfur joins after them, and a ZnS shell grows in the "shell" tanks.
From the paper:
- the box: cores at 160-220 C for 5-30 min with P:In 2.1-4.9 [P1:L65]; shells at 240-320 C for 10-30 min
  [P1:L59, L78]; S:Zn 1-4, and 2 is the best [P1:L80];
- more iodide gives smaller cores and bluer light. Cl:I moves the PL peak over 526-578 nm, FWHM 46-58 nm
  [P1:L80]. All products emit at 520-610 nm with FWHM 46-64 nm and QY up to 42 % [P1:L19];
- the shell series (T_core 180 C, t_core 13 min, t_shell 15 min, S:Zn 2, Cl:I 6) [P1:L95-101]: from 270 to
  310 C the peak moves from 563 to 558 nm. At 270-280 C the shell is thin: QY below 25 % and a red trap tail.
  At 290 C QY is best (42 %) and the line narrowest (56 nm). At 310 C the thick shell is strained:
  ~22 % and ~60 nm;
- the best cores come from P:In 3.6 at 180 C [P1:L71-74]. The paper writes both "In-to-P" and "P-to-In".
  Aminophosphine is used in excess, so we read it as P:In = 3.6. Here it gives both the narrowest size
  spread (narrowest line) and the best QY.

Calibrated so that the RTD-averaged product matches the paper. The paper measured what left its cascade:
a mix of elements that stayed shorter and longer than the mean (in 3 core tanks the core time has a
coefficient of variation of 0.58, in 4 shell tanks 0.5). The virtual lab measures the same mix, so the
numbers above are matched by the spectra averaged over the tanks' residence-time distribution (the
platform test, tests/test_inp_zns_platform.py), not by `outcome` at the mean times. Two choices keep that
spread small, as it must be for a 56 nm line:
- the cores stop growing when the indium runs out (size focusing): growth is done within ~5 min at 180 C,
  then the cores only ripen slowly (~2 % in diameter from 10 to 30 min). Cl:I sets the size they stop at;
- the shell thickness is set by T_shell, hardly by the time: the zinc halides barely react below ~260 C, and
  the share that does (an equilibrium with their amine complexes) grows with temperature [P1:L99]. The
  reactive share deposits within minutes.
The average then adds ~1 nm to the line width, moves the peak <1 nm to the blue and lowers the QY by a few
per cent; `outcome` at the mean times gives a slightly narrower, brighter line (55 nm, QY 0.42 at 290 C).
Our assumptions, not the paper's: the sizing curve, the Stokes shift, the rate constants and the zinc
equilibrium, the growth and ripening laws of the cores, the trap band, band widths, absorbances per mM, and
the Cl:I range 0.2-20 (log scale). The sulfur stream dilutes every species alike, so molar ratios set the
dots; the indium level sets only the absorbance.
"""

from __future__ import annotations

import numpy as np

from hardware.virtual.chemistry import Band, OpticalOutcome, ReactorState

_R = 8.314  # J/mol/K
HC_EV_NM = 1239.84198
INP_GAP_EV = 1.344  # bulk InP at room temperature
ML_NM = 0.31  # thickness of one ZnS monolayer
NUCLEUS_NM = 2.2  # InP clusters the cores grow from
CL_TO_I_RANGE = (0.2, 20.0)
"""The Cl:I ratios the model is tuned for; it stays finite well beyond them."""


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _arrhenius(temperature_c, reference_c, activation_kj_mol):
    kelvin = np.asarray(temperature_c, dtype=float) + 273.15
    return np.exp(activation_kj_mol * 1e3 / _R * (1.0 / (reference_c + 273.15) - 1.0 / kelvin))


def _band_at(nm, center_nm, fwhm_nm):
    """Value at `nm` of a band of unit height, Gaussian in photon energy (as the optics draw it)."""
    sigma_ev = HC_EV_NM * fwhm_nm / center_nm**2 / 2.3548
    return np.exp(-0.5 * ((HC_EV_NM / nm - HC_EV_NM / center_nm) / sigma_ev) ** 2)


def _ratio(state, top, bottom, low, high):
    over = np.asarray(state.species(top), dtype=float) / np.maximum(
        np.asarray(state.species(bottom), dtype=float), 1e-12
    )
    return np.clip(over, low, high)


class InPZnSChemistry:
    """InP cores from InCl3, ZnCl2, ZnI2 and aminophosphine, then a ZnS shell from the zinc halides and TOP:S."""

    required_species = {"In": "mM", "Zn": "mM", "P": "mM", "S": "mM", "Cl": "mM", "I": "mM"}

    def __init__(
        self,
        qy_max: float = 0.45,
        best_p_to_in: float = 3.6,
        best_s_to_zn: float = 2.0,
        stokes_shift_ev: float = 0.10,
        core_activation_kj_mol: float = 55.0,
        core_growth_180c_min: float = 1.2,
        zinc_enthalpy_kj_mol: float = 217.0,
        zinc_half_active_c: float = 289.0,
        shell_activation_kj_mol: float = 100.0,
        shell_deposition_290c_min: float = 3.0,
        excitation_nm: float = 405.0,
        absorbance_per_mM: float = 0.25,
    ):
        self.qy_max = qy_max
        self.best_p_to_in = best_p_to_in
        self.best_s_to_zn = best_s_to_zn
        self.stokes_ev = stokes_shift_ev
        self.ea_core = core_activation_kj_mol
        self.core_growth_min = core_growth_180c_min
        self.zinc_dh = zinc_enthalpy_kj_mol
        self.zinc_half_c = zinc_half_active_c
        self.ea_shell = shell_activation_kj_mol
        self.shell_deposition_min = shell_deposition_290c_min
        self.excitation_nm = excitation_nm
        self.eps = absorbance_per_mM

    # --- the two stages ---------------------------------------------------------------
    @staticmethod
    def zones(state: ReactorState):
        """Core and shell temperatures (C) and times (min), or a ValueError naming the missing zone."""
        for name in ("core", "shell"):
            if name not in state.zones:
                raise ValueError(
                    f"InPZnSChemistry needs a {name!r} zone in state.zones (it has {sorted(state.zones)}); "
                    "give the platform a 'core' and a 'shell' heater zone"
                )
        core, shell = state.zones["core"], state.zones["shell"]
        return (
            np.asarray(core.temperature_c, dtype=float),
            np.asarray(core.time_s, dtype=float) / 60.0,
            np.asarray(shell.temperature_c, dtype=float),
            np.asarray(shell.time_s, dtype=float) / 60.0,
        )

    def core_growth(self, core_c, core_min):
        """Share of the core growth done: first order in the indium left (1.2 min at 180 C by default)."""
        k_per_min = _arrhenius(core_c, 180.0, self.ea_core) / self.core_growth_min
        return 1.0 - np.exp(-k_per_min * np.maximum(core_min, 0.0))

    @staticmethod
    def focused_diameter_nm(cl_to_i):
        """Where growth stops when the indium runs out (2.3-3.5 nm): iodide caps the surface and keeps
        the cores small, chloride lets them grow [P1:L76, L80]."""
        return 2.29 + 1.21 * _sigmoid((np.log(cl_to_i) - 2.63) / 2.0)

    def core_diameter_nm(self, core_c, core_min, cl_to_i):
        """Cores grow in volume from the nuclei to the focused size as the indium is used up, then ripen
        slowly (~2 % in diameter from 10 to 30 min at 180 C). Heat speeds both."""
        dose_min = np.maximum(core_min, 0.0) * _arrhenius(core_c, 180.0, self.ea_core)
        final = self.focused_diameter_nm(cl_to_i) * (1.0 + 0.025 * np.log1p(dose_min / 5.0))
        grown = self.core_growth(core_c, core_min)
        return np.cbrt(NUCLEUS_NM**3 + (final**3 - NUCLEUS_NM**3) * grown)

    def core_conversion(self, core_c, core_min, p_to_in):
        """Share of the indium turned into InP: the growth, helped by excess phosphine."""
        return self.core_growth(core_c, core_min) * p_to_in / (p_to_in + 0.4)

    def reactive_zinc(self, shell_c):
        """Share of the zinc halides that can form ZnS at this temperature (an equilibrium with their
        amine complexes): ~1/6 at 270 C, 1/2 at 289 C, ~5/6 at 310 C. Their low reactivity is why the
        shells made at 270-280 C are incomplete [P1:L99]."""
        kelvin = np.asarray(shell_c, dtype=float) + 273.15
        return _sigmoid(self.zinc_dh * 1e3 / _R * (1.0 / (self.zinc_half_c + 273.15) - 1.0 / kelvin))

    def shell_monolayers(self, shell_c, shell_min):
        """ZnS monolayers grown (up to 4 with all the zinc reactive): the reactive zinc deposits within
        minutes, so T_shell sets the thickness far more than the time does."""
        k_per_min = _arrhenius(shell_c, 290.0, self.ea_shell) / self.shell_deposition_min
        deposited = 1.0 - np.exp(-k_per_min * np.maximum(shell_min, 0.0))
        return 4.0 * self.reactive_zinc(shell_c) * deposited

    @staticmethod
    def coverage(monolayers):
        """How well the surface traps are covered (1 closed). Zinc halides alone cover a little."""
        return 0.15 + 0.85 * _sigmoid((monolayers - 1.36) / 0.24)

    @staticmethod
    def strain_quality(monolayers):
        """Below 1 for a thick shell: 7.8 % lattice mismatch strains the core and adds defects [P1:L101]."""
        return 0.45 + 0.55 / (1.0 + (monolayers / 2.75) ** 12)

    # --- the interface ----------------------------------------------------------------
    def outcome(self, state: ReactorState) -> OpticalOutcome:
        core_c, core_min, shell_c, shell_min = self.zones(state)
        indium = np.asarray(state.species("In"), dtype=float)
        p_to_in = _ratio(state, "P", "In", 0.5, 20.0)
        s_to_zn = _ratio(state, "S", "Zn", 0.1, 20.0)
        cl_to_i = _ratio(state, "Cl", "I", 0.02, 200.0)  # no iodide at all: the top of the clip
        core_c, core_min, shell_c, shell_min, indium, p_to_in, s_to_zn, cl_to_i = np.broadcast_arrays(
            core_c, core_min, shell_c, shell_min, indium, p_to_in, s_to_zn, cl_to_i
        )

        # Energies, from a sizing curve through 2.0 nm <-> 450 nm and 3.5 nm <-> 590 nm.
        d = self.core_diameter_nm(core_c, core_min, cl_to_i)
        confinement_ev = 3.08 / d**1.12
        ml = self.shell_monolayers(shell_c, shell_min)
        cover, strain = self.coverage(ml), self.strain_quality(ml)
        exciton_ev = INP_GAP_EV + confinement_ev + 0.006 * ml  # the shell series blue-shifts [P1:L99]
        peak_ev = exciton_ev - self.stokes_ev
        peak_nm = HC_EV_NM / peak_ev

        # Line width: the size spread (its width scales with confinement) and the surface, added in quadrature.
        # A little narrower than the paper's lines: the spread of times in the tanks adds ~1 nm.
        log_p = np.log(p_to_in / self.best_p_to_in)
        log_s = np.log(s_to_zn / self.best_s_to_zn)
        size_ev = 0.143 * confinement_ev * (1.0 + 0.35 * log_p**2 + 0.05 * ((core_c - 180.0) / 40.0) ** 2)
        surface_ev = 0.1665 * (1.0 + 0.06 * (1.0 - cover) + 0.2 * (1.0 - strain) / 0.55 + 0.03 * log_s**2)
        width_ev = np.sqrt(size_ev**2 + surface_ev**2)
        fwhm_nm = width_ev * peak_nm**2 / HC_EV_NM

        # Yields: band-edge light needs a closed, unstrained shell; a bare surface emits from traps.
        quality = np.exp(-(log_p**2) - (log_s / 0.9) ** 2 - ((core_c - 180.0) / 90.0) ** 2)
        qy_edge = self.qy_max * cover * strain * quality
        qy_trap = 0.02 * (1.0 - cover) * quality
        trap_nm = HC_EV_NM / (peak_ev - 0.32)
        trap_fwhm_nm = 0.40 * trap_nm**2 / HC_EV_NM

        # Absorbance per cm: first exciton with a continuum above it, the ZnS shell, unreacted indium.
        converted = self.core_conversion(core_c, core_min, p_to_in)
        inp_mM = indium * converted
        exciton_nm = HC_EV_NM / exciton_ev
        edge_nm = HC_EV_NM / (exciton_ev + 0.45)
        shell_volume = ((d + 2 * ML_NM * ml) / d) ** 3 - 1.0
        bands = [
            Band(exciton_nm, 1.15 * width_ev * exciton_nm**2 / HC_EV_NM, 0.3 * self.eps * inp_mM),
            Band(310.0 + 0 * d, 40.0 + 0 * d, 0.05 * self.eps * inp_mM * shell_volume),
            Band(290.0 + 0 * d, 60.0 + 0 * d, 0.1 * self.eps * indium * (1.0 - converted)),
        ]
        edge = self.eps * inp_mM

        # Which absorber takes the excitation light: its share of the absorbance there.
        at_exc = [band.height * _band_at(self.excitation_nm, band.center_nm, band.fwhm_nm) for band in bands]
        a_dots = at_exc[0] + edge / (1.0 + np.exp((self.excitation_nm - edge_nm) / 25.0))
        a_total = a_dots + at_exc[1] + at_exc[2]
        share = a_dots / np.maximum(a_total, 1e-12)
        emission = [
            Band(peak_nm, fwhm_nm, qy_edge * share / (1.0645 * fwhm_nm)),
            Band(trap_nm, trap_fwhm_nm, qy_trap * share / (1.0645 * trap_fwhm_nm)),
        ]
        return OpticalOutcome(
            emission=emission,
            absorption=bands,
            edge_nm=edge_nm,
            edge_height=edge,
            edge_width_nm=25.0 + 0 * d,
            extras={
                "qy": qy_edge + qy_trap,
                "band_edge_qy": qy_edge,
                "peak_nm": peak_nm,
                "fwhm_nm": fwhm_nm,
                "trap_fraction": qy_trap / np.maximum(qy_edge + qy_trap, 1e-12),
                "trap_peak_nm": trap_nm,
                "core_diameter_nm": d,
                "core_exciton_nm": HC_EV_NM / (INP_GAP_EV + confinement_ev),
                "first_exciton_nm": exciton_nm,
                "shell_monolayers": ml,
                "reactive_zinc": self.reactive_zinc(shell_c),
                "shell_thickness_nm": ML_NM * ml,
                "core_conversion": converted,
                "absorbance_per_cm_at_excitation": a_total,
            },
        )
