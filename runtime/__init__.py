"""cogenesis.runtime."""
