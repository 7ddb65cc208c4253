#!/usr/bin/env python3
"""What a shadow balancer costs the live requests: Switchyard (round-robin, one worker)
with no shadow, with an identical shadow shown every request, and with a shadow that
loops in every call, in front of the same upstreams, driven by wrk on loopback with 16
connections. Rounds interleave the three; each figure is its best round (highest req/s,
lowest CPU/request, lowest p99), since noise on a shared machine only makes a run worse.

    python3 tests/perf/shadow.py              # about 3 minutes after the release build
    python3 tests/perf/shadow.py --rounds 1   # a quick look

Prints a Markdown table: req/s, proxy CPU µs per request (the process tree's
utime+stime / requests), p99, errors, and each ÷ the no-shadow run.
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import side_by_side as sbs  # noqa: E402


def system(binary, work, name, upstreams, shadow):
    d = Path(tempfile.mkdtemp(dir=work, prefix=name))
    plugins = d / "plugins"
    plugins.mkdir()
    misbehave = sbs.target_dir() / "wasm-plugins/wasm32-wasip2/release/misbehave.wasm"
    (plugins / "misbehave.wasm").write_bytes(misbehave.read_bytes())
    backends = ", ".join(f'{{ addr = "{u}" }}' for u in upstreams)
    port = sbs.free_port()
    (d / "switchyard.toml").write_text(
        f'[proxy]\nlisten = ["127.0.0.1:{port}"]\nthreads = 1\naccess_log = "off"\n\n'
        f'[plugins]\ndir = "{plugins}"\ncache_dir = "{work}/plugin-cache"\n\n'
        f'[admin]\nsocket = "{d}/admin.sock"\n\n'
        f'[[pools]]\nname = "up"\nbalancer = "round-robin"\n{shadow}\nbackends = [{backends}]\n')
    proc = subprocess.Popen([binary, "run", "--config", d / "switchyard.toml"],
                            env={"RUST_LOG": "warn", "PATH": "/usr/bin:/bin"},
                            stdout=subprocess.DEVNULL, stderr=open(d / "log", "w"))
    sbs.wait_listening(port, proc, name)
    return proc, port


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    args = parser.parse_args()
    sbs.ensure_tools()
    subprocess.run(["cargo", "build", "--release", "-p", "switchyard", "-p", "perf-upstream"],
                   cwd=sbs.REPO, check=True)
    release = sbs.target_dir() / "release"
    work = tempfile.mkdtemp(prefix="switchyard-shadow-perf-")
    lua = Path(work) / "report.lua"
    lua.write_text(sbs.LUA)
    upstream_procs, upstreams = [], []
    for _ in range(2):
        p = subprocess.Popen([release / "perf-upstream", "127.0.0.1:0"],
                             stdout=subprocess.PIPE, text=True)
        upstreams.append(p.stdout.readline().strip().removeprefix("listening "))
        upstream_procs.append(p)
    kinds = {
        "no shadow": "",
        "identical shadow, every request": 'shadow = "round-robin"',
        "looping shadow, every request": 'shadow = "misbehave"\nshadow_config = { mode = "loop-select" }',
    }
    procs = {}
    results = {k: [] for k in kinds}
    try:
        for name, shadow in kinds.items():
            procs[name] = system(release / "switchyard", work, name.split()[0], upstreams, shadow)
        for r in range(args.rounds):
            for name, (proc, port) in procs.items():
                sbs.run_wrk(port, 16, 2, 1, lua)  # warm up
                pids = sbs.process_tree(proc.pid)
                before = sum(sbs.cpu_seconds(pids))
                out = sbs.run_wrk(port, 16, args.duration, 1, lua)
                cpu = sum(sbs.cpu_seconds(pids)) - before
                out["cpu_us"] = 1e6 * cpu / max(out["requests"], 1)
                out["rps"] = out["requests"] / (out["duration_us"] / 1e6)
                results[name].append(out)
                sbs.log(f"round {r + 1} {name}: {out['rps']:.0f} req/s, "
                        f"{out['cpu_us']:.1f} µs/req, p99 {out['p99_us']} µs, errors {out['errors']}")
    finally:
        for proc, _ in procs.values():
            sbs.stop(proc)
        for p in upstream_procs:
            sbs.stop(p)
    base = results["no shadow"]
    best_rps = lambda rs: max(x["rps"] for x in rs)  # noqa: E731
    best_cpu = lambda rs: min(x["cpu_us"] for x in rs)  # noqa: E731
    p99 = lambda rs: min(x["p99_us"] for x in rs)  # noqa: E731
    print("| system | req/s | ÷ | CPU µs/req | ÷ | p99 µs | ÷ | errors |")
    print("|---|---|---|---|---|---|---|---|")
    for name, rs in results.items():
        print(f"| {name} | {best_rps(rs):,.0f} | {best_rps(rs) / best_rps(base):.2f} | "
              f"{best_cpu(rs):.1f} | {best_cpu(rs) / best_cpu(base):.2f} | {p99(rs):,.0f} | "
              f"{p99(rs) / p99(base):.2f} | {sum(x['errors'] for x in rs)} |")
    print(f"\n{args.rounds} round(s) of {args.duration} s per system, "
          f"{time.strftime('%Y-%m-%d')}, wrk -t1 -c16, one proxy worker.")


if __name__ == "__main__":
    main()
