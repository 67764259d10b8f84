"""Shared core: pure image/geometry ops (numpy, torch, kornia only) and the command-line entry points."""
