"""The package as users get it: one import name holding every layer (which layer may
import which is ``test_layers``)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ("schemas", "bank", "streams", "makers", "trainers", "infra", "benches")


def test_the_layers_are_reachable_as_carls_subpackages() -> None:
    import carls

    for layer in LAYERS:
        module = __import__(f"carls.{layer}", fromlist=["_"])
        assert Path(module.__file__ or "").resolve().parent == (ROOT / layer).resolve()
    assert Path(carls.__file__ or "").resolve().parent == ROOT / "carls"


def test_pip_install_adds_one_top_level_import_name(tmp_path: Path) -> None:
    """Build the wheel from a copy of the sources (so nothing is written into the checkout)
    and install it into a fresh virtual environment: only ``carls`` is added."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("carls", *LAYERS):
        shutil.copytree(
            ROOT / name, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__")
        )
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(wheels),
            str(src),
        ],
        check=True,
        cwd=tmp_path,
    )
    env = tmp_path / "env"
    venv.create(env, with_pip=True)
    python = env / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )

    def top_level() -> set[str]:
        return {
            p.name.removesuffix(".py")
            for p in site.iterdir()
            if not p.name.endswith((".dist-info", ".pth")) and p.name != "__pycache__"
        }

    before = top_level()
    (wheel,) = wheels.glob("carls-*.whl")
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)],
        check=True,
    )
    assert top_level() - before == {"carls"}
    installed = site / "carls"
    for layer in LAYERS:  # real files, not links back into a checkout
        init = installed / layer / "__init__.py"
        assert init.is_file() and not (installed / layer).is_symlink(), layer
