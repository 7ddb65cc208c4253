#!/usr/bin/env python3
"""Side-by-side load benchmark: Switchyard (each bundled plugin, the native selector that
isolates the Wasm cost, the access log on), the bare Pingora it is built on, nginx and
HAProxy, and no proxy at all, in front of the same fast upstream, driven by wrk on
loopback.

    python3 tests/perf/side_by_side.py              # about 3 minutes after the build (--full: 4)
    python3 tests/perf/side_by_side.py --headline   # 1 worker, 16 connections only: 2 minutes
    python3 tests/perf/side_by_side.py --rounds 1   # a quick look

The headline is the proxy's CPU per request: utime + stime of its whole process tree
(from /proc) over the run, divided by the requests wrk completed. It is shown beside
req/s, and as ratios to bare Pingora (`bare-pingora`: a 30-line `ProxyHttp` built from
this workspace's lock file, so the same Pingora, tokio and OpenSSL) and to nginx.

Scenarios: one worker and 16 connections with every system (the headline), the response
cache at 100 % hits against nginx's `proxy_cache` (same object, 1 worker each), then one
worker with 256 connections and all cores with 16 connections (with --full, 256 too)
for the core systems. Systems are interleaved within a round and the rounds repeated; a system's
figure is its best round (highest req/s, lowest CPU/request; latencies are medians), as
noise on a shared machine only ever makes a run slower.

`--baseline NAME=PATH` adds another Switchyard binary (an older build, say) as a system
in the same run, so a change is measured as a same-run pair; `--bare-baseline NAME=PATH`
does the same for a bare-pingora binary (built without a vendor patch, say).

Writes results.json, results.md and chart.svg to --out (default: <target dir>/perf).
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LUA = """
done = function(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
      + summary.errors.status + summary.errors.timeout
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "errors": %d, "p50_us": %d, "p99_us": %d, "p999_us": %d}\\n',
    summary.requests, summary.duration, errors,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
