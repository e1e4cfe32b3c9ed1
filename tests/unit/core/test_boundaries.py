"""The sans-I/O promise, enforced: the core imports no I/O, clock or service machinery.

Checked in a fresh interpreter (a test session has everything imported already):
importing every module of ``voicebridge.core`` must not pull in asyncio, time,
logging, the web frameworks, the Azure SDKs or the settings. numpy and orjson import
``time`` themselves, so the interpreter loads the core's third-party libraries
first, then forgets ``time``: if anything in the core imports it, it comes back.
"""

from __future__ import annotations

import ast
import importlib
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import voicebridge.core

FORBIDDEN = (
    "asyncio",
    "time",
    "logging",
    "fastapi",
    "starlette",
    "aiohttp",
    "azure",
    "pydantic_settings",
)
CORE_DIR = Path(voicebridge.core.__file__).parent
CORE_FILES = sorted(CORE_DIR.glob("*.py"))
CORE_MODULES = ["voicebridge.core"] + [
    f"voicebridge.core.{m.name}" for m in pkgutil.iter_modules([str(CORE_DIR)])
]

_PROBE = """
import importlib, json, sys
import numpy, orjson, pybase64  # the core's third-party libraries (numpy imports time)
forbidden = {forbidden!r}
sys.modules.pop("time", None)
before = set(sys.modules)
for name in {modules!r}:
    importlib.import_module(name)
new = set(sys.modules) - before
print(json.dumps(sorted(m for m in new if m.split(".")[0] in forbidden)))
"""


def test_importing_the_core_pulls_in_no_io_clock_or_service_modules() -> None:
    probe = _PROBE.format(forbidden=FORBIDDEN, modules=CORE_MODULES)
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert json.loads(result.stdout) == []


def test_the_probe_would_see_a_forbidden_import() -> None:
    """The subprocess check is not vacuous: ``time`` and ``logging`` do show up."""
    probe = _PROBE.format(forbidden=FORBIDDEN, modules=["logging", "time"])
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert set(json.loads(result.stdout)) >= {"logging", "time"}


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: p.name)
def test_no_async_code_and_no_forbidden_import_in_the_source(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        assert not isinstance(
            node, ast.AsyncFunctionDef | ast.Await | ast.AsyncFor | ast.AsyncWith
        ), f"{path.name}:{node.lineno}: async code in the core"
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            continue
        for name in names:
            assert name.split(".")[0] not in FORBIDDEN, f"{path.name}:{node.lineno}: {name}"


@pytest.mark.parametrize("name", CORE_MODULES)
def test_every_core_module_declares_its_public_names(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert isinstance(exported, list), f"{name} has no __all__"
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names what it does not define: {missing}"
    assert len(set(exported)) == len(exported)
