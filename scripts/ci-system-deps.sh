#!/usr/bin/env bash
# System packages the test suite needs: Ceph (a real S3 server, radosgw), curl, and Chromium
# (headless, to check the HTML reports as a reader's browser shows them).
set -euo pipefail
need=()
for bin in radosgw ceph-mon ceph-osd curl uuidgen chromium; do command -v "$bin" >/dev/null || need+=("$bin"); done
[ ${#need[@]} -eq 0 ] && exit 0
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq radosgw ceph-mon ceph-osd curl uuid-runtime chromium >/dev/null
