"""Co-generation building blocks (the target layout of the structure issue; more modules move here)."""
