import socket, json, time, sys, os
def port(h): return json.load(open(h+'/serve.json'))['port']
def req(p, method, path, body=None, headers=None, timeout=60, raw=None):
    s = socket.create_connection(('127.0.0.1', p), timeout=timeout)
    if raw is None:
        b = body.encode() if isinstance(body, str) else (body or b'')
        h = {'Host': 'localhost', 'Content-Type': 'application/json', 'Connection': 'close'}
        if headers: h.update(headers)
        if body is not None: h['Content-Length'] = str(len(b))
        raw = (f"{method} {path} HTTP/1.1\r\n" + ''.join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n").encode() + b
    s.sendall(raw)
    out = b''
    try:
        while True:
            d = s.recv(65536)
            if not d: break
            out += d
    except socket.timeout:
        out += b'<<TIMEOUT>>'
    s.close()
    return out
def opensock(p, method, path, body, headers=None):
    s = socket.create_connection(('127.0.0.1', p))
    b = body.encode() if isinstance(body, str) else body
    h = {'Host': 'localhost', 'Content-Type': 'application/json'}
    if headers: h.update(headers)
    h['Content-Length'] = str(len(b))
    s.sendall((f"{method} {path} HTTP/1.1\r\n" + ''.join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n").encode() + b)
    return s
def status(p):
    r = req(p, 'GET', '/status')
    return json.loads(r.split(b'\r\n\r\n', 1)[1])
