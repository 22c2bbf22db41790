"""Shared helpers: user-facing errors, atomic file writes, seeding, run naming, devices, distributed set-up."""
