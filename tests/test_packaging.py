"""What an installed agent needs beyond the Python packages: the firmware profiles."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_profile_folder_is_installed_as_data() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    data = project["tool"]["setuptools"]["data-files"]
    for folder in sorted((ROOT / "firmware-profiles").iterdir()):
        if not (folder / "profile.toml").is_file():
            continue
        target = f"share/outpost/firmware-profiles/{folder.name}"
        assert target in data, f"add {folder.name} to [tool.setuptools.data-files]"
        assert sorted(data[target]) == sorted(
            [
                f"firmware-profiles/{folder.name}/profile.toml",
                f"firmware-profiles/{folder.name}/README.md",
            ]
        )
