#!/bin/sh
# One HTTP/1.1 request per connection (stdin/stdout are the socket).
#   /healthz     200
#   /flaky...    503 or 200, at random, half each
#   anything     200, the request line as received ("GET /tell?x=1"), so a test sees the
#                path the sidecars forwarded
CR=$(printf '\r')
read -r method path _proto
while IFS= read -r line; do
    line="${line%"$CR"}"
    [ -z "$line" ] && break
done
status="200 OK"
case "$path" in
    /healthz) body="ok" ;;
    /flaky*)
        body="$DEVMESH_SERVICE flaky"
        [ $((RANDOM % 2)) -eq 0 ] && status="503 Service Unavailable" ;;
    *) body="$method $path" ;;
esac
printf 'HTTP/1.1 %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s' \
    "$status" "${#body}" "$body"
