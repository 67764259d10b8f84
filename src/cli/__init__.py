"""Command-line entry points. Nothing imports this package; heavy modules load inside the commands."""
