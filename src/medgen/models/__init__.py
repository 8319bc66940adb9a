"""nn.Modules only; nothing here imports the rest of medgen except config types."""
