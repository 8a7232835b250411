"""A permission warning as a value: who besides keyd can read a key file.

The directory source (``keyd.sources.directory``) makes them, the
inventory stores them (``keyd.store.models.Exposures``: the one place
that turns them into the ``key_locations.warning`` text and back) and the
views say them (``keyd status``, the HTML pages). Nothing joins them into
text to split them again.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Exposure:
    """``path`` (a key file, or with ``directory`` the directory holding
    one) is readable beyond keyd's own group; ``readers`` says by whom and
    what to do, e.g. ``readable by other users (mode 0644, chmod o-r it)``."""

    path: str
    readers: str
    directory: bool = False

    @property
    def message(self) -> str:
        """The warning as said next to the key file it concerns."""
        return f"{'its directory' if self.directory else 'key file'} {self.path} is {self.readers}"


def exposure_text(exposures: Iterable[Exposure]) -> str | None:
    """One location's warnings as one line (``keyd status --json``, the
    HTML pages), or None when there are none."""
    return "; ".join(e.message for e in exposures) or None
