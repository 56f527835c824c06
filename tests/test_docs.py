"""The README's project layout names every module and script there is, and nothing that is not there."""

from __future__ import annotations

import re

from tests.conftest import ROOT


def _layout() -> dict[str, set[str]]:
    """Folder -> the file names the README's layout block gives for it."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Project layout", 1)[1].split("```", 2)[1]
    named: dict[str, set[str]] = {}
    folder = None
    for line in block.splitlines():
        m = re.match(r"^(\s*)([\w.]+/)", line)
        if m:
            folder = ("operators/" + m.group(2)) if m.group(1) else m.group(2)
        if folder:
            named.setdefault(folder, set()).update(re.findall(r"\b(\w+\.(?:py|sh|json|yaml))\b", line))
    return named


def test_the_readme_layout_names_every_module_of_the_app_and_operators_and_nothing_else():
    named = _layout()
    for folder in ("operators/", "operators/input/", "operators/model/", "operators/outputs/", "app/", "training/",
                   "benchmarks/"):
        on_disk = {p.name for p in (ROOT / folder).glob("*.py") if p.name != "__init__.py"}
        on_disk |= {p.name for p in (ROOT / folder).glob("*.sh")}
        assert on_disk - named[folder] == set(), f"{folder}: not in the README layout"
        listed = {n for n in named[folder] if n.endswith((".py", ".sh"))}
        assert listed - on_disk == set(), f"{folder}: in the README layout but not in the tree"
