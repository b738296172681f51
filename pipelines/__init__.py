"""Trainers and evaluation: they read the feature store (and its checkpoints) and never write it."""
