"""Shared core: pure image/geometry ops (numpy, OpenCV, torch) and the command-line entry points."""
