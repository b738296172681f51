"""The ``fs`` command line: composes every layer below it and is imported by none."""
