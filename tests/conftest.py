"""Test-wide settings: hypothesis profiles for the fuzz targets.

``make test`` runs the fuzz targets briefly (profile ``default``); ``make fuzz`` runs the
long campaign (``HYPOTHESIS_PROFILE=fuzz``: 10 000 examples per target).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile("default", max_examples=150, deadline=None)
settings.register_profile(
    "fuzz",
    max_examples=10_000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
