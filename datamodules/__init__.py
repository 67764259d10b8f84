"""Lightning data modules and their plain dataset parts (no model code)."""
