"""Names a user gives (campaigns, lots, experiment ids): safe as folder and file names anywhere."""

from __future__ import annotations

import re

from hardware.errors import SdflInputError

SAFE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
SAFE_NAME = re.compile(SAFE_NAME_PATTERN)


def check_name(kind: str, value: str) -> str:
    """`value` if it is a safe name, else SdflInputError naming `kind` and the rule."""
    if not isinstance(value, str) or not SAFE_NAME.match(value):
        raise SdflInputError(
            f"{kind} {value!r} is not a safe name: use letters, digits, '_', '-' or '.', "
            "starting with a letter or digit, at most 128 characters"
        )
    return value
