"""Measured detector files into the 4D-data contract: lazy readers of each format
(:mod:`~stemstrain.ingest.readers`) and the streamed conversion (:mod:`~stemstrain.ingest.convert`)."""

from stemstrain.ingest.convert import ingest
from stemstrain.ingest.readers import FORMATS, detect_format, read_raw

__all__ = ["FORMATS", "detect_format", "ingest", "read_raw"]