"""

# The reference rows of the ratios.
BARE = "bare-pingora"
NGINX = "nginx-roundrobin"
NGINX_CACHE = "nginx-proxy_cache-hit"
# The same with nginx's open-file cache, so a hit does not open and close its file.
NGINX_CACHE_TUNED = "nginx-proxy_cache-hit-open_file_cache"
# Pingora answering every request from memory by itself: the floor of a cache hit.
BARE_ANSWER = "bare-pingora-answer"
# The same with Switchyard's HTTP settings: deadlines, read timeout, pipelining, h2c.
BARE_ANSWER_SETTINGS = "bare-pingora-answer-settings"
# Systems of the scenarios beyond the headline.
CORE = ["direct", BARE, "switchyard-round-robin", NGINX, "haproxy-roundrobin"]
# The response-cache part: every request a hit, after the warm-up stored the object.
CACHED = [BARE_ANSWER, BARE_ANSWER_SETTINGS, "switchyard-cache-hit", NGINX_CACHE, NGINX_CACHE_TUNED]


def log(msg):
    print(f"perf: {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port, proc, what, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"perf: {what} exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"perf: {what} did not listen on {port} within {timeout} s")


def ensure_tools():
    missing = [pkg for tool, pkg in [("nginx", "nginx-light"), ("haproxy", "haproxy"), ("wrk", "wrk")]
               if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists()]
    if missing:
        log(f"installing {' '.join(missing)}")
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
                       check=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
                       stdout=subprocess.DEVNULL)


def tool(name):
    return shutil.which(name) or f"/usr/sbin/{name}"


def target_dir():
    if "CARGO_TARGET_DIR" in os.environ:
        return Path(os.environ["CARGO_TARGET_DIR"])
    meta = subprocess.run(["cargo", "metadata", "--format-version", "1", "--no-deps"],
                          cwd=REPO, check=True, capture_output=True, text=True)
    return Path(json.loads(meta.stdout)["target_directory"])


def process_tree(pid):
    """pid and all its descendants."""
    children = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                children.setdefault(int(fields[1]), []).append(int(entry.name))
            except OSError:
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pids):
    """(user, system) CPU seconds of pids."""
    ticks = os.sysconf("SC_CLK_TCK")
    user = system = 0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            user += int(fields[11])
            system += int(fields[12])
        except OSError:
            pass
    return user / ticks, system / ticks


def context_switches(pids):
    """Voluntary + involuntary context switches of every thread of pids."""
    total = 0
    for p in pids:
        try:
            tasks = list(Path(f"/proc/{p}/task").iterdir())
        except OSError:
            continue
        for t in tasks:
            try:
                for line in (t / "status").read_text().splitlines():
                    if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                        total += int(line.split()[1])
            except OSError:
                pass
    return total


def peak_rss_mib(pids):
    total = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def switchyard_system(binary, balancer, upstreams, native=False, log_file=False, cache=False):
    def start(port, work, threads):
        d = Path(tempfile.mkdtemp(dir=work))
        backends = ", ".join(f'{{ addr = "{u}" }}' for u in upstreams)
        # log_file: True writes JSON lines to access_log_path, "stderr" to stderr (itself
        # a file here), which is all a build from before access_log_path could do.
        access = {True: f'access_log = "json"\naccess_log_path = "{d}/access.log"',
                  "stderr": 'access_log = "json"'}.get(log_file, 'access_log = "off"')
        (d / "switchyard.toml").write_text(
            f'[proxy]\nlisten = ["127.0.0.1:{port}"]\nthreads = {threads}\n{access}\n\n'
            f'[plugins]\ncache_dir = "{work}/plugin-cache"\n\n[admin]\nsocket = "{d}/admin.sock"\n\n'
            f'[[pools]]\nname = "up"\nbalancer = "{balancer}"\nbackends = [{backends}]\n')
        if cache:
            # perf-upstream sends no Cache-Control: default_ttl plays nginx's proxy_cache_valid.
            with open(d / "switchyard.toml", "a") as f:
                f.write('\n[[caches]]\nname = "bench"\nmemory = "64MiB"\ndefault_ttl = "1h"\n\n'
                        '[[routes]]\npath_prefix = "/"\npool = "up"\ncache = { use = "bench" }\n')
        env = {**os.environ, "RUST_LOG": "info" if log_file else "warn"}
        if native:
            env["SWITCHYARD_NATIVE_SELECTOR"] = "1"
        return subprocess.Popen([binary, "run", "--config", d / "switchyard.toml"], env=env,
                                stdout=subprocess.DEVNULL, stderr=open(d / "log", "w"))
    return start


def bare_system(binary, upstreams, settings=False):
    """Bare Pingora; `settings`: with Switchyard's HTTP settings (BARE_PINGORA_SETTINGS)."""
    def start(port, work, threads):
        env = {**os.environ, **({"BARE_PINGORA_SETTINGS": "1"} if settings else {})}
        return subprocess.Popen([binary, f"127.0.0.1:{port}", str(threads), *upstreams], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return start


def nginx_system(method, upstreams, log_file=False, cache=False, open_file_cache=False):
    def start(port, work, threads):
        d = Path(tempfile.mkdtemp(dir=work))
        servers = "\n".join(f"    server {u};" for u in upstreams)
        access = f"access_log {d}/access.log combined buffer=64k;" if log_file else "access_log off;"
        zone = (f"proxy_cache_path {d}/cache levels=1:2 keys_zone=bench:10m max_size=64m inactive=1h "
                "use_temp_path=off;") if cache else ""
        use = ("proxy_cache bench; proxy_cache_valid 200 1h; proxy_cache_lock on; "
               "add_header X-Cache $upstream_cache_status;") if cache else ""
        if open_file_cache:
            # Keeps the cache file's descriptor and metadata: no open/fstat/close per hit.
            use += " open_file_cache max=1000 inactive=1h; open_file_cache_valid 1h;"
        if cache:
            # Run as root, nginx's workers are `nobody`: they must reach the cache directory.
            os.chmod(work, 0o755)
            os.chmod(d, 0o755)
        (d / "nginx.conf").write_text(f"""
worker_processes {threads};
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 8192; }}
http {{
  {access}
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  {zone}
  upstream up {{
    {method}
{servers}
    keepalive 64;
  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      {use}
    }}
  }}
}}
""")
        return subprocess.Popen([tool("nginx"), "-c", d / "nginx.conf", "-p", d],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return start


def haproxy_system(balance, upstreams):
    def start(port, work, threads):
        d = Path(tempfile.mkdtemp(dir=work))
        servers = "\n".join(f"  server s{i} {u}" for i, u in enumerate(upstreams))
        (d / "haproxy.cfg").write_text(f"""
global
  nbthread {threads}
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
  http-reuse always
frontend f
  bind 127.0.0.1:{port}
  default_backend b
backend b
  balance {balance}
{servers}
""")
        return subprocess.Popen([tool("haproxy"), "-f", d / "haproxy.cfg", "-db"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return start


def x_cache(port):
    """The X-Cache header of one GET / (the cache systems' proof of a hit)."""
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/")
    response = conn.getresponse()
    response.read()
    conn.close()
    return (response.getheader("x-cache") or "").upper()


def run_wrk(port, connections, duration, threads, lua):
    out = subprocess.run(
        [tool("wrk"), f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--timeout", "5s",
         "-s", lua, f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, check=True)
    for line in out.stdout.splitlines():
        if line.startswith("WRK_JSON "):
            return json.loads(line[len("WRK_JSON "):])
    raise SystemExit(f"perf: wrk printed no result:\n{out.stdout}\n{out.stderr}")


def stop(proc):
    if proc is None:
        return
    proc.send_signal(signal.SIGINT)  # fast shutdown for Pingora; nginx and HAProxy too
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def machine():
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]

    def first_line(cmd):
        r = subprocess.run(cmd, capture_output=True, text=True)
        text = (r.stderr.strip() or r.stdout.strip())
        return text.splitlines()[0] if text else "unknown"
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(int(mem) / 1024 / 1024, 1),
        "kernel": os.uname().release,
        "nginx": first_line([tool("nginx"), "-v"]),
        "haproxy": first_line([tool("haproxy"), "-v"]),
        "wrk": first_line([tool("wrk"), "-v"]),
    }


def scenarios(args, systems):
    """(title, key, threads, connections, systems) of each part of the run."""
    cores = os.cpu_count() or 1
    headline = ("1 worker, 16 connections", "1w-c16", 1, 16, [s for s in systems if s not in CACHED])
    cached = [s for s in systems if s in CACHED]
    cache_part = [("response cache, 100 % hits: 1 worker, 16 connections", "cache-1w-c16", 1, 16, cached)]
    if args.headline:
        return [headline] + (cache_part if cached else [])
    core = [s for s in systems if s in CORE or s.startswith("baseline-")]
    parts = [
        headline,
        *(cache_part if cached else []),
        ("1 worker, 256 connections", "1w-c256", 1, 256, core),
        (f"all cores ({cores} workers), 16 connections", "all-c16", cores, 16, core),
    ]
    if args.full:
        parts.append((f"all cores ({cores} workers), 256 connections", "all-c256", cores, 256, core))
    return parts


def summarize(results):
    """Best round per (scenario, system)."""
    table = {}
    for r in results:
        table.setdefault((r["scenario"], r["system"]), []).append(r)
    out = {}
    for key, runs in table.items():
        out[key] = {
            "rps": max(r["rps"] for r in runs),
            "cpu_us": min(r["cpu_us"] for r in runs),
            "ctx_per_req": min(r["ctx_per_req"] for r in runs),
            "sys_share": statistics.median(r["sys_share"] for r in runs),
            "p50_ms": statistics.median(r["p50_us"] for r in runs) / 1000,
            "p99_ms": statistics.median(r["p99_us"] for r in runs) / 1000,
            "p999_ms": statistics.median(r["p999_us"] for r in runs) / 1000,
            "rss_mib": max(r["rss_mib"] for r in runs),
            "errors": sum(r["errors"] for r in runs),
            "rounds": len(runs),
        }
    return out


def ratio(a, b):
    return f"{a / b:.2f}" if a is not None and b else "–"


def targets(table):
    """The issue's targets, each as (what, measured, met)."""
    def get(system, scenario="1w-c16"):
        return table.get((scenario, system))
    out = []
    sy, bare, nginx = get("switchyard-round-robin"), get(BARE), get(NGINX)
    if sy and bare:
        out.append(("Switchyard round-robin req/s ≥ 0.95 × bare Pingora (1 worker, 16 conns)",
                    f"{sy['rps'] / bare['rps']:.2f}×", sy["rps"] >= 0.95 * bare["rps"]))
        out.append(("Switchyard round-robin CPU/request ≤ 1.05 × bare Pingora",
                    f"{sy['cpu_us'] / bare['cpu_us']:.2f}× ({sy['cpu_us']:.1f} vs {bare['cpu_us']:.1f} µs)",
                    sy["cpu_us"] <= 1.05 * bare["cpu_us"]))
    for other in ["switchyard-least-conn", "switchyard-latency"]:
        o = get(other)
        if sy and o:
            out.append((f"{other} req/s within 10 % of round-robin", f"{o['rps'] / sy['rps']:.2f}×",
                        o["rps"] >= 0.90 * sy["rps"]))
    if sy and nginx:
        out.append(("Switchyard round-robin req/s ≥ 0.80 × nginx", f"{sy['rps'] / nginx['rps']:.2f}×",
                    sy["rps"] >= 0.80 * nginx["rps"]))
    logged = get("switchyard-rr-logged")
    if sy and logged:
        nlog = get("nginx-rr-logged")
        extra = f"; nginx {nlog['rps'] / nginx['rps']:.2f}×" if nlog and nginx else ""
        out.append(("access log on (JSON to a file) req/s ≥ 0.95 × log off",
                    f"{logged['rps'] / sy['rps']:.2f}×{extra}", logged["rps"] >= 0.95 * sy["rps"]))
    hit, nginx_hit = get("switchyard-cache-hit", "cache-1w-c16"), get(NGINX_CACHE, "cache-1w-c16")
    if hit and nginx_hit:
        out.append(("cache, 100 % hits: req/s ≥ nginx proxy_cache (1 worker each)",
                    f"{hit['rps'] / nginx_hit['rps']:.2f}× ({hit['cpu_us']:.1f} vs {nginx_hit['cpu_us']:.1f} CPU µs/req)",
                    hit["rps"] >= nginx_hit["rps"]))
    tuned = get(NGINX_CACHE_TUNED, "cache-1w-c16")
    if hit and tuned:
        out.append(("cache, 100 % hits: req/s ≥ nginx proxy_cache with open_file_cache (1 worker each)",
                    f"{hit['rps'] / tuned['rps']:.2f}× ({hit['cpu_us']:.1f} vs {tuned['cpu_us']:.1f} CPU µs/req)",
                    hit["rps"] >= tuned["rps"]))
    sy256, nginx256 = get("switchyard-round-robin", "1w-c256"), get(NGINX, "1w-c256")
    if sy256 and nginx256:
        out.append(("256 connections (1 worker): p99 ≤ 1.5 × nginx's",
                    f"{sy256['p99_ms']:.2f} vs {nginx256['p99_ms']:.2f} ms ({sy256['p99_ms'] / nginx256['p99_ms']:.2f}×)",
                    sy256["p99_ms"] <= 1.5 * nginx256["p99_ms"]))
    return out


def markdown(table, parts, meta, args, elapsed):
    lines = ["# Side-by-side load benchmark", "",
             f"Machine: {meta['cpu']}, {meta['cores']} cores, {meta['memory_gib']} GiB, Linux {meta['kernel']}; "
             f"{meta['nginx']}; {meta['haproxy']}; {meta['wrk']}.",
             f"wrk {args.duration} s per run after a 1 s warm-up, {args.rounds} round(s), systems interleaved; "
             "keep-alive to a 1 KiB upstream (2 instances of `perf-upstream`); access logs off unless the name says "
             f"`logged`. Run took {elapsed / 60:.1f} min.",
             "Each figure is the system's best round: highest req/s, lowest CPU/request; latencies are medians. "
             "CPU µs/request is the proxy's process tree (utime+stime from /proc) ÷ requests completed; "
             "kernel % is the system time's share of that CPU; "
             "ctx sw/req is its threads' context switches ÷ requests. Ratios are to the same run's "
             f"`{BARE}` (÷ bare) and `{NGINX}` (÷ nginx); in the cache part, to `{BARE_ANSWER}` "
             f"(Pingora answering from memory by itself, no cache) and `{NGINX_CACHE}`.", ""]
    for title, key, _, _, systems in parts:
        bare = table.get((key, BARE)) or table.get((key, BARE_ANSWER))
        nginx = table.get((key, NGINX)) or table.get((key, NGINX_CACHE))
        lines += [f"## {title}", "",
                  "| system | req/s | CPU µs/request | CPU ÷ bare | CPU ÷ nginx | req/s ÷ bare | req/s ÷ nginx "
                  "| p50 ms | p99 ms | p99.9 ms | kernel % of CPU | ctx sw/req | peak RSS MiB | errors |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for s in systems:
            r = table.get((key, s))
            if r is None:
                continue
            cpu = lambda ref: ratio(r["cpu_us"], ref["cpu_us"]) if ref and s != "direct" else "–"
            lines.append(
                f"| {s} | {r['rps']:,.0f} | {r['cpu_us']:.1f} | {cpu(bare)} | {cpu(nginx)} | "
                f"{ratio(r['rps'], bare and bare['rps'])} | {ratio(r['rps'], nginx and nginx['rps'])} | "
                f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['p999_ms']:.2f} | {r['sys_share'] * 100:.0f} | "
                f"{r['ctx_per_req']:.2f} | "
                f"{r['rss_mib']:.1f} | {r['errors']} |")
        lines.append("")
    lines += ["## Targets", ""]
    for what, measured, met in targets(table):
        lines.append(f"- {what}: {measured} — {'met' if met else 'NOT met'}")
    return "\n".join(lines) + "\n"


def svg(table, parts):
    """CPU µs/request (bar) and req/s (label) of the headline scenario."""
    title, key, _, _, systems = parts[0]
    rows = [(s, table[(key, s)]) for s in systems if (key, s) in table and s != "direct"]
    width, bar, left, top = 900, 20, 230, 46
    height = top + len(rows) * (bar + 6) + 30
    peak = max((r["cpu_us"] for _, r in rows), default=1) or 1
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
           f'<text x="10" y="20" font-size="14">Proxy CPU µs per request ({title}; shorter is better), with req/s</text>']
    y = top
    for s, r in rows:
        color = "#e45756" if s.startswith("switchyard") or s.startswith("baseline") else (
            "#f58518" if s.startswith("bare") else "#4c78a8")
        w = (width - left - 200) * r["cpu_us"] / peak
        out.append(f'<text x="{left - 8}" y="{y + bar - 6}" text-anchor="end">{s}</text>')
        out.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar}" fill="{color}"/>')
        out.append(f'<text x="{left + w + 6:.1f}" y="{y + bar - 6}">{r["cpu_us"]:.1f} µs · {r["rps"]:,.0f} req/s</text>')
        y += bar + 6
    out.append(f'<text x="10" y="{height - 10}" fill="#555">red: Switchyard; orange: bare Pingora (the floor); '
               'blue: nginx and HAProxy</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=3, help="seconds of load per run (default 3)")
    ap.add_argument("--rounds", type=int, default=2, help="times the whole set is repeated (default 2)")
    ap.add_argument("--headline", action="store_true", help="only 1 worker, 16 connections")
    ap.add_argument("--full", action="store_true", help="also all cores at 256 connections")
    ap.add_argument("--only", default="", help="comma-separated system names to run (default: all)")
    ap.add_argument("--baseline", action="append", default=[], metavar="NAME=PATH",
                    help="another switchyard binary, run with round-robin as system baseline-NAME")
    ap.add_argument("--baseline-logged", action="append", default=[], metavar="NAME=PATH",
                    help="like --baseline, with the access log on (JSON to stderr, redirected to a file)")
    ap.add_argument("--bare-baseline", action="append", default=[], metavar="NAME=PATH",
                    help="another bare-pingora binary (built without a vendor patch, say), as system baseline-NAME")
    ap.add_argument("--out", type=Path, default=None, help="output directory (default <target>/perf)")
    ap.add_argument("--skip-build", action="store_true", help="use the release binaries already built")
    args = ap.parse_args()

    ensure_tools()
    target = target_dir()
    if not args.skip_build:
        log("building release binaries (switchyard, perf-upstream, bare-pingora)")
        subprocess.run(["cargo", "build", "--release", "-p", "switchyard", "-p", "perf-upstream",
                        "-p", "bare-pingora"], cwd=REPO, check=True)
    release = target / "release"
    out_dir = args.out or target / "perf"
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="switchyard-perf-"))
    lua = work / "report.lua"
    lua.write_text(LUA)

    upstream_procs, upstreams = [], []
    for _ in range(2):
        p = subprocess.Popen([release / "perf-upstream", "127.0.0.1:0"], stdout=subprocess.PIPE, text=True)
        line = p.stdout.readline().strip()
        upstream_procs.append(p)
        upstreams.append(line.removeprefix("listening "))
    log(f"upstreams on {', '.join(upstreams)}")

    sy = release / "switchyard"
    systems = {
        "direct": None,
        BARE: bare_system(release / "bare-pingora", upstreams),
        "bare-pingora-jemalloc": bare_system(release / "bare-pingora-jemalloc", upstreams),
        BARE_ANSWER: bare_system(release / "bare-pingora-jemalloc", ["answer"]),
        BARE_ANSWER_SETTINGS: bare_system(release / "bare-pingora-jemalloc", ["answer"], settings=True),
        "switchyard-round-robin": switchyard_system(sy, "round-robin", upstreams),
        "switchyard-native": switchyard_system(sy, "round-robin", upstreams, native=True),
        "switchyard-least-conn": switchyard_system(sy, "least-conn", upstreams),
        "switchyard-latency": switchyard_system(sy, "latency", upstreams),
        "switchyard-rr-logged": switchyard_system(sy, "round-robin", upstreams, log_file=True),
        "switchyard-cache-hit": switchyard_system(sy, "round-robin", upstreams, cache=True),
        NGINX_CACHE: nginx_system("", upstreams, cache=True),
        NGINX_CACHE_TUNED: nginx_system("", upstreams, cache=True, open_file_cache=True),
        NGINX: nginx_system("", upstreams),
        "nginx-least_conn": nginx_system("least_conn;", upstreams),
        "nginx-rr-logged": nginx_system("", upstreams, log_file=True),
        "haproxy-roundrobin": haproxy_system("roundrobin", upstreams),
        "haproxy-leastconn": haproxy_system("leastconn", upstreams),
    }
    for spec in args.baseline:
        name, _, path = spec.partition("=")
        systems[f"baseline-{name}"] = switchyard_system(Path(path), "round-robin", upstreams)
    for spec in args.baseline_logged:
        name, _, path = spec.partition("=")
        systems[f"baseline-{name}-logged"] = switchyard_system(Path(path), "round-robin", upstreams,
                                                             log_file="stderr")
    for spec in args.bare_baseline:
        name, _, path = spec.partition("=")
        systems[f"baseline-{name}"] = bare_system(Path(path), upstreams)
    if args.only:
        keep = set(args.only.split(","))
        systems = {k: v for k, v in systems.items() if k in keep}
    parts = scenarios(args, systems)
    port = free_port()
    results = []
    started = time.time()
    try:
        for round_no in range(args.rounds):
            for title, key, threads, connections, names in parts:
                for name in names:
                    start = systems[name]
                    proc = None
                    if start is None:
                        target_port = int(upstreams[0].rsplit(":", 1)[1])
                        pids = [upstream_procs[0].pid]
                    else:
                        proc = start(port, work, threads)
                        wait_listening(port, proc, name)
                        target_port = port
                    wrk_threads = min(2, threads)
                    try:
                        run_wrk(target_port, connections, 1, wrk_threads, lua)  # warm up
                        if name in CACHED and not name.startswith(BARE_ANSWER) and x_cache(target_port) != "HIT":
                            raise SystemExit(f"perf: {name} does not answer from its cache")
                        pids = process_tree(proc.pid) if proc else pids
                        (user0, sys0), ctx0 = cpu_seconds(pids), context_switches(pids)
                        r = run_wrk(target_port, connections, args.duration, wrk_threads, lua)
                        user1, sys1 = cpu_seconds(pids)
                        ctx = context_switches(pids) - ctx0
                        cpu = (user1 - user0) + (sys1 - sys0)
                        rss = peak_rss_mib(process_tree(proc.pid) if proc else pids)
                    finally:
                        stop(proc)
                    requests = max(r["requests"], 1)
                    rps = r["requests"] / (r["duration_us"] / 1e6)
                    results.append({"scenario": key, "system": name, "round": round_no, "rps": rps,
                                    "cpu_s": cpu, "cpu_us": cpu * 1e6 / requests,
                                    "sys_share": (sys1 - sys0) / cpu if cpu else 0,
                                    "ctx_per_req": ctx / requests, "rss_mib": rss, **r})
                    log(f"round {round_no + 1}/{args.rounds} {key} {name}: {rps:,.0f} req/s, "
                        f"{cpu * 1e6 / requests:.1f} CPU µs/req, p99 {r['p99_us'] / 1000:.2f} ms, "
                        f"errors {r['errors']}")
    finally:
        for p in upstream_procs:
            p.kill()
    elapsed = time.time() - started
    meta = machine()
    table = summarize(results)
    md = markdown(table, parts, meta, args, elapsed)
    (out_dir / "results.json").write_text(json.dumps({"machine": meta, "runs": results}, indent=1))
    (out_dir / "results.md").write_text(md)
    (out_dir / "chart.svg").write_text(svg(table, parts))
    print(md)
    log(f"done in {elapsed:.0f} s; wrote {out_dir}/results.md, chart.svg, results.json")


if __name__ == "__main__":
    main()
