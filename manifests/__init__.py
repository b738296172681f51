"""Dataset class lists, split manifests (CSV) and the builders that make them from official annotation files."""
