"""Test-time-compute evaluation: one stored table of samples, every strategy's curve from it."""
