"""Compile jobs: a model version compiled for a list of hardware profiles in the background."""
