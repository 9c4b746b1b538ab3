"""Domain exceptions. Each carries a stable ``code`` that the service maps to an HTTP ``detail``."""

from __future__ import annotations


class PancreasError(ValueError):
    """Base class for errors caused by user input (files, bundles, options)."""

    code: str = "invalid_input"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class InvalidImageError(PancreasError):
    """An image file is unreadable or unsuitable (dimension, dtype, spacing, values, size)."""

    code = "invalid_image"


class DatasetError(PancreasError):
    """A dataset folder is malformed (layout, names, labels, geometry)."""

    code = "invalid_dataset"


class BundleError(PancreasError):
    """A model bundle is missing, incomplete or corrupt."""

    code = "invalid_bundle"


class JobCancelled(RuntimeError):
    """A prediction was stopped before it finished because its caller set the cancel event (e.g. a timeout)."""
