"""CsPbBr3 nanocrystals made by room-temperature LARP at a Y-junction (paper 000): a DMF precursor
stream meets toluene, and the crystals are capped by star-like PAA-b-PS nanoreactors or by OA/OAm.

From the paper:
- two pumps, precursor in DMF and toluene, mixed only by the flow at a Y-connector [P0:L56];
- Re goes from 394 to 1662 as Q_tol goes from 1000 to 5000 mL/h at Q_precursor 60 mL/h, and PLQY
  rises monotonically with Q_tol for both cappings; OA/OAm has the higher average PLQY [P0:L58];
- the polymer-capped peak does not move; the OA/OAm peak red-shifts as Q_tol falls (defects from
  poor mixing) [P0:L65] and as Q_precursor rises (larger crystals) [P0:L76];
- at Q_tol 5000 mL/h, PLQY stays near 60 % and FWHM barely moves over Q_precursor 10-60 [P0:L67, L76];
- crystals are 13.5 nm (polymer) and 22 nm (OA/OAm) at Q_tol 5000, Q_precursor 60 mL/h [P0:L80];
- with no ligand and no nanoreactor there is no luminescence [P0:L80];
- yield 0.139 g/h at 10 mg nanoreactor per 20 mL DMF, linear in nanoreactor concentration [P0:L100].
Assumptions (not in the paper):
- Re follows a power law in the total flow through the two Re values above; the mixing index is
  1 - exp(-Re / mixing_reynolds);
- one cubic crystal (edge = template size, density 4.8 g/cm3, 579.8 g/mol) per nanoreactor, and
  the precursors are in excess, so the polymer yield does not depend on Pb, Cs or Br;
- OA/OAm crystal size ~ (precursor volume fraction)^(1/3): nuclei set by the antisolvent, mass by
  the precursor; peak energy = bulk (520 nm) + 7 eV nm2 / size^2; defects red-shift the OA/OAm peak
  by up to 8 nm when unmixed; small Stokes shift;
- linewidth: 72 meV homogeneous, size spread (10 % polymer, 15 % OA/OAm) and poor mixing;
- absorption coefficient 1.2e5 /cm at 405 nm; crystals form with a 0.15 s time constant;
  unreacted lead bromide complexes absorb near 310 nm; DMF quenches slightly.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from hardware.virtual.chemistry import Band, OpticalOutcome, ReactorState

HC_EV_NM = 1239.84198
AVOGADRO = 6.02214e23
MOLAR_MASS_G_MOL = 579.8  # CsPbBr3
DENSITY_G_CM3 = 4.8
RE_POINTS = ((1060.0, 394.0), (5060.0, 1662.0))  # (total flow mL/h, Re) [P0:L58]
RE_EXPONENT = np.log(RE_POINTS[1][1] / RE_POINTS[0][1]) / np.log(RE_POINTS[1][0] / RE_POINTS[0][0])
OPTIMUM_DMF_FRACTION = 60.0 / 5060.0  # Q_precursor 60, Q_tol 5000 mL/h [P0:L80]
CONFINEMENT_EV_NM2 = 7.0
OA_MM_PER_FRACTION = 0.895 / 282.46 * 1e6  # neat oleic acid, mmol/L
OAM_MM_PER_FRACTION = 0.813 / 267.49 * 1e6  # neat oleylamine, mmol/L
ALPHA_405_PER_CM = 1.2e5
CAPPINGS = ("polymer", "oleate")


def band_value(wavelength_nm, center_nm, fwhm_nm, height):
    """A band's height at one wavelength, Gaussian in photon energy as the lab renders it."""
    sigma_e = HC_EV_NM * fwhm_nm / center_nm**2 / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    return height * np.exp(-0.5 * ((HC_EV_NM / wavelength_nm - HC_EV_NM / center_nm) / sigma_e) ** 2)


