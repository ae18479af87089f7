#!/bin/bash
# LYRA_WORKER_EXE wrapper: the worker for "small" gets a backend that floods
# stderr (as a verbose or failing GPU backend does); others run unchanged.
case " $* " in *" --name small "*) ( exec yes 'ggml_backend: something is wrong with the device, retrying ...........' >&2 ) & ;; esac
exec "${LYRA_REAL:-$(dirname "$0")/../../build/lyra}" "$@"
