#!/usr/bin/env python3
"""Side-by-side load benchmark: Switchyard (each bundled plugin, and the native selector
that isolates the Wasm cost), nginx and HAProxy (round-robin and least-connections),
and no proxy at all, in front of the same fast upstream, driven by wrk on loopback.

    python3 tests/perf/side_by_side.py            # about 6 minutes after the build
    python3 tests/perf/side_by_side.py --duration 3 --rounds 1   # a quick look

Every system gets the same port, worker count (one per core) and keep-alive to the
upstream; the systems are interleaved and the whole set repeated (--rounds) so noise
shows. Writes results.json, results.md (a table with ratios to nginx and to the direct
connection) and chart.svg to --out (default: <target dir>/perf).
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
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / ticks


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


class System:
    def __init__(self, name, start):
        self.name = name
        self.start = start  # (port, workdir) -> Popen or None


def switchyard_system(binary, balancer, upstreams, threads, native=False):
    def start(port, work):
        d = Path(tempfile.mkdtemp(dir=work))
        backends = ", ".join(f'{{ addr = "{u}" }}' for u in upstreams)
        (d / "switchyard.toml").write_text(
            f'[proxy]\nlisten = ["127.0.0.1:{port}"]\nthreads = {threads}\naccess_log = "off"\n\n'
            f'[plugins]\ncache_dir = "{work}/plugin-cache"\n\n[admin]\nsocket = "{d}/admin.sock"\n\n'
            f'[[pools]]\nname = "up"\nbalancer = "{balancer}"\nbackends = [{backends}]\n')
        env = {**os.environ, "RUST_LOG": "warn"}
        if native:
            env["SWITCHYARD_NATIVE_SELECTOR"] = "1"
        return subprocess.Popen([binary, "run", "--config", d / "switchyard.toml"], env=env,
                                stdout=subprocess.DEVNULL, stderr=open(d / "log", "w"))
    return start


def nginx_system(method, upstreams, threads):
    def start(port, work):
        d = Path(tempfile.mkdtemp(dir=work))
        servers = "\n".join(f"    server {u};" for u in upstreams)
        (d / "nginx.conf").write_text(f"""
