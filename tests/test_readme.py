"""The README's Python API example runs as printed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from conftest import REPO


def test_the_readme_api_example_runs_as_printed(tmp_path):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert len(blocks) == 1, "the README has one Python example"
    script = tmp_path / "example.py"
    script.write_text(blocks[0], encoding="utf-8")
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, encoding="utf-8", errors="replace", timeout=1500)
    assert done.returncode == 0, done.stderr[-3000:]
    dice = float(done.stdout.strip().splitlines()[-1])  # the example prints the all-bone Dice last
    assert 0.0 <= dice <= 1.0
    meshes = {p.name for p in Path(tmp_path, "example", "stl").iterdir()}
    assert meshes and meshes <= {"femur.stl", "patella.stl", "tibia.stl"}, meshes
