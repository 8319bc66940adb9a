"""nn.Modules only: no I/O, no tracking, nothing of medgen imported except config types."""
