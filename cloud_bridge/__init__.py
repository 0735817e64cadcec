"""cogenesis.cloud_bridge: everything that talks to the cloud, through one egress choke point."""

from .guard import EgressGuard, Finding, PrivacyViolation, SanitizeResult, sanitize_instruction

__all__ = ["EgressGuard", "Finding", "PrivacyViolation", "SanitizeResult", "sanitize_instruction"]
