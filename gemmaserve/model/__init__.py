"""Gemma 4 nn.Modules, their config and the checkpoint loader."""
