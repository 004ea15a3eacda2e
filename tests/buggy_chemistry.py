"""A user-supplied chemistry plug-in with a bug for tests: Cs3Cu2I5 until its outcome is asked
for, then a plain Python error (not one of sdfl's named errors), as a user's own code can raise."""

from __future__ import annotations

from hardware.virtual.cs3cu2i5 import Cs3Cu2I5Chemistry


class BuggyChemistry(Cs3Cu2I5Chemistry):
    def outcome(self, state):
        return {}["yield"]  # KeyError: the kind of slip a plug-in makes
