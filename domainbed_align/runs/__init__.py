"""Runs on disk: results files, liveness of a job, launchers."""
