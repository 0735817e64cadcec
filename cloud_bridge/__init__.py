"""cogenesis.cloud_bridge: everything that talks to the cloud, through one egress choke point."""

from .client import CloudClient, CloudError
from .guard import EgressGuard, Finding, PrivacyViolation, SanitizeResult, sanitize_instruction

__all__ = ["CloudClient", "CloudError", "EgressGuard", "Finding", "PrivacyViolation", "SanitizeResult", "sanitize_instruction"]
