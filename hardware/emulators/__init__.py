"""Instrument emulators on real pseudo-terminals, driven by the virtual lab, for testing drivers."""
