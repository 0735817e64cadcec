"""CoGenesis Edge: on-device small model + cloud large model co-generation."""
__version__ = "0.1.0"
