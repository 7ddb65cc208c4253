#!/usr/bin/env python3
"""Load at the VIP for the HA-pair script: CLIENTS threads, each sending GET URL on a
new connection after the other, for SECONDS.

usage: client.py URL CLIENTS SECONDS EVENTS_FILE
EVENTS_FILE gets [start, end, "ok"|"fail", detail] per request, for run.sh to read.
"""
import http.client
import json
import sys
import threading
import time
from urllib.parse import urlsplit

url, clients, seconds, events_file = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
parts = urlsplit(url)
events = []
lock = threading.Lock()
end = time.time() + seconds


def worker():
    while time.time() < end:
        start = time.time()
        try:
            # 10 s: a SYN sent to a dead master is retransmitted after 1, 3 and 7 s;
            # the one after the VIP has moved gets through, late but answered.
            c = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
            c.request("GET", parts.path, headers={"Connection": "close"})
            r = c.getresponse()
            r.read()
            c.close()
            ok, detail = r.status == 200, str(r.status)
        except Exception as e:  # noqa: BLE001 - every failure counts
            ok, detail = False, type(e).__name__ + ": " + str(e)
        with lock:
            events.append((start, time.time(), "ok" if ok else "fail", detail))
        if not ok:
            time.sleep(0.05)


threads = [threading.Thread(target=worker) for _ in range(clients)]
for t in threads:
    t.start()
for t in threads:
    t.join()
with open(events_file, "w") as f:
    json.dump(sorted(events), f)
