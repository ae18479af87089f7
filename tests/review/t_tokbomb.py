import os, sys, time, json, threading
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__))); from lib import *
p = port(sys.argv[1]); model = sys.argv[2]; size = int(sys.argv[3]); text = sys.argv[4] if len(sys.argv) > 4 else 'ab '
req(p, 'POST', '/v1/chat/completions', json.dumps({"model":model,"messages":[{"role":"user","content":"hi"}],"max_tokens":1}))
res = {}
def bad():
    t0 = time.time()
    r = req(p, 'POST', '/v1/completions', json.dumps({"model":model,"prompt":(text * (size // len(text)))[:size],"max_tokens":1}), timeout=600)
    res['bad'] = (round(time.time()-t0,1), r.split(b'\r\n')[0], r.partition(b'\r\n\r\n')[2][:200])
th = threading.Thread(target=bad); th.start(); time.sleep(0.5)
t0 = time.time()
r = req(p, 'POST', '/v1/chat/completions', json.dumps({"model":model,"messages":[{"role":"user","content":"another user"}],"max_tokens":3}), timeout=600)
print('co-tenant took %.1fs' % (time.time()-t0), r.split(b'\r\n')[0])
th.join(); print('big prompt:', res['bad'])
