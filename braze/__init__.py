"""Braze: a hardware-software co-design framework for an int8 systolic accelerator."""

from braze.isa import BrazeError, Config, ConfigError

__version__ = "0.1.0"
__all__ = ["BrazeError", "Config", "ConfigError", "__version__"]
