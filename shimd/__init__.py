"""tug-shim: one small daemon per container. Imports nothing from supervisor/."""
