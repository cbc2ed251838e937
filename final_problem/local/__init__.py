"""Run the platform's servers on one host from the configuration the charts render.

Integration tests and benchmarks use these launchers, so the configuration they
exercise is the one that is deployed, with only ports and paths remapped.
"""
