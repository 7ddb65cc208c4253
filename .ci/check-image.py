#!/usr/bin/env python3
"""Keeps the Dockerfile and compose.yaml honest without a container engine.

For each runtime stage of the Dockerfile, this builds the stage's filesystem the way
the engine would -- a Debian chroot of the stage's base (debootstrap --variant=minbase),
then every RUN executed in it, every COPY copied (`--from=build` paths are mapped to
this checkout's build output) -- and checks the USER it names exists. Then it starts
the services of compose.yaml from those filesystems, in a private network namespace
(one loopback address per service, the service names in /etc/hosts, as compose's
network gives them), each with its image's ENTRYPOINT and the service's command, as the
image's user; and it asks the proxy for /healthz, /ready and a page of the blog.

What it does not check: the build stage itself (the checkout's own build stands in
for it), layer caching, and the engine's own behaviour (port publishing, volumes
other than as plain directories, restart policies).

usage: python3 .ci/check-image.py [--binaries DIR]
  DIR holds the built `switchyard` and `blog` (default: $CARGO_TARGET_DIR/release, else
  $CARGO_TARGET_DIR/debug). Needs root (chroot, unshare) and Debian's debootstrap.
"""

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "switchyard"
MIRROR = "http://deb.debian.org/debian"


def fail(message):
    print(f"check-image: FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def say(message):
    print(f"check-image: {message}", flush=True)


def instructions(text):
    """(keyword, argument) per instruction, continuation lines joined."""
    lines, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        lines.append(current)
        current = ""
    out = []
    for line in lines:
        keyword, _, rest = line.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def stages(text):
    """{name: {"base": image, "steps": [(keyword, argument)]}} in file order."""
    result, current = {}, None
    for keyword, arg in instructions(text):
        if keyword == "FROM":
            words = arg.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(result))
            current = result[name] = {"base": words[0], "steps": []}
        elif current is None:
            fail(f"Dockerfile: {keyword} before any FROM")
        else:
            current["steps"].append((keyword, arg))
    return result


def exec_form(arg, where):
    try:
        value = json.loads(arg)
    except json.JSONDecodeError:
        fail(f"{where} must be in exec form (a JSON list), so signals reach the process: {arg}")
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        fail(f"{where} must be a JSON list of strings: {arg}")
    return value


def base_root(image):
    """A fresh directory with the base image's system: debian:SUITE-slim via debootstrap,
    cached as a tarball between runs."""
    name, _, tag = image.partition(":")
    if name != "debian" or not tag.endswith("-slim"):
        fail(f"base image {image}: only debian:SUITE-slim can be rebuilt here")
    suite = tag.removesuffix("-slim")
    CACHE.mkdir(parents=True, exist_ok=True)
    tarball = CACHE / f"{suite}-minbase.tar"
    if not tarball.exists():
        say(f"debootstrap --variant=minbase {suite} (cached in {tarball})")
        staging = Path(tempfile.mkdtemp(prefix=f"{suite}-", dir=CACHE))
        subprocess.run(["debootstrap", "--variant=minbase", suite, staging, MIRROR],
                       check=True, stdout=subprocess.DEVNULL)
        with tarfile.open(tarball.with_suffix(".tmp"), "w") as t:
            t.add(staging, arcname=".")
        tarball.with_suffix(".tmp").rename(tarball)
        shutil.rmtree(staging)
    root = Path(tempfile.mkdtemp(prefix="image-"))
    with tarfile.open(tarball) as t:
        t.extractall(root, filter="fully_trusted")
    root.chmod(0o755)  # an image's / is world-readable; mkdtemp made it private
    shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")
    return root


