"""The Braze accelerator in Amaranth HDL."""
