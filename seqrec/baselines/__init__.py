"""Baselines trained and evaluated on the same splits as seqrec: most-popular and SASRec (full CE)."""

from seqrec.baselines.popularity import PopularityModel
from seqrec.baselines.sasrec import SASRec, SASRecOutput

__all__ = ["PopularityModel", "SASRec", "SASRecOutput"]
