"""Profile field classes: which profile fields name a person, a place, a contact, a trait or a fact.

Format knowledge shared by the egress guard (`guard.py`) and the private-term model (`terms.py`), apart from
both so that neither imports the other.
"""

from __future__ import annotations

import re

# By the words of the field name (case-insensitive, split on _ - and spaces).
_NAME_KEYS = {"name", "firstname", "lastname", "fullname", "surname", "nickname"}
_PLACE_KEYS = {"location", "city", "town", "hometown", "residence", "country", "state", "region"}
_CONTACT_KEYS = {
    "address", "street", "email", "mail", "phone", "mobile", "telephone", "tel", "username", "handle", "birthday",
    "birthdate", "dob", "ssn", "passport", "account", "iban", "postcode", "zip", "zipcode", "contact",
}
_SKIP_KEYS = {"age", "gender", "sex", "pronouns"}
_DESCRIPTIVE_KEYS = {"occupation", "job", "profession", "role", "traits", "personality", "style", "tone"}


def field_class(key: str) -> str:
    """'name' | 'place' | 'contact' | 'skip' | 'descriptive' | 'fact' for a profile field name."""
    parts = {p for p in re.split(r"[\s_\-.]+", key.casefold()) if p} | {re.sub(r"[\s_\-.]+", "", key.casefold())}
    for cls, keys in (("skip", _SKIP_KEYS), ("name", _NAME_KEYS), ("place", _PLACE_KEYS), ("contact", _CONTACT_KEYS),
                      ("descriptive", _DESCRIPTIVE_KEYS)):
        if parts & keys:
            return cls
    return "fact"
