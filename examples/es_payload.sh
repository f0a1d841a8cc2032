#!/bin/bash
# A tiny event-service payload in bash, through the pilot's line protocol
# (services/eventclient/README.md, "The line protocol"): it takes one event range at a time,
# writes out_<range id>.dat with one line per event, reports it done, and exits 0 when no
# range is left. Only bash's echo and read talk to the pilot.
#
#     bash es_payload.sh [--fail-every K]     (every K-th range is reported failed: tests)
set -u
IN=${NODEPILOT_EVENTS_IN:-./events.in}     # the pilot's answers
OUT=${NODEPILOT_EVENTS_OUT:-./events.out}  # our commands
fail_every=0
[ "${1:-}" = "--fail-every" ] && fail_every=${2:-0}

# One command, one answer line. An empty answer means the eventclient went away (a restart):
# ask again (done and failed are safe to say twice).
ask() {
    local tries=0
    while :; do
        echo "$1" > "$OUT" && IFS= read -r answer < "$IN" && [ -n "$answer" ] && return 0
        tries=$((tries + 1))
        if [ "$tries" -ge 300 ]; then
            echo "es_payload.sh: no answer to '$1'" >&2
            exit 1
        fi
        sleep 0.2
    done
}

# Every fetch has a request id of its own, the same when it is asked again: if its answer was
# lost (the eventclient killed in between), the same range comes back instead of another.
fetch_id=$$-$RANDOM$RANDOM$RANDOM
count=0
while ask "range $fetch_id-$count"; do
    read -r id first last _rest <<< "$answer"  # <id> <startEvent> <lastEvent> <LFN> <GUID> <scope>
    case $id in
        none) echo "es_payload.sh: no more ranges after $count"; exit 0 ;;
        error)
            echo "es_payload.sh: $answer" >&2
            [ "$first" = 503 ] || exit 1  # 503: the source is away for now
            sleep 1
            continue ;;
    esac
    count=$((count + 1))
    if [ "$fail_every" -gt 0 ] && [ $((count % fail_every)) -eq 0 ]; then
        ask "failed $id 1224 failed on purpose (every ${fail_every}th range)"
    else
        out="out_${id//[^A-Za-z0-9._-]/_}.dat"
        for ((event = first; event <= last; event++)); do echo "$id $event"; done > "$out"
        ask "done $id $out $((last - first + 1))"
    fi
    case $answer in
        ok*) ;;
        *) echo "es_payload.sh: $id: $answer" >&2 ;;
    esac
done
