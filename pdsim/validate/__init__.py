"""Fidelity checks: compare simulations with measured runs of real engines."""
