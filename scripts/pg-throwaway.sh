#!/usr/bin/env bash
# A throwaway PostgreSQL cluster on loopback, for the tests.
#
#   scripts/pg-throwaway.sh start [DIR]   create and start a cluster in DIR (default: a new
#                                         temporary directory, named on stderr); print its URL
#   scripts/pg-throwaway.sh stop DIR      stop it and remove DIR
#
# The cluster listens on 127.0.0.1 only, on a free port, with password
# (scram-sha-256) authentication for the superuser `postgres` and a random
# password; the URL printed on stdout carries it. Durability is traded for
# speed (fsync off): never keep data in it.
#
# PostgreSQL refuses to run as root: as root, the cluster runs as the
# `postgres` user (the Debian package creates it) and DIR is handed to it.
set -euo pipefail

die() { printf 'pg-throwaway: %s\n' "$*" >&2; exit 1; }

bindir() {
  local dir
  if command -v pg_config >/dev/null 2>&1 && [[ -x "$(pg_config --bindir)/initdb" ]]; then
    pg_config --bindir
    return
  fi
  for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    [[ -x "${dir}/initdb" ]] && { echo "${dir}"; return; }
  done
  command -v initdb >/dev/null 2>&1 && { dirname "$(command -v initdb)"; return; }
  die "PostgreSQL server binaries (initdb, pg_ctl) not found: install the Debian package postgresql (scripts/test-deps.sh does)"
}

# Runs a command as the cluster's owner.
as_owner() {
  if [[ ${EUID} -eq 0 ]]; then
    id postgres >/dev/null 2>&1 || die "running as root needs the user postgres (created by the Debian package postgresql)"
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

start() {
  local dir="${1:-}" bin port password
  bin="$(bindir)"
  if [[ -z "${dir}" ]]; then
    dir="$(mktemp -d "${TMPDIR:-/tmp}/opamp-pg.XXXXXX")"
    printf 'pg-throwaway: cluster directory %s\n' "${dir}" >&2
  fi
  mkdir -p "${dir}"
  [[ -e "${dir}/data" ]] && die "${dir}/data exists already: stop that cluster first or give another directory"
  chmod 0700 "${dir}"
  [[ ${EUID} -eq 0 ]] && chown postgres: "${dir}"
  as_owner test -w "${dir}" ||
    die "${dir} is not reachable by the user running PostgreSQL (postgres): give a directory under a world-searchable one such as /tmp"
  password="$(od -An -N18 -tx1 /dev/urandom | tr -d ' \n')"
  printf '%s\n' "${password}" | as_owner tee "${dir}/pwfile" >/dev/null
  as_owner "${bin}/initdb" --pgdata="${dir}/data" --username=postgres --pwfile="${dir}/pwfile" \
    --auth-local=scram-sha-256 --auth-host=scram-sha-256 --encoding=UTF8 --no-sync \
    >"${dir}/initdb.log" 2>&1 || die "initdb failed: $(tail -5 "${dir}/initdb.log")"
  as_owner rm -f "${dir}/pwfile"
  for _ in 1 2 3 4 5; do
    port="$(free_port)"
    if as_owner "${bin}/pg_ctl" --pgdata="${dir}/data" --log="${dir}/server.log" --wait --timeout=60 \
        -o "-c listen_addresses=127.0.0.1 -c port=${port} -c unix_socket_directories='${dir}' \
            -c max_connections=400 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
        start >/dev/null 2>&1; then
      printf '%s\n' "${port}" >"${dir}/port"
      printf 'postgres://postgres:%s@127.0.0.1:%s/postgres\n' "${password}" "${port}"
      return 0
    fi
  done
  die "pg_ctl start failed: $(tail -5 "${dir}/server.log" 2>/dev/null)"
}

stop() {
  local dir="${1:-}"
  [[ -n "${dir}" ]] || die "usage: $0 stop DIR"
  if [[ -f "${dir}/data/postmaster.pid" ]]; then
    as_owner "$(bindir)/pg_ctl" --pgdata="${dir}/data" --mode=immediate --wait stop >/dev/null 2>&1 || true
  fi
  rm -rf "${dir}"
}

case "${1:-}" in
  start) shift; start "$@" ;;
  stop) shift; stop "$@" ;;
  *) die "usage: $0 start [DIR] | stop DIR" ;;
esac
