#!/usr/bin/env bash
# What the test suite may not leave behind: temp dirs and files of ours in /tmp and mounts
# under them. `leftovers.sh snapshot FILE` records what is there before the suite;
# `leftovers.sh check FILE` fails listing what the suite added.
set -euo pipefail
now() {
    { ls -d /tmp/osb-* 2>/dev/null || true; awk '$5 ~ "^/tmp/osb-" {print "mount " $5}' /proc/self/mountinfo; } | sort
}
case "${1:-}" in
snapshot) now >"$2" ;;
check)
    added=$(comm -13 "$2" <(now))
    if [ -n "$added" ]; then
        echo "these were left behind:" >&2
        echo "$added" | head -50 >&2
        exit 1
    fi
    echo "nothing left behind in /tmp"
    ;;
*) echo "usage: $0 snapshot|check FILE" >&2; exit 2 ;;
esac
