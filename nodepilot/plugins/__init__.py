"""Experiment and site plug-ins."""
