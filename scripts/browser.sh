#!/usr/bin/env bash
# bash scripts/browser.sh      (make browser; .ci/run runs it before the tests)
# Installs Debian's chromium for the web app's browser test (tests/test_app_browser.py drives it with
# Playwright as its executable: Playwright's own browser download needs the internet). Only the tests
# need it; the app itself does not. Where it cannot be installed, that test skips and says so.
set -euo pipefail
if command -v chromium >/dev/null || [ -x /usr/lib/chromium/chromium ]; then
  echo "browser: chromium present ($(chromium --version 2>/dev/null | head -1))"; exit 0
fi
if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO="sudo"; else
  echo "browser: need root for: apt-get install -y chromium" >&2; exit 1
fi
command -v apt-get >/dev/null || { echo "browser: no apt-get; install chromium with your package manager" >&2; exit 1; }
echo "browser: installing Debian's chromium (for tests/test_app_browser.py)"
$SUDO apt-get install -y -q chromium >/dev/null 2>&1 \
  || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q chromium >/dev/null; }
chromium --version 2>/dev/null | head -1