def build_stage(name, stage, binaries):
    say(f"stage {name}: from {stage['base']}")
    root = base_root(stage["base"])
    image = {"root": root, "user": "root", "entrypoint": [], "cmd": [], "expose": []}
    for keyword, arg in stage["steps"]:
        if keyword == "RUN":
            say(f"  RUN {arg[:90]}{'…' if len(arg) > 90 else ''}")
            done = subprocess.run(["chroot", root, "/bin/sh", "-ec", arg],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            if done.returncode != 0:
                fail(f"stage {name}: RUN {arg}\n{done.stderr}")
        elif keyword == "COPY":
            words = arg.split()
            source_stage = None
            if words[0].startswith("--from="):
                source_stage = words.pop(0).removeprefix("--from=")
            src, dst = words
            if source_stage == "build":
                if src.startswith("/src/target/release/"):
                    host = binaries / src.removeprefix("/src/target/release/")
                elif src.startswith("/src/"):
                    host = REPO / src.removeprefix("/src/")
                else:
                    fail(f"stage {name}: COPY --from=build {src}: not under /src")
            elif source_stage is None:
                host = REPO / src
            else:
                fail(f"stage {name}: COPY --from={source_stage}: unknown stage")
            if not host.exists():
                fail(f"stage {name}: COPY {src}: {host} does not exist in the build output")
            target = root / dst.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            if host.is_dir():
                shutil.copytree(host, target, dirs_exist_ok=True)
            else:
                shutil.copy2(host, target)
            say(f"  COPY {src} -> {dst}")
        elif keyword == "USER":
            image["user"] = arg
        elif keyword == "ENTRYPOINT":
            image["entrypoint"] = exec_form(arg, f"stage {name}: ENTRYPOINT")
        elif keyword == "CMD":
            image["cmd"] = exec_form(arg, f"stage {name}: CMD")
        elif keyword == "EXPOSE":
            image["expose"] = [int(p) for p in arg.split()]
        elif keyword in ("WORKDIR", "ENV", "LABEL", "STOPSIGNAL", "HEALTHCHECK"):
            fail(f"stage {name}: {keyword} is not emulated by this check; teach it first")
        else:
            fail(f"stage {name}: unknown instruction {keyword}")
    passwd = (root / "etc/passwd").read_text()
    if not any(line.split(":")[0] == image["user"] for line in passwd.splitlines()):
        fail(f"stage {name}: USER {image['user']} does not exist in the image")
    program = image["entrypoint"][:1]
    if not program or not (root / program[0].lstrip("/")).is_file():
        fail(f"stage {name}: the entry point {program} is not a file in the image")
    say(f"  user {image['user']}, entry point {image['entrypoint']} {image['cmd']}")
    return image


def ids(image):
    """uid:gid of the image's USER, from the image's own /etc/passwd."""
    for line in (image["root"] / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == image["user"]:
            return f"{fields[2]}:{fields[3]}"
    fail(f"USER {image['user']} is not in the image")


def as_user(image, argv):
    """argv run in the image as its USER."""
    return [shutil.which("chroot"), f"--userspec={ids(image)}", image["root"], *argv]


def main():
    parser = argparse.ArgumentParser()
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    default = target / "release"
    # A release build of the proxy alone (the benchmark's) is not enough: both are needed.
    if not all((default / name).exists() for name in ("switchyard", "blog")):
        default = target / "debug"
    parser.add_argument("--binaries", type=Path, default=default)
    parser.add_argument("--inside", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if os.geteuid() != 0:
        fail("needs root (chroot, network namespaces)")
    if args.inside:
        images = json.loads(args.inside.read_text())
        for image in images.values():
            image["root"] = Path(image["root"])
        return run_services(images)
    dockerfile = stages((REPO / "Dockerfile").read_text())
    # The last stage is what `docker build .` produces.
    if list(dockerfile)[-1] != "switchyard":
        fail("the Dockerfile's last stage must be the proxy (`docker build .` builds it)")
    say(f"binaries from {args.binaries}")
    images = {}
    try:
        for name, stage in dockerfile.items():
            if name != "build":
                images[name] = build_stage(name, stage, args.binaries)
        listing = Path(tempfile.mkstemp(suffix=".json")[1])
        listing.write_text(json.dumps({n: {**i, "root": str(i["root"])} for n, i in images.items()}))
        # Everything that listens runs in a network namespace of its own: the fixed
        # ports (8080, 9090, 8000) cannot collide with anything on the machine.
        done = subprocess.run(["unshare", "--net", "--", sys.executable, __file__, "--inside", str(listing)])
        listing.unlink()
        sys.exit(done.returncode)
    finally:
        for image in images.values():
            # Never delete through a mount left behind by a failed run.
            for mount in ("proc", "var/lib/blog"):
                subprocess.run(["umount", image["root"] / mount], stderr=subprocess.DEVNULL)
            shutil.rmtree(image["root"], ignore_errors=True)


def check_kubernetes_config(image, hosts):
    """The Kubernetes ConfigMap's configuration passes `switchyard check` in the image,
    as its user, with `blog` (the Service it names) resolving."""
    import yaml

    documents = yaml.safe_load_all((REPO / "deploy/kubernetes/configmap.yaml").read_text())
    config = next(d for d in documents if d["metadata"]["name"] == "switchyard-config")
    with open(image["root"] / "etc/hosts", "a") as f:
        f.write(f"{hosts['blog-a']} blog\n")
    path = image["root"] / "etc/switchyard/config/switchyard.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config["data"]["switchyard.toml"])
    argv = as_user(image, ["/usr/local/bin/switchyard", "check", "--config", "/etc/switchyard/config/switchyard.toml"])
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        fail(f"deploy/kubernetes/configmap.yaml: switchyard check in the image:\n{done.stdout}{done.stderr}")
    say("deploy/kubernetes/configmap.yaml: switchyard check in the image, as its user: ok")


def run_services(images):
    import yaml

    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    services = compose["services"]
    hosts = {}
    for i, name in enumerate(services):
        hosts[name] = f"127.0.0.{i + 2}"
    for image in images.values():
        with open(image["root"] / "etc/hosts", "a") as f:
            for name, ip in hosts.items():
                f.write(f"{ip} {name}\n")

    processes = []
    shared_volumes = {}
    mounted = []
    try:
        # The engine gives every container a /proc.
        for image in images.values():
            subprocess.run(["mount", "-t", "proc", "proc", image["root"] / "proc"], check=True)
            mounted.append(image["root"] / "proc")
        check_kubernetes_config(images["switchyard"], hosts)
        for name, service in services.items():
            target = service.get("build", {}).get("target")
            if target not in images:
                fail(f"compose.yaml: service {name} builds target {target!r}, not a Dockerfile stage")
            image = images[target]
            for volume in service.get("volumes", []):
                source, _, rest = volume.partition(":")
                mount = rest.split(":")[0]
                inside_path = image["root"] / mount.lstrip("/")
                if source.startswith("./"):
                    if not (REPO / source).is_dir():
                        fail(f"compose.yaml: service {name}: {source} does not exist")
                    continue
                if source not in compose.get("volumes", {}):
                    fail(f"compose.yaml: service {name}: volume {source} is not declared")
                # A named volume shared by services: the first service's directory,
                # bind-mounted into the others, so the blog instances share one database.
                if source in shared_volumes and shared_volumes[source] != inside_path:
                    subprocess.run(["mount", "--bind", shared_volumes[source], inside_path], check=True)
                    mounted.append(inside_path)
                else:
                    shared_volumes[source] = inside_path
                    if not inside_path.is_dir():
                        fail(f"compose.yaml: service {name}: {mount} is not a directory in the image")
            command = service.get("command", image["cmd"])
            # Each service has its own address in compose; here, its loopback address.
            command = [c.replace("0.0.0.0", hosts[name]) for c in command]
            argv = as_user(image, image["entrypoint"] + command)
            say(f"start {name}: {shlex.join(image['entrypoint'] + command)}")
            log = open(image["root"] / f"{name}.log", "w")
            env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "RUST_LOG": "info"}
            processes.append((name, subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env), image))
            if name != "switchyard":
                time.sleep(0.3)
        proxy = hosts["switchyard"]

        def get(port, path):
            try:
                with urllib.request.urlopen(f"http://{proxy}:{port}{path}", timeout=2) as r:
                    return r.status, dict(r.headers), r.read().decode()
            except urllib.error.HTTPError as e:
                return e.code, dict(e.headers), e.read().decode()
            except OSError:
                return None, {}, ""

        deadline = time.time() + 60
        ready = None
        while time.time() < deadline:
            ready = get(9090, "/ready")
            if ready[0] == 200:
                break
            for name, p, image in processes:
                if p.poll() is not None:
                    fail(f"{name} exited with {p.returncode}:\n{(image['root'] / f'{name}.log').read_text()}")
            time.sleep(0.2)
        if not ready or ready[0] != 200:
            logs = "".join((image["root"] / f"{n}.log").read_text() for n, _, image in processes)
            fail(f"/ready never answered 200 (last: {ready}):\n{logs}")
        say("GET /healthz on :9090 -> {}".format(get(9090, "/healthz")[0]))
        say("GET /ready on :9090 -> 200")
        seen = set()
        for _ in range(12):
            status, headers, _ = get(8080, "/articles")
            if status != 200:
                fail(f"GET /articles through the proxy answered {status}")
            seen.add(headers.get("x-instance"))
        say(f"GET /articles x12 through the proxy -> 200, instances {sorted(seen)}")
        if not seen >= {"a", "b", "c"}:
            fail(f"expected the three primaries to answer, saw {seen}")
        name, p, image = processes[-1]
        state = as_user(image, ["/usr/local/bin/switchyard", "ctl", "--socket", "/run/switchyard/admin.sock", "status"])
        status = subprocess.run(state, capture_output=True, text=True)
        if status.returncode != 0:
            fail(f"switchyard ctl status as the image's user: {status.stdout}{status.stderr}")
        say("switchyard ctl status (as the image's user): ok")
        p.terminate()
        try:
            code = p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            fail("the proxy did not exit within 30 s of SIGTERM")
        say(f"SIGTERM: the proxy exited with {code} after its drain delay")
        if code != 0:
            fail(f"exit status {code} after SIGTERM")
        say("ok")
    finally:
        for _, p, _ in processes:
            if p.poll() is None:
                p.kill()
                p.wait()
        for path in mounted:
            subprocess.run(["umount", path], stderr=subprocess.DEVNULL)


if __name__ == "__main__":
    main()
