import os, sys, time, json, os, socket
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__))); from lib import *
h = sys.argv[1]; p = port(h); daemon = int(open(h+'.pid').read()); n = int(sys.argv[2]); mode = sys.argv[3]
def rss():
    for l in open('/proc/%d/status' % daemon):
        if l.startswith('VmRSS'): return l.split()[1] + ' kB'
def cpu():
    f = open('/proc/%d/stat' % daemon).read().split(')')[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf('SC_CLK_TCK')
socks = []
for i in range(n):
    s = socket.socket(); s.setblocking(True); s.connect(('127.0.0.1', p))
    if mode == 'slowloris': s.sendall(b'GET /health HTTP/1.1\r\nHost: localhost\r\nX-a: ')
    socks.append(s)
print('opened', n, 'rss', rss())
c0 = cpu(); t0 = time.time()
for k in range(int(sys.argv[4])):
    time.sleep(10)
    if mode == 'slowloris':
        alive = 0
        for s in socks:
            try: s.sendall(b'a'); alive += 1
            except Exception: pass
    else: alive = '?'
    t1 = time.time()
    try:
        r = req(p, 'GET', '/health', timeout=5); ok = r.split(b'\r\n')[0]
    except Exception as e: ok = repr(e)
    print('t=%ds alive=%s new request: %s in %.2fs rss %s cpu %.1f%%' % (time.time()-t0, alive, ok, time.time()-t1, rss(), 100*(cpu()-c0)/(time.time()-t0)))
