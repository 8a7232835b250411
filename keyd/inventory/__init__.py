"""Inventory: reconcile sources into rows; the leader guard."""
