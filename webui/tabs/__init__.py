"""One module per tab; each builds its layout and wires its events."""
