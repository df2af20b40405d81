"""Batch jobs wired to Serve: the batch runner, its lines, and `ray job submit`."""
