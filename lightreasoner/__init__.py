"""LightReasoner: a small amateur model teaches a larger expert where its reasoning is strong."""

__version__ = "0.1.0"
