"""Simulation back ends behind one device interface."""
