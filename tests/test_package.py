"""`pip install .` into a fresh virtual environment gives a working `l2d` command."""

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from conftest import cli_env

import l2d

CHECKOUT = Path(__file__).resolve().parents[1]


def test_pip_install_gives_the_l2d_command(tmp_path):
    # A copy of what the package is built from, so that the build leaves nothing in the checkout.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(CHECKOUT / name, source / name)
    shutil.copytree(CHECKOUT / "l2d", source / "l2d",
                    ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    # The fresh environment sees the test environment's packages (jax, mlflow, ...) through a
    # .pth file, so that only l2d itself is installed: no download, no dependency resolution.
    site = Path(subprocess.run(
        [venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True, capture_output=True, text=True).stdout.strip())
    (site / "test_environment.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"),
                    "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", str(source)], check=True)
    run = tmp_path / "elsewhere"  # Not the checkout: l2d must come from the installed package.
    run.mkdir()
    env = {k: v for k, v in cli_env().items() if k != "PYTHONPATH"}
    version = subprocess.run([venv / "bin" / "l2d", "--version"], cwd=run, env=env,
                             capture_output=True, text=True)
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"l2d {l2d.__version__}"
    located = subprocess.run([venv / "bin" / "python", "-c", "import l2d; print(l2d.__file__)"],
                             cwd=run, env=env, capture_output=True, text=True, check=True)
    assert Path(located.stdout.strip()).is_relative_to(venv)
    # A subcommand that does real work: synthetic experts for a ground-truth manifest.
    (run / "gt.json").write_text('[{"file": "a.png", "label": 0}, {"file": "b.png", "label": 1}]')
    experts = subprocess.run([venv / "bin" / "l2d", "experts", "--groundtruth", "gt.json",
                              "--noise", "0.5"], cwd=run, env=env, capture_output=True, text=True)
    assert experts.returncode == 0, experts.stderr
    assert (run / "gt_random_noise_0.5_0.json").is_file()
