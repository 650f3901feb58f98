"""The installed version of lamps-serving."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def package_version() -> str:
    """The distribution's version, or "unknown" when running from an uninstalled tree."""
    try:
        return version("lamps-serving")
    except PackageNotFoundError:
        return "unknown"
