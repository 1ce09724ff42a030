"""The board install stays light: fresh virtualenvs, the package installed from this checkout with
its real dependencies from PyPI, and a look at what each extra pulled in.

Slow (a minute or two, mostly pip); marked ``install`` so it can be deselected locally with
``-m 'not install'``. ``make test`` runs it. pip's cache is reused between runs.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.agents import REPO_ROOT

pytestmark = pytest.mark.install

# Host-side packages a board must never get; the host extra has them all.
HEAVY = {"torch", "fastapi", "litert-torch", "pydantic", "uvicorn", "sqlalchemy", "torchao",
         "ai-edge-quantizer", "torch-pruning", "onnx", "scikit-learn", "typer", "rich"}  # fmt: skip
HAS_LITERT_WHEEL = platform.machine() in ("x86_64", "aarch64", "arm64")

# Imports every device_agent module and reports which top-level packages that pulled in.
IMPORT_ALL = """
import importlib, json, pkgutil, sys
import device_agent
for info in pkgutil.walk_packages(device_agent.__path__, "device_agent."):
    importlib.import_module(info.name)
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
"""


def _run(*cmd: str, cwd: Path | None = None) -> str:
    # Without the checkout on PYTHONPATH: building the wheel leaves edgetailor.egg-info in it,
    # which pip in the fresh venv would take for an installed edgetailor and skip the wheel.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=900, env=env)
    assert proc.returncode == 0, (
        f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
    )
    return proc.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's own wheel, built once (only the build skips dependencies, not the installs)."""
    out = tmp_path_factory.mktemp("wheel")
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(REPO_ROOT), "-w", str(out))
    (found,) = out.glob("edgetailor-*.whl")
    return found


def _install(tmp_path: Path, wheel: Path, extra: str) -> tuple[Path, dict[str, str]]:
    env_dir = tmp_path / f"venv-{extra}"
    venv.create(env_dir, with_pip=True, clear=True)
    python = env_dir / "bin" / "python"
    _run(str(python), "-m", "pip", "install", "-q", f"edgetailor[{extra}] @ {wheel.as_uri()}")
    listed = json.loads(_run(str(python), "-m", "pip", "list", "--format=json"))
    return env_dir, {p["name"].lower().replace("_", "-"): p["version"] for p in listed}


def _check_light(env_dir: Path, installed: dict[str, str]) -> None:
    assert not HEAVY & set(installed), f"the board install pulled {sorted(HEAVY & set(installed))}"
    version = _run(str(env_dir / "bin" / "edgetailor-agent"), "--version").strip()
    assert version.startswith("edgetailor-agent ")
    imported = set(json.loads(_run(str(env_dir / "bin" / "python"), "-c", IMPORT_ALL, cwd=env_dir)))
    assert "host" not in imported and "torch" not in imported, sorted(imported)
    assert {"paho", "psutil", "msgspec", "numpy"} <= imported


def test_device_extra_installs_the_agent_without_torch_fastapi_or_host_code(
    tmp_path: Path, wheel: Path
) -> None:
    env_dir, installed = _install(tmp_path, wheel, "device")
    _check_light(env_dir, installed)
    assert ("ai-edge-litert" in installed) == HAS_LITERT_WHEEL
    print(f"\n[device]: {len(installed)} packages: {', '.join(sorted(installed))}")


def test_device_tflite_extra_brings_tflite_runtime_with_numpy_1_and_the_agent_finds_it(
    tmp_path: Path, wheel: Path
) -> None:
    if sys.version_info >= (3, 12):
        pytest.skip("tflite-runtime 2.14 has wheels up to Python 3.11 only")
    env_dir, installed = _install(tmp_path, wheel, "device-tflite")
    _check_light(env_dir, installed)
    assert "ai-edge-litert" not in installed and installed["tflite-runtime"].startswith("2.14")
    assert int(installed["numpy"].split(".")[0]) == 1
    proc = subprocess.run(
        [str(env_dir / "bin" / "edgetailor-agent"), "--check", "--broker", "mqtt://127.0.0.1:1",
         "--id", "pi-tflite", "--data-dir", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    runtime = [line for line in proc.stdout.splitlines() if "runtime tflite" in line]
    assert runtime and runtime[0].lstrip().startswith("ok"), proc.stdout
    assert "tflite_runtime 2.14" in runtime[0]
    print(f"\n[device-tflite]: {len(installed)} packages: {', '.join(sorted(installed))}")
