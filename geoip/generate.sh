#!/bin/sh
# Regenerates geoip/test-city.mmdb and geoip/test-asn.mmdb from examples/gen_test_mmdb.rs
# (reproducible bytes).
# Run from anywhere; commit the result together with any change to the generator.
set -eu
cd "$(dirname "$0")/.."
cargo run --quiet --example gen_test_mmdb -- geoip/test-city.mmdb geoip/test-asn.mmdb
