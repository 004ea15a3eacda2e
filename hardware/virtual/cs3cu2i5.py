"""A response model of Cs3Cu2I5 nanocrystal formation in segmented flow (paper 003 trends).

Smooth in every input, with interactions, and shaped after FACTS.md section P3.3:
- the self-trapped-exciton emission sits near 450 nm whatever the inputs;
- yield (Abs at 300 nm) rises with [CuI], [OA] and [OAm]; PL rises with [CuI];
- PL rises with temperature up to ~150 C and falls beyond (decomposition, worse with OAm);
- OA has an optimum for PL, and the optimum moves with [CuI];
- OAm raises yield but lowers PL;
- a ~380 nm side emission grows with Cs-oleate (and its excess OA);
- a ~590 nm secondary population (CsCu2I3-like) appears below ~120 C;
- PL drops slightly for reaction times above ~28 s; yield is flat over 25-42 s at 150 C;
- below ~600 uL/min the synthesis is mass-transfer limited.
Numbers not in the paper (rate constants, widths) are assumptions chosen to give those shapes.
"""

from __future__ import annotations

import numpy as np

from hardware.virtual.chemistry import Band, OpticalOutcome, ReactorState

_R = 8.314  # J/mol/K


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


class Cs3Cu2I5Chemistry:
    """Cs3Cu2I5 from Cs-oleate + CuI with OA/OAm ligands in ODE."""

    required_species = {"Cs": "mM", "Cu": "mM", "OA": "fraction", "OAm": "fraction"}

    def __init__(
        self,
        plqy_max: float = 0.30,
        k_150c_per_s: float = 0.16,
        activation_energy_kj_mol: float = 50.0,
        mixing_flow_ul_min: float = 300.0,
        temperature_optimum_c: float = 150.0,
        molar_absorbance_300nm: float = 10.0,
    ):
        self.plqy_max = plqy_max
        self.k_150c = k_150c_per_s
        self.ea = activation_energy_kj_mol * 1e3
        self.q_mix = mixing_flow_ul_min
        self.t_opt = temperature_optimum_c
        self.eps300 = molar_absorbance_300nm

    # --- pieces, each a plain function of the state ------------------------------------
    def mixing_efficiency(self, flow_ul_min):
        """Droplet mixing: a plateau above ~600 uL/min, mass-transfer limited below."""
        flow = np.maximum(np.asarray(flow_ul_min, dtype=float), 1e-9)
        return 1.0 / (1.0 + (self.q_mix / flow) ** 6)

    def conversion(self, temperature_c, reaction_time_s):
        kelvin = np.asarray(temperature_c, dtype=float) + 273.15
        k = self.k_150c * np.exp(self.ea / _R * (1.0 / 423.15 - 1.0 / kelvin))
        return 1.0 - np.exp(-k * np.asarray(reaction_time_s, dtype=float))

    def secondary_population(self, temperature_c):
        """Share of copper that forms the ~590 nm (CsCu2I3-like) population at low temperature."""
        return _sigmoid((112.0 - np.asarray(temperature_c, dtype=float)) / 3.0)

    def plqy(self, state: ReactorState):
        T = np.asarray(state.temperature_c, dtype=float)
        cu = np.asarray(state.species("Cu"), dtype=float)
        cs = np.asarray(state.species("Cs"), dtype=float)
        oa = np.asarray(state.species("OA"), dtype=float)
        oam = np.asarray(state.species("OAm"), dtype=float)
        t = np.asarray(state.reaction_time_s, dtype=float)
        width = np.where(T <= self.t_opt, 35.0, 14.0)
        h_T = np.exp(-(((T - self.t_opt) / width) ** 2))
        # OAm attacks the crystals, faster when hot.
        h_oam = 1.0 / (1.0 + (oam / 0.02) ** 1.5 * (0.6 + 0.4 * (T - 120.0) / 30.0).clip(0.2))
        # OA passivates up to an optimum that needs more OA when there is more copper.
        oa_opt = 0.035 + 0.012 * cu
        h_oa = np.exp(-(((oa - oa_opt) / 0.028) ** 2))
        h_cu = cu / (cu + 0.9)
        h_t = 1.0 - 0.10 * _sigmoid((t - 33.0) / 3.5)
        ratio = cs / np.maximum(cu, 1e-9)
        h_cs = 1.0 - 0.08 * np.tanh(((ratio - 4.0) / 4.0) ** 2)
        h_mix = 0.4 + 0.6 * self.mixing_efficiency(state.precursor_flow_ul_min)
        return self.plqy_max * h_T * h_oam * h_oa * h_cu * h_t * h_cs * h_mix

    def yield_fraction(self, state: ReactorState):
        cu = np.asarray(state.species("Cu"), dtype=float)
        cs = np.asarray(state.species("Cs"), dtype=float)
        oa = np.asarray(state.species("OA"), dtype=float)
        oam = np.asarray(state.species("OAm"), dtype=float)
        g_oa = oa / (oa + 0.02)
        g_oam = (1.0 + 0.35 * oam / (oam + 0.015)) / 1.35
        g_cs = cs / np.maximum(cs + 0.5 * cu, 1e-12) * (1.0 - 0.05 * ((cs - 5.5) / 3.5) ** 2).clip(0.5)
        conv = self.conversion(state.temperature_c, state.reaction_time_s)
        return conv * self.mixing_efficiency(state.precursor_flow_ul_min) * g_oa * g_oam * g_cs

    # --- the interface ----------------------------------------------------------------
    def outcome(self, state: ReactorState) -> OpticalOutcome:
        T = np.asarray(state.temperature_c, dtype=float)
        cu = np.asarray(state.species("Cu"), dtype=float)
        cs = np.asarray(state.species("Cs"), dtype=float)
        oa = np.asarray(state.species("OA"), dtype=float)
        p600 = self.secondary_population(T)
        y = self.yield_fraction(state)
        n_main = 0.5 * cu * y * (1.0 - p600)  # mM of Cs3Cu2I5 formula units
        n_600 = 0.5 * cu * y * p600
        unreacted_cu = np.maximum(cu - 2.0 * (n_main + n_600), 0.0)

        # Absorbance per cm: exciton band and continuum of the crystals, precursor complexes.
        exciton = Band(center_nm=292.0 + 0 * T, fwhm_nm=24.0 + 0 * T, height=0.75 * self.eps300 * n_main)
        secondary_abs = Band(center_nm=325.0 + 0 * T, fwhm_nm=30.0 + 0 * T, height=6.0 * n_600)
        precursor_abs = Band(center_nm=255.0 + 0 * T, fwhm_nm=40.0 + 0 * T, height=3.0 * unreacted_cu)
        edge_height = 0.5 * self.eps300 * n_main

        # Which absorber takes the 300 nm excitation: shares of absorbance at 300 nm.
        a_main = 0.75 * self.eps300 * n_main * np.exp(-4 * np.log(2) * (8.0 / 24.0) ** 2) + edge_height
        a_600 = 6.0 * n_600 * np.exp(-4 * np.log(2) * (25.0 / 30.0) ** 2)
        a_pre = 3.0 * unreacted_cu * np.exp(-4 * np.log(2) * (45.0 / 40.0) ** 2)
        total = np.maximum(a_main + a_600 + a_pre, 1e-12)

        phi = self.plqy(state)
        main_fwhm = 66.0 - 4.0 * (T - 135.0) / 15.0
        main_center = 449.0 + 0.6 * np.tanh(cu - 1.3)
        q380 = 0.0005 * (cs / 2.27) ** 1.6 * np.sqrt(np.maximum(oa, 0.0) / 0.05)
        phi_600 = 0.08
        emission = [
            Band(main_center, main_fwhm, phi * a_main / total / (1.0645 * main_fwhm)),
            Band(380.0 + 0 * T, 30.0 + 0 * T, q380 * a_main / total / (1.0645 * 30.0)),
            Band(588.0 + 0 * T, 95.0 + 0 * T, phi_600 * a_600 / total / (1.0645 * 95.0)),
        ]
        return OpticalOutcome(
            emission=emission,
            absorption=[exciton, secondary_abs, precursor_abs],
            edge_nm=318.0 + 0 * T,
            edge_height=edge_height,
            edge_width_nm=6.0,
            scattering_at_400nm=0.02 * (n_main + n_600),
            extras={"plqy": phi, "yield_fraction": y, "n_mM": n_main, "secondary_fraction": p600},
        )
