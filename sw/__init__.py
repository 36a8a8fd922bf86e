"""The Braze compiler and runtime."""
