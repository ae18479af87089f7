import json, sys, time, urllib.request, statistics
port=int(sys.argv[1])
def run(model, extra):
    body={"model":model,"prompt":"And God said","max_tokens":120,"temperature":0, **extra}
    req=urllib.request.Request("http://127.0.0.1:%d/v1/completions"%port, data=json.dumps(body).encode(), headers={"Content-Type":"application/json"})
    t=time.perf_counter(); r=json.load(urllib.request.urlopen(req)); dt=time.perf_counter()-t
    n=r["usage"]["completion_tokens"]
    return n/dt
for model in ["demo","small"]:
    run(model,{})
    res={}
    for name,extra in [("none",{}),("logprobs 0",{"logprobs":0}),("logprobs 5",{"logprobs":5}),("logprobs 20",{"logprobs":20})]:
        res[name]=[]
    for i in range(5):
        for name,extra in [("none",{}),("logprobs 0",{"logprobs":0}),("logprobs 5",{"logprobs":5}),("logprobs 20",{"logprobs":20})]:
            res[name].append(run(model,extra))
    base=statistics.median(res["none"])
    for k,v in res.items():
        m=statistics.median(v)
        print("%-6s %-12s %8.1f tok/s  ratio %.3f"%(model,k,m,m/base))
