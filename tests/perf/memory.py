#!/usr/bin/env python3
"""Memory of the release proxy: resident set when idle with the three bundled plugins
loaded, and across 1,000 plugin hot reloads that each swap in different code.

    python3 tests/perf/memory.py                  # after side_by_side.py built the binary
    python3 tests/perf/memory.py --reloads 200    # shorter

A pool's balancer is a plugin file in the plugins directory; each reload copies the
round-robin or the header-route plugin over it in turn (so every reload really replaces
the code; the compiled-plugin cache keeps compiling out of the picture after the first
two) and runs `switchyard ctl reload`. RSS is read from /proc every 100 reloads; one
request per reload goes through the swapped pool. Prints a Markdown table.
"""

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

# Shared with the load benchmark beside this file.
from side_by_side import REPO, free_port, target_dir  # noqa: E402


def rss_mib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reloads", type=int, default=1000)
    ap.add_argument("--skip-build", action="store_true")
    args = ap.parse_args()
    target = target_dir()
    if not args.skip_build:
        subprocess.run(["cargo", "build", "--release", "-p", "switchyard",
                        "-p", "perf-upstream"], cwd=REPO, check=True)
    binary = target / "release" / "switchyard"
    wasm = target / "wasm-plugins" / "wasm32-wasip2" / "release"
    variants = [wasm / "switchyard_plugin_round_robin.wasm", wasm / "header_route.wasm"]
    for v in variants:
        if not v.is_file():
            raise SystemExit(f"memory: {v} is missing; build the workspace first (cargo build -p switchyard)")

    work = Path(tempfile.mkdtemp(prefix="switchyard-mem-"))
    (work / "plugins").mkdir()
    shutil.copy(variants[0], work / "plugins" / "swapped.wasm")
    upstream = subprocess.Popen([target / "release" / "perf-upstream", "127.0.0.1:0"],
                                stdout=subprocess.PIPE, text=True)
    up = upstream.stdout.readline().strip().removeprefix("listening ")
    port = free_port()
    (work / "switchyard.toml").write_text(f"""[proxy]
listen = ["127.0.0.1:{port}"]
threads = 2
access_log = "off"

[plugins]
dir = "plugins"
cache_dir = "cache"

[admin]
socket = "admin.sock"

[[pools]]
name = "rr"
balancer = "round-robin"
backends = [{{ addr = "{up}" }}]

[[pools]]
name = "lc"
balancer = "least-conn"
backends = [{{ addr = "{up}" }}]

[[pools]]
name = "latency"
balancer = "latency"
backends = [{{ addr = "{up}" }}]

[[pools]]
name = "swapped"
balancer = "swapped"
backends = [{{ addr = "{up}" }}]

[[routes]]
path_prefix = "/swapped"
pool = "swapped"

[[routes]]
path_prefix = "/"
pool = "rr"
""")
    proxy = subprocess.Popen([binary, "run", "--config", work / "switchyard.toml"],
                             env={**os.environ, "RUST_LOG": "warn"}, stderr=open(work / "log", "w"))
    try:
        deadline = time.time() + 30
        while True:
            if time.time() > deadline or proxy.poll() is not None:
                raise SystemExit(f"memory: switchyard did not start:\n{(work / 'log').read_text()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                if (work / "admin.sock").exists():
                    break
            except OSError:
                pass
            time.sleep(0.05)
        for path in ["/", "/swapped"]:
            urllib.request.urlopen(f"http://127.0.0.1:{port}{path}").read()
        time.sleep(2)
        idle = rss_mib(proxy.pid)
        rows = [(0, idle)]
        started = time.time()
        for i in range(1, args.reloads + 1):
            shutil.copy(variants[i % 2], work / "plugins" / "swapped.wasm.tmp")
            os.replace(work / "plugins" / "swapped.wasm.tmp", work / "plugins" / "swapped.wasm")
            out = subprocess.run([binary, "ctl", "--socket", work / "admin.sock", "--json", "reload", "swapped"],
                                 capture_output=True, text=True)
            if out.returncode != 0 or '"changed":[]' in out.stdout.replace(" ", ""):
                raise SystemExit(f"memory: reload {i} did not swap the plugin: {out.stdout}{out.stderr}")
            urllib.request.urlopen(f"http://127.0.0.1:{port}/swapped").read()
            if i % max(1, args.reloads // 10) == 0:
                rows.append((i, rss_mib(proxy.pid)))
        took = time.time() - started
    finally:
        proxy.kill()
        upstream.kill()
    print("| reloads | RSS MiB |\n|---|---|")
    for n, mib in rows:
        print(f"| {n} | {mib:.1f} |")
    growth = rows[-1][1] - rows[len(rows) // 2][1]
    print(f"\nIdle RSS with the three bundled plugins (and a fourth pool) loaded: {idle:.1f} MiB "
          f"({'under' if idle < 40 else 'OVER'} the 40 MiB target).")
    print(f"{args.reloads} reloads in {took:.1f} s ({took / args.reloads * 1000:.1f} ms each); "
          f"RSS {rows[1][1]:.1f} MiB after the first tenth, {rows[-1][1]:.1f} MiB at the end; "
          f"growth over the second half {growth:+.1f} MiB.")


if __name__ == "__main__":
    main()
