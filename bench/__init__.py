"""Benchmarks of vaultkeeper side by side with its peers (`make bench`); never run by the tests."""
