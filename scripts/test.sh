#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what the tests need when it is missing
# (OpenSSH client, git, ngircd, PostgreSQL), then checks formatting and lints, and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v ssh >/dev/null 2>&1 || missing+=(openssh-client)
command -v ssh-keygen >/dev/null 2>&1 || missing+=(openssh-client)
command -v git >/dev/null 2>&1 || missing+=(git)
# The IRC bot's tests run their own ngircd (Debian's) on loopback; the TLS one makes its
# certificates with openssl.
command -v ngircd >/dev/null 2>&1 || [ -x /usr/sbin/ngircd ] || missing+=(ngircd)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
# The browser test drives Debian's Chromium through chromedriver.
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
# The store conformance suite runs each case against a private PostgreSQL server it starts
# itself (tests/support/postgres.rs); it needs Debian's server binaries.
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi

# The real Python Buildbot client, for the compatibility test of `buildbot try --connect=ssh`.
if [ ! -x target/pyvenv/bin/buildbot ]; then
  if ! python3 -m venv --help >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3 python3-venv
  fi
  mkdir -p target
  python3 -m venv target/pyvenv
  target/pyvenv/bin/pip install -q --disable-pip-version-check 'buildbot==4.3.0'
fi
# A real SMTP server for the notification tests (tests/it/notify.rs), in the same venv.
if ! target/pyvenv/bin/python -c 'import aiosmtpd' >/dev/null 2>&1; then
  target/pyvenv/bin/pip install -q --disable-pip-version-check 'aiosmtpd==1.4.6'
fi

# pytest, whose --junitxml reports the test-results tests feed through a real build.
if [ ! -x target/pytest-venv/bin/pytest ]; then
  mkdir -p target
  python3 -m venv target/pytest-venv
  target/pytest-venv/bin/pip install -q --disable-pip-version-check 'pytest==8.3.4'
fi

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --all-targets --locked
