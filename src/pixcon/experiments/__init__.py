"""Experiments that compose the library: the demo. The library never imports this package."""
