"""Prefect flows of sdfl. Importing this package turns Prefect's anonymous usage analytics off
unless the environment already decided (set PREFECT_SERVER_ANALYTICS_ENABLED=true to keep them)."""

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
