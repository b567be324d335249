"""Config-string grammar: parse, canonical emission, errors with a caret."""

from .errors import ConfigError
from .model import Config, Placement, Point
from .parser import parse
from .paths import format_path, to_dotted

__all__ = ["Config", "ConfigError", "Placement", "Point", "format_path", "parse", "to_dotted"]
