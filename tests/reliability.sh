#!/usr/bin/env bash
# The reliability suite: the fail-point build of the integration tests and the editor property
# tests, then one summary line added up from the counts each test recorded when it passed
# (tests/support/tally.rs), e.g.
#   reliability: fail points 50/50 recovered, kills 1/1, editor cases 60000/60000, bad inputs 41/41 refused clean, races 4/4
# Exits non-zero when a test fails or a kind of case recorded nothing (a test that did not run).
set -euo pipefail
cd "$(dirname "$0")/.."

target=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
tally=$target/tmp/reliability
rm -rf "$tally"

cargo test --locked --features failpoints --test cli --test txn --test planner --test editors

cat "$tally"/* 2>/dev/null | awk -F'\t' '
    { passed[$1] += $2; total[$1] += $3 }
    END {
        n = split("fail points|kills|editor cases|bad inputs|races", order, "|")
        words["fail points"] = " recovered"; words["bad inputs"] = " refused clean"
        line = ""; missing = ""
        for (i = 1; i <= n; i++) {
            k = order[i]
            if (!(k in total)) { missing = missing " " k; continue }
            line = line (line == "" ? "" : ", ") k " " passed[k] "/" total[k] words[k]
            if (passed[k] != total[k]) bad = 1
        }
        print "reliability: " line
        if (missing != "") { print "reliability: nothing recorded for:" missing > "/dev/stderr"; exit 1 }
        exit bad
    }'
