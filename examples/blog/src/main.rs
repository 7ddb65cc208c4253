//! The blog example, whole: three instances and a backup sharing one SQLite database,
//! behind Switchyard with health checks, the latency balancer and a response cache.
//!
//! ```text
//! $ cargo build -p switchyard && cargo run -p switchyard-example-blog -- up
//! blog: instances a, b, c and backup d on 127.0.0.1:… sharing /tmp/…/blog.db
//! blog: Switchyard on http://127.0.0.1:8080 (Ctrl-C stops everything)
//! $ curl -si http://127.0.0.1:8080/articles          # x-instance: a, b or c
//! $ curl -si http://127.0.0.1:8080/                  # the website; x-cache: MISS, then HIT
//! ```
//!
//! `blog serve NAME ADDR DB` runs one instance (and prints `listening ADDR`);
//! `blog backup DB DIR [--every SECONDS] [--keep N]` copies the database online and
//! `blog restore FILE DB` puts a copy back (see `backup.rs`);
//! `examples/blog/tests/failover.rs` kills and restarts instances under load, reads
//! cached pages with every instance down, and destroys and restores the database;
//! `browser.rs` uses the website in headless Chromium.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["serve", name, addr, db] => serve(name, addr, Path::new(db)),
        ["up"] => up("127.0.0.1:8080"),
        ["up", "--listen", listen] => up(listen),
        ["backup", db, dir, options @ ..] => backup(Path::new(db), Path::new(dir), options),
        ["restore", copy, db] => {
            switchyard_example_blog::backup::restore(Path::new(copy), Path::new(db))
                .map(|()| println!("restored {db} from {copy}"))
        }
        _ => Err(USAGE.to_owned()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("blog: {e}");
            ExitCode::FAILURE
        }
    }
}

const USAGE: &str = "usage: blog serve NAME ADDR DB | blog up [--listen ADDR] | \
blog backup DB DIR [--every SECONDS] [--keep N] | blog restore FILE DB";

/// `blog backup DB DIR [--every SECONDS] [--keep N]`: once, or every SECONDS forever.
fn backup(db: &Path, dir: &Path, options: &[&str]) -> Result<(), String> {
    let (mut every, mut keep) = (None, 5usize);
    let mut rest = options.iter();
    while let Some(option) = rest.next() {
        let value = rest
            .next()
            .ok_or_else(|| format!("{option} needs a value; {USAGE}"))?;
        match *option {
            "--every" => {
                let seconds: f64 = value
                    .parse()
                    .map_err(|_| format!("--every {value:?}: seconds, like 30"))?;
                every = Some(std::time::Duration::from_secs_f64(seconds.max(0.1)));
            }
            "--keep" => {
                keep = value
                    .parse()
                    .map_err(|_| format!("--keep {value:?}: a count, like 5"))?
            }
            _ => return Err(format!("unknown option {option}; {USAGE}")),
        }
    }
    loop {
        let copy = switchyard_example_blog::backup::backup_once(db, dir, keep)?;
        println!("backup {}", copy.display());
        match every {
            Some(pause) => std::thread::sleep(pause),
            None => return Ok(()),
        }
    }
}

fn serve(name: &str, addr: &str, db: &Path) -> Result<(), String> {
    let addr: SocketAddr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not an address like 127.0.0.1:0"))?;
    let blog = switchyard_example_blog::open(name, db)
        .map_err(|e| format!("cannot open the database {}: {e}", db.display()))?;
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let bound = switchyard_example_blog::start(blog, addr)
            .await
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        println!("listening {bound}");
        std::future::pending::<()>().await;
        Ok(())
    })
}

/// Starts `blog serve` as a child and returns it with the address it listens on.
fn spawn_instance(name: &str, addr: &str, db: &Path) -> Result<(Child, SocketAddr), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .args(["serve", name, addr])
        .arg(db)
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start instance {name}: {e}"))?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    let addr = line
        .trim()
        .strip_prefix("listening ")
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("instance {name} did not start"))?;
    Ok((child, addr))
}

/// The `switchyard` binary: `$SWITCHYARD`, else the one built beside this one.
fn switchyard_binary() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("SWITCHYARD") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let beside = exe.with_file_name("switchyard");
    if beside.is_file() {
        Ok(beside)
    } else {
        Err(format!(
            "no switchyard binary at {}; run `cargo build -p switchyard` first or set SWITCHYARD",
            beside.display()
        ))
    }
}

fn up(listen: &str) -> Result<(), String> {
    let switchyard = switchyard_binary()?;
    let dir = std::env::temp_dir().join(format!("switchyard-blog-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let db = dir.join("blog.db");
    let mut children = Vec::new();
    let mut addrs = Vec::new();
    for name in ["a", "b", "c", "d"] {
        let (child, addr) = spawn_instance(name, "127.0.0.1:0", &db)?;
        children.push(child);
        addrs.push(addr);
    }
    let config = dir.join("switchyard.toml");
    std::fs::write(
        &config,
        switchyard_example_blog::config_text(listen, &addrs, &dir.join("admin.sock")),
    )
    .map_err(|e| e.to_string())?;
    eprintln!(
        "blog: instances a, b, c and backup d on {} sharing {}",
        addrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        db.display()
    );
    eprintln!("blog: Switchyard on http://{listen} (Ctrl-C stops everything)");
    let status = Command::new(switchyard)
        .args(["run", "--config"])
        .arg(&config)
        .status();
    for mut child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
    status.map_err(|e| e.to_string()).and_then(|s| {
        if s.success() {
            Ok(())
        } else {
            Err(format!("switchyard exited with {s}"))
        }
    })
}
