import os, sys, time, json, os, socket
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__))); from lib import *
h = sys.argv[1]; p = port(h); daemon = int(open(h+'.pid').read()); n = int(sys.argv[2]); model = sys.argv[3]
def cpu():
    f = open('/proc/%d/stat' % daemon).read().split(')')[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf('SC_CLK_TCK')
def rss():
    for l in open('/proc/%d/status' % daemon):
        if l.startswith('VmRSS'): return l.split()[1] + ' kB'
req(p, 'POST', '/v1/chat/completions', json.dumps({"model":model,"messages":[{"role":"user","content":"hi"}],"max_tokens":1}))
print('rss before', rss())
socks = []
for i in range(n):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048); s.connect(('127.0.0.1', p))
    b = json.dumps({"model":model,"messages":[{"role":"user","content":"x"*int(sys.argv[4]) if len(sys.argv)>4 else "hi"}],"max_tokens":100000,"ignore_eos":True,"stream":True,"logprobs":True,"top_logprobs":20})
    s.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {len(b)}\r\n\r\n{b}".encode())
    socks.append(s)
c0 = cpu(); t0 = time.time()
for k in range(int(sys.argv[5]) if len(sys.argv)>5 else 6):
    time.sleep(5)
    st = status(p)
    print('t=%ds rss %s daemon cpu %.0f%% in_flight %s' % (time.time()-t0, rss(), 100*(cpu()-c0)/(time.time()-t0), [m.get('in_flight') for m in st['models']]))
c1 = cpu(); time.sleep(5); print('cpu over 5s idle-ish: %.1f%%' % (100*(cpu()-c1)/5))
