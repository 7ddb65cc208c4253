//! Online backups of the shared database, and restoring one.
//!
//! `blog backup DB DIR [--every SECONDS] [--keep N]` copies the database with SQLite's
//! backup API — page by page, while the instances go on writing (a copy that another
//! connection changes underneath restarts by itself) — to `DIR/blog-<ms>.db`, keeping
//! the newest `N` (default 5). `blog restore FILE DB` checks the copy, removes the old
//! write-ahead log and puts the copy in place atomically; the instances notice the new
//! file and reopen it.

use rusqlite::backup::Backup;
use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Pages copied per step, and the pause between steps that lets writers in.
const PAGES_PER_STEP: i32 = 64;
const PAUSE: Duration = Duration::from_millis(1);

/// Copies `db` into `dir` now and keeps the newest `keep` copies; the new copy's path.
pub fn backup_once(db: &Path, dir: &Path, keep: usize) -> Result<PathBuf, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let source = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| format!("cannot open {}: {e}", db.display()))?;
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let target = dir.join(format!("blog-{millis}.db"));
    let partial = target.with_extension("db.partial");
    {
        let mut copy = Connection::open(&partial)
            .map_err(|e| format!("cannot create {}: {e}", partial.display()))?;
        Backup::new(&source, &mut copy)
            .and_then(|b| b.run_to_completion(PAGES_PER_STEP, PAUSE, None))
            .map_err(|e| format!("backup of {} failed: {e}", db.display()))?;
    }
    std::fs::rename(&partial, &target).map_err(|e| e.to_string())?;
    prune(dir, keep)?;
    Ok(target)
}

/// Removes all but the newest `keep` backups in `dir`.
fn prune(dir: &Path, keep: usize) -> Result<(), String> {
    let mut copies: Vec<(u128, PathBuf)> = std::fs::read_dir(dir)
        .map_err(|e| e.to_string())?
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let name = path.file_name()?.to_str()?;
            let millis = name
                .strip_prefix("blog-")?
                .strip_suffix(".db")?
                .parse()
                .ok()?;
            Some((millis, path))
        })
        .collect();
    copies.sort();
    let excess = copies.len().saturating_sub(keep.max(1));
    for (_, path) in copies.drain(..excess) {
        std::fs::remove_file(&path)
            .map_err(|e| format!("cannot remove {}: {e}", path.display()))?;
    }
    Ok(())
}

/// Puts the backup `copy` in place of `db`: checked first (SQLite's integrity check),
/// written beside, the old write-ahead log and shared-memory files removed (they belong
/// to the file being replaced), then renamed over `db` in one step.
pub fn restore(copy: &Path, db: &Path) -> Result<(), String> {
    let check = Connection::open_with_flags(copy, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .and_then(|c| c.query_row("PRAGMA integrity_check", [], |r| r.get::<_, String>(0)))
        .map_err(|e| format!("{} is not a usable backup: {e}", copy.display()))?;
    if check != "ok" {
        return Err(format!(
            "{} fails SQLite's integrity check: {check}",
            copy.display()
        ));
    }
    let staged = db.with_extension("restoring");
    std::fs::copy(copy, &staged).map_err(|e| format!("cannot write {}: {e}", staged.display()))?;
    for suffix in ["-wal", "-shm"] {
        let mut side = db.as_os_str().to_owned();
        side.push(suffix);
        match std::fs::remove_file(&side) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(format!("cannot remove {}: {e}", Path::new(&side).display()));
            }
            _ => {}
        }
    }
    std::fs::rename(&staged, db).map_err(|e| format!("cannot put {} in place: {e}", db.display()))
}
