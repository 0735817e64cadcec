"""cogenesis.export."""
