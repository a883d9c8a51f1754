"""Shared test helpers. The ``ferryman_mock`` fixture comes from Ferryman's own pytest plugin."""
