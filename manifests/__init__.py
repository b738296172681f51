"""Dataset sources: the manifest CSV schema, named datasets, the builders that make manifests from official
annotation files, the synthetic generator, and their class lists and CSVs."""
