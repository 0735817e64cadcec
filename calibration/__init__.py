"""cogenesis.calibration."""
