"""Where a case comes from: a real CT or a synthetic phantom. One home for the names and the rule.

A folder written by ``pancreas synth`` holds :data:`PHANTOM_MANIFEST`; every other folder is real data.
Reports, datasets and bundles name the source of each figure so a phantom score is never read as a
real-data score.
"""

from __future__ import annotations

from pathlib import Path

REAL, PHANTOM, UNKNOWN = "real", "phantom", "unknown"
#: the sources a case can have (``unknown``: a table written before sources were recorded)
SOURCES = (REAL, PHANTOM)
#: written by ``pancreas synth`` at the root of its output
PHANTOM_MANIFEST = "phantoms.json"


def source_of(folder: str | Path, *, parents: int = 2) -> str:
    """``phantom`` if ``folder`` or one of its ``parents`` nearest parents holds the phantom manifest, else ``real``.

    Parents count because a split folder (``phantoms/validation``) is often what is passed.
    """
    folder = Path(folder).resolve()
    for candidate in [folder, *folder.parents][: parents + 1]:
        if (candidate / PHANTOM_MANIFEST).is_file():
            return PHANTOM
    return REAL
