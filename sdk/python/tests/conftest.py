"""Runs the tests against the installed sluice_client (sdk/python/check installs the wheel it
builds), or against the source tree when the package is not installed."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

SDK = Path(__file__).resolve().parent.parent

try:
    import sluice_client  # noqa: F401
except ImportError:
    sys.path.insert(0, str(SDK))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SDK), os.environ.get("PYTHONPATH")]))

from fakes import Running  # noqa: E402


@pytest.fixture
def fake() -> Iterator[Running]:
    running = Running()
    yield running
    running.stop()


def pytest_report_header() -> str:
    import sluice_client

    return f"sluice_client {sluice_client.__version__} from {Path(sluice_client.__file__).parent}"
