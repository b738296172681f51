"""Trainers, evaluation and dataset generation that read only the feature store."""
