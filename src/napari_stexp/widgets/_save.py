"""Ask before a Save overwrites something (a file, or a non-empty folder)."""

from __future__ import annotations

import os
from pathlib import Path


def exists_with_content(path: str | os.PathLike) -> bool:
    """Would writing ``path`` replace something: an existing file or a non-empty folder?"""
    p = Path(path)
    if p.is_dir():
        return any(p.iterdir())
    return p.exists()


def confirm_overwrite(parent, path: str | os.PathLike) -> bool:
    """``True`` when ``path`` is free or the user agreed (a Yes/No question, No by default) to
    replace what is there."""
    if not exists_with_content(path):
        return True
    from qtpy.QtWidgets import QMessageBox

    what = "folder" if Path(path).is_dir() else "file"
    answer = QMessageBox.question(
        parent, "Overwrite?", f"The {what} {path} exists. Replace it?",
        QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
        QMessageBox.StandardButton.No)
    return answer == QMessageBox.StandardButton.Yes
