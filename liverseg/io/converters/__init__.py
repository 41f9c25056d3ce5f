"""Converters from downloaded public datasets (ATLAS 2023 MRI, LiTS CT) to the raw dataset layout."""
from __future__ import annotations

from liverseg.io.converters.atlas import convert_atlas
from liverseg.io.converters.lits import convert_lits

__all__ = ["convert_atlas", "convert_lits"]
