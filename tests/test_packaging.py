"""What can be checked of the MAP here (no Docker): app.yaml as holoscan-cli 4.2 reads it, the
build context the packager copies, and the app starting from that layout as a MAP runs it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT, read_results

pytestmark = pytest.mark.slow  # runs the app, trains or fuzzes: not in the fast tier


def test_app_yaml_is_what_the_packager_accepts():
    from holoscan_cli.packager.config_reader import ApplicationConfiguration

    cfg = ApplicationConfiguration()
    cfg.read(ROOT / "app.yaml")
    assert cfg.title().startswith("bodypart-xr")
    assert cfg._application_object["version"] == "0.1.0"
    res = cfg._resource_object
    assert {"cpu", "gpu", "memory", "gpuMemory"} <= set(res)


def test_packager_detects_a_python_app_with_requirements(tiny_package, tmp_path):
    from holoscan_cli.common.enum_types import ApplicationType
    from holoscan_cli.packager.parameters import PackageBuildParameters

    from app.map_context import build_context, package_command

    ctx = build_context(tmp_path / "map", tiny_package)
    params = PackageBuildParameters()
    params.application = ctx / "app"
    assert params.application_type == ApplicationType.PythonModule
    assert params.requirements_file_path == ctx / "app" / "requirements.txt"
    assert "monai-deploy package" in package_command(ctx)


def test_app_runs_from_the_map_layout(tiny_package, corpus, tmp_path):
    from app.map_context import build_context

    ctx = build_context(tmp_path / "map", tiny_package)
    (tmp_path / "input").mkdir()
    shutil.copy(corpus / "wg04_RG3_J2KI.dcm", tmp_path / "input" / "leg")
    env = {**os.environ, "HOLOSCAN_INPUT_PATH": str(tmp_path / "input"), "HOLOSCAN_OUTPUT_PATH": str(tmp_path / "output"),
           "HOLOSCAN_MODEL_PATH": str(ctx / "models"), "HOLOSCAN_CONFIG_PATH": str(ctx / "app.yaml")}
    # as the MAP's command does: python3 /opt/holoscan/app, from another working directory, its
    # settings from the config the packager copied (HOLOSCAN_CONFIG_PATH)
    proc = subprocess.run([sys.executable, str(ctx / "app")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = read_results(tmp_path / "output")
    assert [i["status"] for i in doc["instances"]] == ["classified"]


def test_broken_model_is_never_packaged(tiny_package, tmp_path):
    from app.map_context import build_context
    from operators.model.model_package import ModelPackageError

    pkg = tmp_path / "pkg"
    shutil.copytree(tiny_package, pkg)
    (pkg / "models/efficientnet_lite0.pt").write_bytes(b"oops")
    with pytest.raises(ModelPackageError):
        build_context(tmp_path / "map", pkg)
