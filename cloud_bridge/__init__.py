"""cogenesis.cloud_bridge."""
