#!/usr/bin/env python3
"""first_token.py — time from sending a streamed /v1/completions request until
its first token arrives, for bench/swap.sh.  The same client for Lyra and
llama-server, so neither pays for a different client.

  first_token.py URL MODEL [MODEL...]
      One request per MODEL, all sent at once (threads released together);
      prints one line: the milliseconds from the release to each request's
      first token, in argument order, then the time until all of them had
      one (their maximum).

"First token" is the first server-sent event whose JSON has a non-empty
"choices" list: both servers send one such event per token on
/v1/completions.  Every request has a deadline (TIMEOUT_S, default 120 s);
a request that fails or passes it exits non-zero with the reason on stderr.
"""
import http.client
import json
import os
import sys
import threading
import time
import urllib.parse

TIMEOUT_S = float(os.environ.get("TIMEOUT_S", "120"))
PROMPT = "The quick brown fox jumps over the lazy dog. Tell me a story."


def first_token_ms(url, model, max_tokens=2, t_start=None):
    """Sends one streamed request; returns ms until its first token event,
    counted from t_start (a time.monotonic(); default: just before sending),
    after reading the stream to its end."""
    u = urllib.parse.urlsplit(url)
    body = json.dumps({"model": model, "prompt": PROMPT, "max_tokens": max_tokens,
                       "temperature": 0, "stream": True})
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=TIMEOUT_S)
    deadline = time.monotonic() + TIMEOUT_S
    try:
        t0 = time.monotonic() if t_start is None else t_start
        conn.request("POST", "/v1/completions", body=body,
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            raise RuntimeError("%s model %s: HTTP %d %s" % (url, model, resp.status,
                                                            resp.read(400).decode("utf-8", "replace")))
        first = None
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError("%s model %s: no end of stream in %.0f s" % (url, model, TIMEOUT_S))
            line = resp.readline()
            if not line:
                break
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                break
            if first is None:
                ev = json.loads(data)
                if "error" in ev:
                    raise RuntimeError("%s model %s: %s" % (url, model, ev["error"]))
                if ev.get("choices"):
                    first = (time.monotonic() - t0) * 1000
        # The rest of the stream is read so that the model is idle (and may
        # be evicted) when the next request comes.
        if first is None:
            raise RuntimeError("%s model %s: the stream ended without a token" % (url, model))
        return first
    finally:
        conn.close()


def concurrent(url, models):
    results = [None] * len(models)
    errors = []
    go = threading.Event()
    t_go = [0.0]

    def one(i, m):
        go.wait()
        try:
            results[i] = first_token_ms(url, m, t_start=t_go[0])
        except Exception as e:  # reported below, after every thread ended
            errors.append(str(e))

    threads = [threading.Thread(target=one, args=(i, m)) for i, m in enumerate(models)]
    for t in threads:
        t.start()
    t_go[0] = time.monotonic()
    go.set()
    for t in threads:
        t.join(TIMEOUT_S + 5)
    if errors or any(r is None for r in results):
        sys.exit("first_token: " + ("; ".join(errors) or "a request did not finish"))
    # All times count from the same release, so the last first token is the max.
    print(" ".join("%.1f" % r for r in results), "%.1f" % max(results))


def main(argv):
    try:
        if len(argv) >= 2 and not argv[0].startswith("-"):
            concurrent(argv[0], argv[1:])
        else:
            sys.exit(__doc__)
    except (OSError, RuntimeError, ValueError) as e:
        sys.exit("first_token: %s" % e)


if __name__ == "__main__":
    main(sys.argv[1:])
