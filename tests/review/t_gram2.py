import os, sys, time, json, threading
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__))); from lib import *
p = port(sys.argv[1]); n = int(sys.argv[2]); mt = int(sys.argv[3])
g = 'root ::= x*\nx ::= ' + ' | '.join(['"a"']*n)
res = {}
def bad():
    t0 = time.time()
    r = req(p, 'POST', '/v1/chat/completions', json.dumps({"model":"tiny","messages":[{"role":"user","content":"hi"}],"grammar":g,"max_tokens":mt}), timeout=300)
    res['bad'] = (time.time()-t0, r.split(b'\r\n')[0], r.partition(b'\r\n\r\n')[2][:250])
th = threading.Thread(target=bad); th.start()
time.sleep(2)
t0 = time.time()
r = req(p, 'POST', '/v1/chat/completions', json.dumps({"model":"tiny","messages":[{"role":"user","content":"other user"}],"max_tokens":3}), timeout=300)
print('co-tenant request took %.1fs' % (time.time()-t0), r.split(b'\r\n')[0], r.partition(b'\r\n\r\n')[2][:250])
th.join()
print('grammar request', res['bad'])
