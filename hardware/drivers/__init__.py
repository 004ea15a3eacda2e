"""Instrument drivers: real hardware over serial and USB. Nothing here imports Prefect."""
