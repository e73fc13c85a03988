#!/bin/sh
# An exec function (`dispatcher serve --function 11=exec:examples/functions/greet.sh`):
# one process per request, the payload on stdin, the answer on stdout,
# the request's ids in FAAS_* variables. A non-zero exit is ERROR 6, with
# the last line of stderr as its message.
name=$(cat)
if [ -z "$name" ]; then
    echo "greet: send a name" >&2
    exit 1
fi
printf 'hello, %s (request %s, served by %s)\n' "$name" "$FAAS_REQUEST_ID" "$(id -un)"
