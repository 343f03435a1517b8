#!/usr/bin/env bash
# Services the end-to-end tests run for real: Prometheus (Debian's package, which ships promtool too) scrapes a
# local Ray head in tests/test_metrics_e2e.py. Installs what is missing; does nothing when it is all there. Only the
# binaries are used: the tests start their own server on a loopback port with a temporary storage directory, so the
# package's systemd unit (which would listen on 0.0.0.0:9090) is left stopped where the system has systemd.
set -euo pipefail
# Chromium (Debian's package): the headless browser of tests/test_chat_page.py (tests/browser.py drives it).
if command -v prometheus >/dev/null && command -v promtool >/dev/null && command -v chromium >/dev/null; then
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "install_test_services.sh: no apt-get here; install Prometheus (prometheus and promtool on PATH) yourself" >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
# policy-rc.d exit 101: Debian's maintainer scripts do not start the service they install.
policy=/usr/sbin/policy-rc.d
had_policy=0
if [ -e "$policy" ]; then had_policy=1; fi
if [ "$had_policy" = 0 ]; then
  printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
  $sudo chmod +x "$policy"
  trap '$sudo rm -f "$policy"' EXIT
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends prometheus chromium >/dev/null
command -v prometheus >/dev/null && command -v promtool >/dev/null && command -v chromium >/dev/null
