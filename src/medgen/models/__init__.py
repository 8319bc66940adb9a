"""nn.Modules only. Nothing here imports medgen (beyond config types) or does I/O at import."""
