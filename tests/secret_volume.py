"""A Secret volume as the kubelet keeps it: each version of the files in its own directory, `..data` a symlink to
the current one, each key a symlink through `..data`; an update swaps `..data` in one rename."""

from __future__ import annotations

import os
from pathlib import Path


def update_secret_file(directory: Path, name: str, text: str) -> Path:
    """Write a new version of `directory/name` the kubelet's way; returns the file's path."""
    version = directory / f"..version-{len(list(directory.glob('..version-*')))}"
    version.mkdir(parents=True)
    (version / name).write_text(text)
    link = directory / "..data_tmp"
    link.symlink_to(version.name)
    os.replace(link, directory / "..data")
    if not (directory / name).is_symlink():
        (directory / name).symlink_to(f"..data/{name}")
    return directory / name
