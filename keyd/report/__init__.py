"""Reporting: status, rendering, metrics, HTTP endpoints."""
