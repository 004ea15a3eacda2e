"""A user-supplied chemistry plug-in for tests: Cs3Cu2I5, but each evaluation takes real time.

It shows the plug-in interface (any importable class with `required_species` and `outcome`)
and makes a run slow enough to be interrupted from outside. It touches a marker file on its
first call, so a test knows the run has reached the instruments.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from hardware.virtual.cs3cu2i5 import Cs3Cu2I5Chemistry


class SlowChemistry(Cs3Cu2I5Chemistry):
    def __init__(self, seconds_per_call: float = 0.2, **options):
        super().__init__(**options)
        self.seconds = seconds_per_call

    def outcome(self, state):
        marker = os.environ.get("SDFL_TEST_MARKER")
        if marker:
            Path(marker).touch()
        time.sleep(self.seconds)
        return super().outcome(state)
