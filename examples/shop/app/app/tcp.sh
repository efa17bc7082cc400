#!/bin/sh
# One connection: answer each line with who we are and how many items are in stock.
while IFS= read -r line; do
    echo "$DEVMESH_SERVICE/$DEVMESH_VERSION: ${line:-?} in stock: 42"
done
