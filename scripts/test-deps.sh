#!/usr/bin/env bash
# Install everything the test suite needs beyond the Rust toolchain.
#
#   scripts/test-deps.sh
#
# Meant for a fresh Debian (bookworm) machine, run as root, and safe to run
# again: each step first checks whether its result is already there and
# does nothing if so.
#
# What it provides:
#   promtool          (Debian package prometheus)              rules checks and unit tests
#   amtool            (Debian package prometheus-alertmanager) Alertmanager config check
#   mandoc            (Debian package mandoc)                  man page lint
#   systemd-analyze   (Debian package systemd)                 unit file verification
#   initdb, psql      (Debian package postgresql)              throwaway PostgreSQL clusters
#                                                              (scripts/pg-throwaway.sh)
#   haproxy           (Debian package haproxy)                 load-balancer tests
#   .venv/            Python virtualenv with the OpAMP reference client used
#                     by the interoperability tests (exact pins below)
#
# A package that cannot be installed is reported with a `warning:` line and
# the script carries on: the tests that need the missing tool skip themselves
# (or fail when OPAMP_REQUIRE_TOOLS=1). The script itself exits non-zero only
# when the Python environment cannot be built.

set -uo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${REPO_ROOT}/.venv"

# Exact versions of the OpAMP interop client and its dependency closure.
# Pinned so that a new upstream release cannot change test results.
PY_PINS=(
  "opentelemetry-opamp-client==0.5b0"
  "opentelemetry-api==1.45.2"
  "protobuf==7.36.2"
  "requests==2.34.2"
  "urllib3==2.8.0"
  "idna==3.20"
  "charset-normalizer==3.5.3"
  "certifi==2026.10.19.post1"
  "typing_extensions==4.16.0"
)

export DEBIAN_FRONTEND=noninteractive

log_ok()   { printf 'ok: %s\n' "$*"; }
log_warn() { printf 'warning: %s\n' "$*" >&2; }
log_err()  { printf 'error: %s\n' "$*" >&2; }

# ---------------------------------------------------------------------------
# System tools from Debian packages
# ---------------------------------------------------------------------------

# tool -> Debian package that ships it
declare -A TOOL_PKG=(
  [promtool]=prometheus
  [amtool]=prometheus-alertmanager
  [mandoc]=mandoc
  [systemd-analyze]=systemd
  [initdb]=postgresql
  [haproxy]=haproxy
)
TOOLS=(promtool amtool mandoc systemd-analyze initdb haproxy)

# Where a tool is, or nothing: Debian keeps PostgreSQL's server programs
# (initdb, pg_ctl) in /usr/lib/postgresql/VERSION/bin, off PATH.
tool_path() {
  if command -v "$1" >/dev/null 2>&1; then
    command -v "$1"
    return 0
  fi
  if [[ "$1" == initdb ]]; then
    ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -1 | grep . && return 0
  fi
  return 1
}

APT_UPDATED=0
apt_update_once() {
  [[ ${APT_UPDATED} -eq 1 ]] && return 0
  if apt-get update -qq; then
    APT_UPDATED=1
    log_ok "apt-get update"
  else
    log_warn "apt-get update failed; trying to install from the existing package lists"
    APT_UPDATED=1
  fi
}

# apt-get install quietly; the package postinst scripts may try to start
# services, which is harmless (and fails quietly) on machines without a
# running systemd such as containers and CI sandboxes.
apt_install() {
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

missing_pkgs=()
for tool in "${TOOLS[@]}"; do
  if path="$(tool_path "${tool}")"; then
    log_ok "${tool} already installed (${path})"
  else
    missing_pkgs+=("${TOOL_PKG[${tool}]}")
  fi
done

if [[ ${#missing_pkgs[@]} -gt 0 ]]; then
  if [[ ${EUID} -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    log_warn "cannot install ${missing_pkgs[*]}: needs root and apt-get; the tests that use them will be skipped"
  else
    apt_update_once
    # One transaction first (fast path); if it fails, go package by package
    # so one unavailable package does not block the others.
    if apt_install "${missing_pkgs[@]}"; then
      :
    else
      log_warn "installing ${missing_pkgs[*]} together failed; retrying one by one"
      for pkg in "${missing_pkgs[@]}"; do
        apt_install "${pkg}" || log_warn "could not install Debian package ${pkg}"
      done
    fi
    for tool in "${TOOLS[@]}"; do
      pkg="${TOOL_PKG[${tool}]}"
      [[ " ${missing_pkgs[*]} " == *" ${pkg} "* ]] || continue
      if tool_path "${tool}" >/dev/null; then
        log_ok "${tool} installed from package ${pkg}"
      else
        log_warn "${tool} is still missing after installing ${pkg}; the tests that need it will be skipped"
      fi
    done
  fi
fi

# ---------------------------------------------------------------------------
# Python virtualenv for the OpAMP interop client
# ---------------------------------------------------------------------------

venv_ready() {
  [[ -x "${VENV}/bin/python" ]] &&
    "${VENV}/bin/python" -c 'import importlib.metadata as m; assert m.version("opentelemetry-opamp-client")=="0.5b0"' \
      >/dev/null 2>&1
}

if venv_ready; then
  log_ok "python venv ${VENV#"${REPO_ROOT}"/} already has opentelemetry-opamp-client 0.5b0"
  exit 0
fi

if ! command -v python3 >/dev/null 2>&1; then
  if [[ ${EUID} -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    apt_update_once
    apt_install python3 python3-venv || true
  fi
  if ! command -v python3 >/dev/null 2>&1; then
    log_err "python3 not found and could not be installed"
    exit 1
  fi
fi

# A half-built venv (interrupted run, python upgraded underneath) is
# rebuilt from scratch rather than patched.
if [[ -d "${VENV}" ]] && ! "${VENV}/bin/python" -c 'import sys' >/dev/null 2>&1; then
  rm -rf "${VENV}"
fi

if [[ ! -x "${VENV}/bin/python" ]]; then
  if ! python3 -m venv "${VENV}" >/dev/null 2>&1; then
    # Debian's own python3 ships venv/ensurepip in a separate package.
    rm -rf "${VENV}"
    if [[ ${EUID} -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
      apt_update_once
      apt_install python3-venv || log_warn "could not install Debian package python3-venv"
    fi
    if ! python3 -m venv "${VENV}"; then
      log_err "python3 -m venv failed"
      exit 1
    fi
  fi
  log_ok "created python venv ${VENV#"${REPO_ROOT}"/} ($("${VENV}/bin/python" --version 2>&1))"
fi

if ! "${VENV}/bin/python" -m pip install --quiet --disable-pip-version-check \
    --no-input "${PY_PINS[@]}"; then
  log_err "pip install of the OpAMP interop client failed"
  exit 1
fi

if venv_ready; then
  log_ok "installed ${PY_PINS[*]}"
else
  log_err "opentelemetry-opamp-client 0.5b0 is not importable after pip install"
  exit 1
fi
