"""The bundle format's names and its error: what `bundle` (read, verify, write) and `signing` share.

Apart from `bundle.py` so that `signing` can use them without importing `bundle` back (no import circle)."""

FORMAT = "cogenesis-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"  # optional Ed25519 signature over manifest.json's bytes (cogenesis.runtime.signing)
UNLISTED = (MANIFEST, SIGNATURE)  # the only files a bundle may hold that its files table does not list
REQUIRED_FILES = ("tokenizer.json", "chat_template.jinja", "generation_config.json")


class BundleError(Exception):
    """A bundle that cannot be used; the message names the file and the fix."""
