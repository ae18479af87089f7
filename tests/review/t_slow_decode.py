# A healthy but long prompt decode (one llama_decode of ~1,500 tokens) is
# killed as hung when it takes longer than models.progress_timeout_s: the
# heartbeat counts a step only after a whole llama_decode returns.
# Start the daemon with HOME/lyra.yaml: "schema_version: 2\nmodels:\n  progress_timeout_s: 2\n".
import os, sys, time, json
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__))); from lib import *
p = port(sys.argv[1])
req(p, 'POST', '/v1/completions', json.dumps({"model": "small", "prompt": "hi", "max_tokens": 1}))
t0 = time.time()
r = req(p, 'POST', '/v1/completions', json.dumps({"model": "small", "prompt": "hello world, " * 500, "max_tokens": 1}), timeout=120)
print('%.1fs' % (time.time() - t0), r.split(b'\r\n')[0], r.partition(b'\r\n\r\n')[2][:300])
