# N clients each start a turn on their own conversation and leave after a random
# 0-20 ms (FIN or RST). After things settle, every conversation must accept a turn.
import os, sys, time, json, socket, random, threading
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__))); from lib import *
p = port(sys.argv[1]); n = int(sys.argv[2]); conc = int(sys.argv[3]); mode = sys.argv[4]; streammode = sys.argv[5]
ids = []
for i in range(n):
    r = req(p, 'POST', '/chat', json.dumps({"model": "tiny", "message": "hi", "options": {"max_tokens": 1}}))
    ids.append(json.loads(r.split(b'\r\n\r\n',1)[1])['conversation_id'])
def one(i):
    stream = {'stream': True, 'plain': False}.get(streammode, i % 2 == 0)
    b = json.dumps({"conversation_id": ids[i], "model": "tiny", "message": "x%d" % i, "stream": stream, "options": {"max_tokens": random.choice([1, 3, 10, 50])}})
    s = opensock(p, 'POST', '/chat', b)
    time.sleep(random.random() * 0.02)
    if mode == 'rst' or (mode == 'mix' and random.random() < 0.5):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b'\x01\x00\x00\x00\x00\x00\x00\x00')
    s.close()
for k in range(0, n, conc):
    ths = [threading.Thread(target=one, args=(i,)) for i in range(k, min(n, k + conc))]
    for t in ths: t.start()
    for t in ths: t.join()
time.sleep(3)
busy = 0
for cid in ids:
    r = req(p, 'POST', '/chat', json.dumps({"conversation_id": cid, "model": "tiny", "message": "back", "options": {"max_tokens": 1}}))
    if b' 409 ' in r.split(b'\r\n')[0]: busy += 1
print(mode, streammode, 'conc', conc, '-> conversations stuck busy (409):', busy, 'of', n, '; turns_in_flight', status(p)['chat'])
