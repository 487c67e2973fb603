"""stemstrain: nanoscale strain from 4D-STEM with a supervised neural network."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("stemstrain")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0+unknown"
