"""Shared training engine (device, seeds, loop, atomic checkpoints, resume, cancel, progress)."""
