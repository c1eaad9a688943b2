"""Installing alignkit: the package metadata asks for a torch range, never a pin, so `pip install .` keeps the torch
an environment already has; `make setup` still installs the local CPU build first; `alignkit --version`."""

import os
import shutil
import subprocess
import sys
import time
import tomllib
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import alignkit
from alignkit.cli import main
from conftest import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _requirements() -> list[Requirement]:
    extras = PYPROJECT.get("optional-dependencies", {}).values()
    return [Requirement(r) for r in [*PYPROJECT["dependencies"], *(r for group in extras for r in group)]]


def test_the_package_metadata_pins_no_exact_version():
    pinned = [str(r) for r in _requirements() if any(s.operator in ("==", "===") for s in r.specifier)]
    assert pinned == []


def test_torch_is_a_range_that_takes_cpu_cuda_and_vllm_builds():
    (torch,) = [r for r in _requirements() if r.name == "torch"]
    for build in ("2.6.0", "2.9.1+cu128", "2.13.0+cpu", version("torch")):
        assert torch.specifier.contains(build, prereleases=True), build
    assert not torch.specifier.contains("2.5.1")  # below the floor: FSDP2 and transformers 5.x need 2.6


def _recipe(target: str) -> str:
    return (ROOT / "Makefile").read_text().split(f"\n{target}:", 1)[1].split("\n\n", 1)[0]


def test_make_setup_installs_the_local_cpu_torch_before_the_package_and_the_test_tools_only_for_tests():
    """make run's setup installs the local CPU torch, then alignkit without the test tools (a fresh clone's run
    starts sooner); make test adds them on top of that same setup."""
    recipe = _recipe(".venv/.installed")
    assert recipe.index("pip install -q torch==2.13.0") < recipe.index("pip install -q -e .\n")
    assert "[dev]" not in recipe
    dev = _recipe(".venv/.installed-dev")
    assert dev.startswith(" .venv/.installed\n") and "pip install -q -e '.[dev]'" in dev
    assert _recipe("run").startswith(" setup\n") and _recipe("test").startswith(" setup-dev\n")


def test_version_prints_the_installed_version_and_exits_0(capsys):
    try:
        main(["--version"])  # returns: the console script exits 0
    except SystemExit as e:
        assert e.code in (0, None)
    assert capsys.readouterr().out == f"alignkit {version('alignkit')}\n"
    assert alignkit.__version__ == version("alignkit") == PYPROJECT["version"]


# --- a real install into a fresh environment (minutes: downloads alignkit's dependencies) ------------------------

def _source_copy(tmp_path) -> Path:
    """What a build reads, copied, so that building writes nothing into the checkout."""
    dest = tmp_path / "alignkit-src"
    shutil.copytree(ROOT / "src", dest / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, dest / name)
    return dest


def _stub_torch_wheel(tmp_path, build: str) -> Path:
    """A metadata-only wheel named torch at `build`: stands in for a CUDA build an environment already has."""
    info = f"torch-{build}.dist-info"
    files = {f"{info}/METADATA": f"Metadata-Version: 2.1\nName: torch\nVersion: {build}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: alignkit-tests\nRoot-Is-Purelib: true\n"
                              "Tag: py3-none-any\n"}
    wheel = tmp_path / f"torch-{build}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
        z.writestr(f"{info}/RECORD", "".join(f"{name},,\n" for name in [*files, f"{info}/RECORD"]))
    return wheel


def _pip(python: Path, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(python), "-m", "pip", "--disable-pip-version-check", *args], capture_output=True,
                          text=True, timeout=1500)
    assert proc.returncode == 0, f"pip {' '.join(args)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _torch_version(python: Path) -> str:
    out = _pip(python, "show", "torch").stdout
    return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Version:"))


@pytest.mark.slow
@pytest.mark.parametrize("torch_build", ["2.13.0", "2.9.1+cu128"])
def test_pip_install_keeps_the_torch_the_environment_has(torch_build, tmp_path):
    """A fresh venv gets its torch first (the local CPU build 2.13.0, or a stand-in for a CUDA 2.9.1 build), then
    `pip install <checkout>` with real dependency resolution: torch is left as it was, and alignkit runs."""
    env_dir = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True, timeout=300)
    python = env_dir / "bin" / "python"
    start = time.monotonic()
    _pip(python, "install", "-q", f"torch=={torch_build}" if torch_build == "2.13.0" else
         str(_stub_torch_wheel(tmp_path, torch_build)))
    before = _torch_version(python)
    _pip(python, "install", "-q", str(_source_copy(tmp_path)))
    print(f"torch {before}: installed alignkit in {time.monotonic() - start:.0f}s")
    assert _torch_version(python) == before
    assert before.startswith(torch_build)
    assert _pip(python, "show", "alignkit").stdout.count(f"Version: {PYPROJECT['version']}") == 1
    if torch_build == "2.13.0":  # a real torch: the installed console script runs
        out = subprocess.run([str(env_dir / "bin" / "alignkit"), "--version"], capture_output=True, text=True,
                             timeout=300, cwd=tmp_path,
                             env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
        assert out.returncode == 0 and out.stdout == f"alignkit {PYPROJECT['version']}\n", out.stderr
