"""Composition: the cycle, the scheduler and the daemon (`keyd run`, `keyd check`)."""
