"""The drift checks ``monitoring.drift.DriftMonitor`` composes, one module each."""
