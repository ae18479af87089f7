#!/bin/bash
# start.sh HOME [serve args...]: starts build/lyra serve (or $BIN) with
# --home HOME --port 0 --models-dir ${MODELS:-build/models} in the
# background; HOME.pid holds its pid, HOME.rc its exit status once it ends,
# HOME.log its output.  Prints the port.  Run from the repository root.
H=$1; shift; BIN=${BIN:-build/lyra}
mkdir -p $H; chmod 700 $H
rm -f $H/serve.json $H.rc
( LYRA_MODELS_THREADS=${LYRA_MODELS_THREADS:-1} $BIN serve --home $H --port 0 --models-dir ${MODELS:-build/models} "$@" >>$H.log 2>&1 & echo $! > $H.pid; wait $!; echo $? > $H.rc ) >/dev/null 2>&1 &
for i in $(seq 600); do [ -f $H/serve.json ] && break; [ -f $H.rc ] && { echo "exited rc=$(cat $H.rc)"; exit 1; }; sleep 0.05; done
python3 -c "import json;print(json.load(open('$H/serve.json'))['port'])"
