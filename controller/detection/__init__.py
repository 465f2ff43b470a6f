"""Baselines, scoring and alerts: what a device normally does and when it departs from it."""
