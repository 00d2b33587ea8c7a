"""Shared test setup: the ``--runslow`` option and hypothesis profiles."""

from __future__ import annotations

import importlib
import os
import pkgutil

import pytest
from hypothesis import HealthCheck, settings

import replica

# Hypothesis draws some values from the literals of the local modules loaded
# when a test runs (its "local constants"), so the examples a derandomized run
# sees would depend on which tests ran before it and what they imported: the
# planted faults were found at example 8 alone and not in 60 after the CLI
# tests. Loading every module of the package first makes every run draw from
# the same pool.
for _module in pkgutil.walk_packages(replica.__path__, "replica."):
    importlib.import_module(_module.name)

settings.register_profile("ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("deep", max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if "browser" in item.keywords:
        from browser import missing

        reason = missing()
        if reason is not None:
            pytest.skip(f"browser test: {reason}")
