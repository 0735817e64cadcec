# Sourced by scripts/demo.sh and scripts/demo_cloud.sh: the repository root, the venv, the default bundle and the
# demo's private task.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BIN=.venv/bin
BUNDLE=artifacts/bundles/smollm2-int4
PROFILE=examples/demo_profile.json
INSTRUCTION="${INSTRUCTION:-Write a short post for my followers about why I am taking a break from posting.}"
