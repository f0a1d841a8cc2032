#!/usr/bin/env bash
# Debian packages the tests run for real: an XRootD server and client, bubblewrap, memcached (the test
# Rucio server's cache), chromium (the monitor's web page in a headless browser; about 15 s to install
# here).
# Installs only what is missing; needs root (or passwordless sudo) when something is.
set -euo pipefail
need=()
command -v xrootd >/dev/null || need+=(xrootd-server)
command -v xrdcp >/dev/null || need+=(xrootd-client)
command -v bwrap >/dev/null || need+=(bubblewrap)
command -v memcached >/dev/null || need+=(memcached)
[ -x /usr/bin/chromium ] || need+=(chromium)
[ ${#need[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo -n"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq >/dev/null
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
echo "installed: ${need[*]}"
