"""Alerts into responses: playbooks, the action registry, the engine, its store and audit log."""