worker_processes {threads};
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  upstream up {{
    {method}
{servers}
    keepalive 128;
  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
""")
        return subprocess.Popen([tool("nginx"), "-c", d / "nginx.conf", "-p", d],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return start


def haproxy_system(balance, upstreams, threads):
    def start(port, work):
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


def summarize(results, systems, connection_counts):
    table = {}
    for c in connection_counts:
        for s in systems:
            runs = [r for r in results if r["system"] == s and r["connections"] == c]
            if not runs:
                continue
            rps = [r["rps"] for r in runs]
            table[(s, c)] = {
                "rps": statistics.median(rps),
                "rps_min": min(rps),
                "rps_max": max(rps),
                "p50_ms": statistics.median(r["p50_us"] for r in runs) / 1000,
                "p99_ms": statistics.median(r["p99_us"] for r in runs) / 1000,
                "p999_ms": statistics.median(r["p999_us"] for r in runs) / 1000,
                "cpu_s": statistics.median(r["cpu_s"] for r in runs),
                "rss_mib": max(r["rss_mib"] for r in runs),
                "errors": sum(r["errors"] for r in runs),
            }
    return table


def markdown(table, systems, connection_counts, meta, args):
    lines = ["# Side-by-side load benchmark", "",
             f"Machine: {meta['cpu']}, {meta['cores']} cores, {meta['memory_gib']} GiB, Linux {meta['kernel']}; "
             f"{meta['nginx']}; {meta['haproxy']}.",
             f"wrk {args.duration} s per run, {args.rounds} round(s), systems interleaved; "
             f"proxies with {args.threads} worker thread(s)/process(es), keep-alive to a 1 KiB upstream (2 instances).",
             "Figures are medians over the rounds (req/s also min–max). Ratios are req/s ÷ the reference's req/s "
             "measured in the same run.", ""]
    for c in connection_counts:
        nginx = table.get(("nginx-roundrobin", c))
        direct = table.get(("direct", c))
        lines += [f"## {c} connections", "",
                  "| system | req/s (min–max) | ÷ nginx | ÷ direct | p50 ms | p99 ms | p99.9 ms | proxy CPU s | peak RSS MiB | errors |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for s in systems:
            r = table.get((s, c))
            if r is None:
                continue
            ratio = lambda ref: f"{r['rps'] / ref['rps']:.2f}" if ref else "–"
            lines.append(
                f"| {s} | {r['rps']:,.0f} ({r['rps_min']:,.0f}–{r['rps_max']:,.0f}) | {ratio(nginx)} | {ratio(direct)} | "
                f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['p999_ms']:.2f} | "
                f"{r['cpu_s']:.1f} | {r['rss_mib']:.1f} | {r['errors']} |")
        lines.append("")
    lines += ["## Targets", ""]
    for c in connection_counts:
        wasm = table.get(("switchyard-round-robin", c))
        native = table.get(("switchyard-native", c))
        nginx = table.get(("nginx-roundrobin", c))
        if wasm and nginx:
            ok = wasm["rps"] >= nginx["rps"] and wasm["p99_ms"] <= nginx["p99_ms"]
            lines.append(f"- {c} connections, Switchyard (Wasm round-robin) vs nginx round-robin: "
                         f"req/s ratio {wasm['rps'] / nginx['rps']:.2f}, p99 {wasm['p99_ms']:.2f} vs {nginx['p99_ms']:.2f} ms — "
                         f"{'met' if ok else 'NOT met'} (target: ratio ≥ 1.00 and p99 no higher)")
        if wasm and native:
            cost = 1 - wasm["rps"] / native["rps"]
            lines.append(f"- {c} connections, Wasm decision overhead (Wasm round-robin vs native selector): "
                         f"{cost * 100:+.1f} % req/s — {'met' if cost <= 0.03 else 'NOT met'} (target: within 3 %)")
    return "\n".join(lines) + "\n"


def svg(table, systems, connection_counts):
    width, bar, gap, left, top = 900, 14, 10, 210, 40
    colors = ["#4c78a8", "#f58518", "#54a24b", "#e45756"]
    rows = [s for s in systems if any((s, c) in table for c in connection_counts)]
    height = top + len(rows) * (len(connection_counts) * bar + gap) + 40
    peak = max(r["rps"] for r in table.values()) or 1
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
           f'<text x="{left}" y="20" font-size="14">Requests per second (median), by system and connection count</text>']
    y = top
    for s in rows:
        out.append(f'<text x="{left - 8}" y="{y + bar * len(connection_counts) / 2 + 4}" text-anchor="end">{s}</text>')
        for k, c in enumerate(connection_counts):
            r = table.get((s, c))
            if r:
                w = (width - left - 120) * r["rps"] / peak
                out.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar - 2}" fill="{colors[k % 4]}"/>')
                out.append(f'<text x="{left + w + 4:.1f}" y="{y + bar - 4}">{r["rps"]:,.0f}</text>')
            y += bar
        y += gap
    for k, c in enumerate(connection_counts):
        out.append(f'<rect x="{left + k * 140}" y="{height - 25}" width="12" height="12" fill="{colors[k % 4]}"/>'
                   f'<text x="{left + k * 140 + 16}" y="{height - 15}">{c} connections</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=5, help="seconds of load per run (default 5)")
    ap.add_argument("--rounds", type=int, default=2, help="times the whole set is repeated (default 2)")
    ap.add_argument("--connections", default="16,256", help="connection counts (default 16,256)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="proxy workers (default: cores)")
    ap.add_argument("--only", default="", help="comma-separated system names to run (default: all)")
    ap.add_argument("--out", type=Path, default=None, help="output directory (default <target>/perf)")
    ap.add_argument("--skip-build", action="store_true", help="use the release binaries already built")
    args = ap.parse_args()
    connection_counts = [int(c) for c in args.connections.split(",")]

    ensure_tools()
    target = target_dir()
    if not args.skip_build:
        log("building release binaries (switchyard, perf-upstream)")
        subprocess.run(["cargo", "build", "--release", "-p", "switchyard",
                        "-p", "perf-upstream"], cwd=REPO, check=True)
    binary = target / "release" / "switchyard"
    upstream_bin = target / "release" / "perf-upstream"
    out_dir = args.out or target / "perf"
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="switchyard-perf-"))
    lua = work / "report.lua"
    lua.write_text(LUA)

    upstream_procs, upstreams = [], []
    for _ in range(2):
        p = subprocess.Popen([upstream_bin, "127.0.0.1:0"], stdout=subprocess.PIPE, text=True)
        line = p.stdout.readline().strip()
        upstream_procs.append(p)
        upstreams.append(line.removeprefix("listening "))
    log(f"upstreams on {', '.join(upstreams)}")

    t = args.threads
    systems = {
        "direct": None,
        "switchyard-round-robin": switchyard_system(binary, "round-robin", upstreams, t),
        "switchyard-native": switchyard_system(binary, "round-robin", upstreams, t, native=True),
        "switchyard-least-conn": switchyard_system(binary, "least-conn", upstreams, t),
        "switchyard-latency": switchyard_system(binary, "latency", upstreams, t),
        "nginx-roundrobin": nginx_system("", upstreams, t),
        "nginx-least_conn": nginx_system("least_conn;", upstreams, t),
        "haproxy-roundrobin": haproxy_system("roundrobin", upstreams, t),
        "haproxy-leastconn": haproxy_system("leastconn", upstreams, t),
    }
    if args.only:
        keep = set(args.only.split(","))
        systems = {k: v for k, v in systems.items() if k in keep}
    port = free_port()
    results = []
    started = time.time()
    try:
        for round_no in range(args.rounds):
            for c in connection_counts:
                for name, start in systems.items():
                    proc = None
                    if start is None:
                        target_port = int(upstreams[0].rsplit(":", 1)[1])
                        pids = [upstream_procs[0].pid]
                    else:
                        proc = start(port, work)
                        wait_listening(port, proc, name)
                        target_port = port
                    try:
                        run_wrk(target_port, 16, 1, min(2, t), lua)  # warm up: connections, caches
                        pids = process_tree(proc.pid) if proc else pids
                        cpu0 = cpu_seconds(pids)
                        r = run_wrk(target_port, c, args.duration, min(2, t), lua)
                        cpu = cpu_seconds(pids) - cpu0
                        rss = peak_rss_mib(process_tree(proc.pid) if proc else pids)
                    finally:
                        stop(proc)
                    rps = r["requests"] / (r["duration_us"] / 1e6)
                    results.append({"system": name, "connections": c, "round": round_no, "rps": rps,
                                    "cpu_s": cpu, "rss_mib": rss, **r})
                    log(f"round {round_no + 1}/{args.rounds} c={c} {name}: {rps:,.0f} req/s, "
                        f"p99 {r['p99_us'] / 1000:.2f} ms, errors {r['errors']}")
    finally:
        for p in upstream_procs:
            p.kill()
    meta = machine()
    table = summarize(results, list(systems), connection_counts)
    md = markdown(table, list(systems), connection_counts, meta, args)
    (out_dir / "results.json").write_text(json.dumps({"machine": meta, "runs": results}, indent=1))
    (out_dir / "results.md").write_text(md)
    (out_dir / "chart.svg").write_text(svg(table, list(systems), connection_counts))
    print(md)
    log(f"done in {time.time() - started:.0f} s; wrote {out_dir}/results.md, chart.svg, results.json")


if __name__ == "__main__":
    main()
