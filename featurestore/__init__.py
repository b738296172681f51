"""fs: an offline feature store for efficient action recognition in long videos, using audio as a cheap preview."""
__version__ = "0.1.0"
SCHEMA_VERSION = 1
