#!/usr/bin/env bash
# Run the whole test suite, installing what it needs first: the wasm32-wasip2 target (test guests
# are built from source for it), componentize-py and ComponentizeJS (Python and JavaScript guests
# prove that components from other toolchains run unchanged; needs Node.js and npm) and aiosmtpd
# (a real SMTP server for the email tests). `.ci/run` runs exactly this.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

rustup target add wasm32-wasip2
scripts/build-foreign-guests.sh
# Auth emails are tested against a real SMTP server; the API contract by schemathesis; the S3
# endpoint by boto3 and the AWS CLI (clients nobody here wrote); delivered events by the
# CloudEvents Python SDK; Web Push by a local push service that decrypts with http_ece
# (pywebpush's) and verifies VAPID with cryptography.
python3 -m pip install --quiet --disable-pip-version-check aiosmtpd==1.4.6 schemathesis==4.32.5 \
    boto3==1.43.11 awscli==1.45.11 cloudevents==1.12.0 http-ece==1.2.1 cryptography==48.0.0
# The Python guest must be tested, not skipped.
export NIMBUS_REQUIRE_FOREIGN=1 NIMBUS_REQUIRE_SMTP=1 NIMBUS_REQUIRE_SCHEMATHESIS=1 \
    NIMBUS_REQUIRE_S3_CLIENTS=1 NIMBUS_REQUIRE_CLOUDEVENTS=1 NIMBUS_REQUIRE_PUSH_TOOLS=1
# One full build per run: incremental caches would only cost disk (they reached 17 GB here).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
cargo test --workspace --locked "$@"