class CsPbBr3Chemistry:
    """CsPbBr3 from PbBr2 + CsBr in DMF, precipitated by toluene, capped by polymer or OA/OAm."""

    def __init__(
        self,
        capping: Literal["polymer", "oleate"] = "polymer",
        plqy_max: float | None = None,
        mixing_reynolds: float = 800.0,
        template_size_nm: float = 13.5,
        oleate_size_nm: float = 22.0,
        excitation_nm: float = 405.0,
    ):
        if capping not in CAPPINGS:
            raise ValueError(f"capping must be one of {CAPPINGS}, not {capping!r}")
        self.capping = capping
        self.plqy_max = plqy_max if plqy_max is not None else {"polymer": 0.66, "oleate": 0.72}[capping]
        self.re_mix = mixing_reynolds
        self.template_nm = template_size_nm
        self.oleate_nm = oleate_size_nm
        self.excitation_nm = excitation_nm
        self.required_species = {"Pb": "mM", "Cs": "mM", "Br": "mM", "DMF": "fraction"}
        if capping == "polymer":
            self.required_species["NR"] = "mM"
        else:
            self.required_species.update(OA="fraction", OAm="fraction")

    # --- pieces, each a plain function of the state ------------------------------------
    def reynolds(self, flow_ul_min):
        """Re at the Y-junction from the total flow of both pumps."""
        flow_ml_h = np.maximum(np.asarray(flow_ul_min, dtype=float), 1e-9) * 0.06
        return RE_POINTS[1][1] * (flow_ml_h / RE_POINTS[1][0]) ** RE_EXPONENT

    def mixing(self, flow_ul_min):
        """Mixing index, 0 (unmixed) to 1 (fully mixed)."""
        return 1.0 - np.exp(-self.reynolds(flow_ul_min) / self.re_mix)

    def crystal_size_nm(self, state: ReactorState):
        dmf = np.asarray(state.species("DMF"), dtype=float)
        if self.capping == "polymer":
            return self.template_nm + 0.0 * dmf
        return self.oleate_nm * (np.maximum(dmf, 1e-9) / OPTIMUM_DMF_FRACTION) ** (1.0 / 3.0)

    def plqy(self, state: ReactorState):
        m = self.mixing(state.precursor_flow_ul_min)
        dmf_quench = np.exp(-np.asarray(state.species("DMF"), dtype=float) / 0.4)
        if self.capping == "polymer":
            return self.plqy_max * (1.0 - 0.55 * (1.0 - m)) * dmf_quench
        ligand_mM = (OA_MM_PER_FRACTION * np.asarray(state.species("OA"), dtype=float)
                     + OAM_MM_PER_FRACTION * np.asarray(state.species("OAm"), dtype=float))
        ratio = ligand_mM / np.maximum(np.asarray(state.species("Pb"), dtype=float), 1e-12)
        return self.plqy_max * ratio / (ratio + 1.0) * (1.0 - 0.35 * (1.0 - m)) * dmf_quench

    def crystals_mM(self, state: ReactorState):
        """CsPbBr3 formula units formed, mmol/L of the mixed stream."""
        formed = 1.0 - np.exp(-np.maximum(np.asarray(state.reaction_time_s, dtype=float), 0.0) / 0.15)
        if self.capping == "polymer":
            volume_cm3 = (self.template_nm * 1e-7) ** 3
            units = DENSITY_G_CM3 * volume_cm3 / MOLAR_MASS_G_MOL * AVOGADRO
            return np.asarray(state.species("NR"), dtype=float) * units * formed
        supply = np.minimum(np.minimum(state.species("Pb"), state.species("Cs")), np.asarray(state.species("Br")) / 3.0)
        m = self.mixing(state.precursor_flow_ul_min)
        return np.maximum(np.asarray(supply, dtype=float), 0.0) * formed * (0.6 + 0.4 * m)

    # --- the interface ----------------------------------------------------------------
    def outcome(self, state: ReactorState) -> OpticalOutcome:
        m = self.mixing(state.precursor_flow_ul_min)
        d = self.crystal_size_nm(state)
        # Peak: bulk plus weak confinement, red-shifted by defects when OA/OAm crystals form unmixed.
        confinement_ev = CONFINEMENT_EV_NM2 / d**2
        defect_nm = 0.0 if self.capping == "polymer" else 8.0 * (1.0 - m)
        peak = HC_EV_NM / (HC_EV_NM / 520.0 + confinement_ev) + defect_nm
        # Width: homogeneous and size-spread widths in quadrature, plus poor mixing.
        spread = 0.10 if self.capping == "polymer" else 0.15
        mix_ev = (0.03 if self.capping == "polymer" else 0.06) * (1.0 - m)
        width_ev = np.hypot(0.072, 2.0 * confinement_ev * spread * 2.355) + mix_ev
        fwhm = peak**2 * width_ev / HC_EV_NM
        edge = HC_EV_NM / (HC_EV_NM / peak + 0.01 + 0.25 * confinement_ev)

        crystals = self.crystals_mM(state)
        volume_fraction = crystals * 1e-3 * MOLAR_MASS_G_MOL / DENSITY_G_CM3 / 1e3
        edge_height = ALPHA_405_PER_CM * volume_fraction / np.log(10.0)
        # Absorbance per cm: continuum below the edge and an exciton at it, stronger in small crystals.
        exciton = Band(edge, 0.7 * fwhm, edge_height * 0.3 * np.minimum(13.5 / d, 1.5))
        unreacted = np.maximum(np.asarray(state.species("Pb"), dtype=float) - crystals, 0.0)
        precursor = Band(310.0 + 0.0 * m, 35.0 + 0.0 * m, 4.0 * unreacted)
        scattering = 0.01 * edge_height * (d / 22.0) ** 3

        # Share of the excitation the crystals take (the rest goes to the precursor complexes).
        x = self.excitation_nm
        a_crystal = (edge_height / (1.0 + np.exp((x - edge) / 4.0))
                     + band_value(x, exciton.center_nm, exciton.fwhm_nm, exciton.height))
        a_precursor = band_value(x, precursor.center_nm, precursor.fwhm_nm, precursor.height)
        share = a_crystal / np.maximum(a_crystal + a_precursor, 1e-30)

        phi = self.plqy(state)
        flow_l_h = np.asarray(state.precursor_flow_ul_min, dtype=float) * 60e-6
        yield_g_h = crystals * 1e-3 * flow_l_h * MOLAR_MASS_G_MOL
        return OpticalOutcome(
            emission=[Band(peak, fwhm, phi * share / (1.0645 * fwhm))],
            absorption=[exciton, precursor],
            edge_nm=edge,
            edge_height=edge_height,
            edge_width_nm=4.0,
            scattering_at_400nm=scattering,
            extras={"plqy": phi, "peak_nm": peak, "fwhm_nm": fwhm, "yield_g_h": yield_g_h,
                    "mixing": m, "crystal_size_nm": d},
        )
