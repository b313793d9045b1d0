"""Conversions between the engine, Scipion objects and files other programs read."""
