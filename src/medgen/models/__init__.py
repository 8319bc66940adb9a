"""nn.Modules only. Nothing here imports medgen or does I/O at import."""
