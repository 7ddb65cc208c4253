//! The disk tier: every stored entry also goes to a file under the cache's `path`, so
//! a restart keeps them. The index (key → file) is in memory, rebuilt at start from
//! each file's first line, oldest file first; the files are bounded by `disk` bytes,
//! least recently used first out.
//!
//! Writes and deletes run on one thread of their own, in order, off the request path;
//! a file is written to a temporary name and renamed, so a crash leaves no half entry.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use bytes::Bytes;
use parking_lot::Mutex;

use super::entry::{Entry, index_line, variant_key};
use super::lru::Lru;

const SUFFIX: &str = "entry";

enum Job {
    Write(PathBuf, Vec<u8>),
    Delete(PathBuf),
}

/// A cache's disk tier.
pub struct Disk {
    dir: PathBuf,
    index: Mutex<Lru<PathBuf>>,
    jobs: Mutex<mpsc::Sender<Job>>,
}

impl std::fmt::Debug for Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Disk").field("dir", &self.dir).finish()
    }
}

impl Disk {
    /// Opens (creating) `dir`, indexing the entries already there.
    pub fn open(dir: &Path, limit: u64) -> std::io::Result<(Disk, Vec<PathBuf>)> {
        fs::create_dir_all(dir)?;
        let mut found = Vec::new();
        for item in fs::read_dir(dir)? {
            let path = item?.path();
            if path.extension().is_some_and(|e| e == "tmp") {
                let _ = fs::remove_file(&path);
                continue;
            }
            if path.extension().is_none_or(|e| e != SUFFIX) {
                continue;
            }
            let Ok(meta) = fs::metadata(&path) else {
                continue;
            };
            let modified = meta.modified().unwrap_or(std::time::SystemTime::UNIX_EPOCH);
            found.push((modified, path, meta.len()));
        }
        found.sort();
        let mut index = Lru::new(limit);
        let mut unreadable = Vec::new();
        let mut evicted = Vec::new();
        for (_, path, size) in found {
            let mut line = Vec::new();
            let read =
                fs::File::open(&path).and_then(|f| BufReader::new(f).read_until(b'\n', &mut line));
            match read.ok().and_then(|_| index_line(line.trim_ascii_end())) {
                Some((primary, variant, vary)) => {
                    let key = variant_key(&primary, &variant);
                    evicted.extend(index.insert(key, primary, &vary, path, size).1);
                }
                None => unreadable.push(path),
            }
        }
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("cache-disk".into())
            .spawn(move || {
                for job in rx {
                    match job {
                        Job::Write(path, bytes) => {
                            let tmp = path.with_extension("tmp");
                            let written = fs::write(&tmp, &bytes).and_then(|()| fs::rename(&tmp, &path));
                            if let Err(e) = written {
                                tracing::warn!(file = %path.display(), error = %e, "could not write a cache entry to disk");
                                let _ = fs::remove_file(&tmp);
                            }
                        }
                        Job::Delete(path) => {
                            let _ = fs::remove_file(&path);
                        }
                    }
                }
            })?;
        for path in evicted {
            let _ = tx.send(Job::Delete(path));
        }
        let disk = Disk {
            dir: dir.to_owned(),
            index: Mutex::new(index),
            jobs: Mutex::new(tx),
        };
        Ok((disk, unreadable))
    }

    /// The file of the variant of `primary` that `request` selects, if one is held.
    pub fn find(&self, primary: &str, request: &http::HeaderMap) -> Option<PathBuf> {
        self.index.lock().get_variant(primary, request)
    }

    /// Reads an entry back (blocking: call off the request threads).
    pub fn read(path: &Path) -> Option<Entry> {
        Entry::decode(Bytes::from(fs::read(path).ok()?))
    }

    /// Writes `entry`; gives how many entries were evicted to make room.
    pub fn store(&self, entry: &Entry) -> usize {
        let key = entry.key();
        let name = format!(
            "{}.{SUFFIX}",
            crate::plugin::registry::sha256_hex(key.as_bytes())
        );
        let path = self.dir.join(name);
        let bytes = entry.encode();
        // The index stays locked until the jobs are queued, so a purge that removes
        // this key queues its delete after this write, never before it.
        let mut index = self.index.lock();
        let (_, evicted) = index.insert(
            key,
            entry.primary.clone(),
            &entry.policy.vary,
            path.clone(),
            bytes.len() as u64,
        );
        let jobs = self.jobs.lock();
        let _ = jobs.send(Job::Write(path, bytes));
        for old in &evicted {
            let _ = jobs.send(Job::Delete(old.clone()));
        }
        evicted.len()
    }

    /// Removes the entries of every primary key `matches` accepts.
    pub fn remove_where(&self, matches: impl Fn(&str) -> bool) -> usize {
        let mut index = self.index.lock();
        let removed = index.remove_where(matches);
        let jobs = self.jobs.lock();
        for path in &removed {
            let _ = jobs.send(Job::Delete(path.clone()));
        }
        removed.len()
    }

    /// Removes every variant of `primary`.
    pub fn remove_primary(&self, primary: &str) -> usize {
        let mut index = self.index.lock();
        let removed = index.remove_primary(primary);
        let jobs = self.jobs.lock();
        for path in &removed {
            let _ = jobs.send(Job::Delete(path.clone()));
        }
        removed.len()
    }

    /// Entries and bytes held.
    pub fn usage(&self) -> (usize, u64) {
        let index = self.index.lock();
        (index.len(), index.bytes())
    }

    /// Changes the bound.
    pub fn set_limit(&self, limit: u64) {
        let mut index = self.index.lock();
        let evicted = index.set_limit(limit);
        let jobs = self.jobs.lock();
        for path in evicted {
            let _ = jobs.send(Job::Delete(path));
        }
    }
}
