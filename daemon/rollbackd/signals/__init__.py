"""Measurements: Prometheus queries and HTTP probes. No decisions are made here."""
