"""Examples of code written outside fs that fs runs: plug-in selectors for ``fs bench --methods pkg.module:attr``."""
