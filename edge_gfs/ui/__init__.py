"""Drawing and the GUI-free operator session (label overlays, legends, colours)."""
