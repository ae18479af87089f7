import os, sys, time, json, os
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__))); from lib import *
h = sys.argv[1]; p = port(h); daemon = int(open(h+'.pid').read())
def cpu():
    f = open('/proc/%d/stat' % daemon).read().split(')')[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf('SC_CLK_TCK')
def gen(model, mt): return json.dumps({"model":model,"messages":[{"role":"user","content":"hi"}],"max_tokens":mt,"ignore_eos":True})
t0=time.time(); r = req(p,'POST','/v1/chat/completions', gen('tiny', 500)); print('tiny 500 tokens before spam: %.2fs' % (time.time()-t0))
req(p,'POST','/v1/chat/completions', gen('small', 1)); 
c0 = cpu(); s0 = os.path.getsize(h+'.log'); t1 = time.time()
t0=time.time(); r = req(p,'POST','/v1/chat/completions', gen('tiny', 500)); print('tiny 500 tokens while small spams: %.2fs' % (time.time()-t0), r.split(b'\r\n')[0])
time.sleep(5)
dt = time.time()-t1
print('daemon cpu %.0f%%, log grew %.1f MB in %.0fs' % (100*(cpu()-c0)/dt, (os.path.getsize(h+'.log')-s0)/1e6, dt))
