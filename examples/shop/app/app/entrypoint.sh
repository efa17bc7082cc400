#!/bin/sh
# devmesh tells every app who it is: DEVMESH_SERVICE, DEVMESH_VERSION, DEVMESH_PORT, DEVMESH_POD.
port="${DEVMESH_PORT:-8000}"
if [ "$MODE" = tcp ]; then
    echo "$DEVMESH_SERVICE/$DEVMESH_VERSION: tcp line service on :$port"
    exec nc -ll -p "$port" -e /bin/sh /app/tcp.sh
fi
echo "$DEVMESH_SERVICE/$DEVMESH_VERSION: http on :$port, calls: ${UPSTREAMS:-none}"
exec nc -ll -p "$port" -e /bin/sh /app/http.sh
