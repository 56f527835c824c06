"""Lay out what ``monai-deploy package`` needs: an application folder that runs on its own.

The packager copies one folder to ``/opt/holoscan/app`` and runs ``python3 /opt/holoscan/app``.
The project keeps ``app/`` and ``operators/`` apart (one concept each), so the context puts both
packages inside one folder with a launcher ``__main__.py``, beside ``app.yaml`` and the models.
"""

from __future__ import annotations

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

LAUNCHER = '''"""MAP entry point: python3 /opt/holoscan/app (HOLOSCAN_* variables give the paths)."""
import sys

from app.__main__ import main

sys.exit(main())
'''


def build_context(dest: Path, models: Path | None = None) -> Path:
    """Create ``dest`` with ``app/`` (launcher + packages), ``app.yaml`` and ``models/``; return ``dest``."""
    from app.app import DEFAULT_MODEL
    from operators.model.model_package import load_package

    dest = Path(dest)
    models = Path(models) if models else DEFAULT_MODEL
    load_package(models)  # never package a broken model
    if dest.exists():
        shutil.rmtree(dest)
    app_dir = dest / "app"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "models")
    shutil.copytree(ROOT / "app", app_dir / "app", ignore=ignore)
    shutil.copytree(ROOT / "operators", app_dir / "operators", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (app_dir / "__main__.py").write_text(LAUNCHER)
    shutil.copy(ROOT / "app" / "requirements.txt", app_dir / "requirements.txt")
    shutil.copy(ROOT / "app.yaml", dest / "app.yaml")
    shutil.copytree(models, dest / "models")
    return dest


def package_command(dest: Path, tag: str = "bodypart-xr:0.1.0") -> str:
    return (f"monai-deploy package {dest}/app -c {dest}/app.yaml -m {dest}/models -t {tag} "
            "--platform x86_64 -l DEBUG")
