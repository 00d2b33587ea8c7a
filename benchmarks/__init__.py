"""Benchmarks of replica, each measured against a baseline in the same run."""
