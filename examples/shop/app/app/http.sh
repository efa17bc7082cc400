#!/bin/sh
# One HTTP/1.1 request per connection (stdin/stdout are the socket; busybox nc forks per client).
#   /healthz           200 ok
#   /status/NNN        answers NNN (for retries, outlier detection)
#   /echo              the request line and headers as received (what the sidecars added)
#   anything else      who served it, then one line per upstream in $UPSTREAMS, called by name
# Calls to upstreams carry the request's trace headers on (the set Istio asks apps to
# forward): then the sidecars' spans of those calls join this request's trace.
CR=$(printf '\r')
read -r method path _proto
headers=""
set --  # the trace headers to forward, as wget --header arguments
while IFS= read -r line; do
    line="${line%"$CR"}"
    [ -z "$line" ] && break
    headers="$headers$line
"
    # The header's name in lower case. Envoy sends them so: those take no fork (a fork for
    # each header cost about 10 ms a request).
    key="${line%%:*}"
    case "$key" in *[A-Z]*) key=$(echo "$key" | tr 'A-Z' 'a-z') ;; esac
    case "$key" in
        traceparent|tracestate|x-request-id|b3|x-b3-*|x-ot-span-context|x-amzn-trace-id|\
        x-cloud-trace-context|grpc-trace-bin|baggage|x-datadog-*)
            set -- "$@" --header "$line" ;;
    esac
done

status="200 OK"
me="$DEVMESH_SERVICE/$DEVMESH_VERSION"
case "$path" in
    /healthz) body="ok
" ;;
    /status/*)
        code="${path#/status/}"
        status="$code status"
        body="$me answered $code
" ;;
    /echo*) body="$method $path
$headers" ;;
    *)
        body="$me ($DEVMESH_POD) served $method $path
"
        for upstream in $UPSTREAMS; do
            name="${upstream%%:*}"
            if [ "$name" != "$upstream" ]; then   # name:port is a TCP upstream
                reply=$(echo "widget" | nc -w 2 "$name" "${upstream#*:}" 2>&1 | head -n 1)
            else
                reply=$(wget -q -O - "$@" "http://$name$path" 2>&1 | head -n 1)
            fi
            body="$body  -> $name: ${reply:-no answer}
"
        done ;;
esac
printf 'HTTP/1.1 %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s' \
    "$status" "${#body}" "$body"
