//! The compile cache: what a compile stage produced (the program, and the compiler's
//! report), keyed by a blake3 hash of everything that decides it — the language, its
//! compiler's version, the compile command and environment, and every file.
//!
//! Two levels: memory (bounded by bytes, least recently used out first, via moka) and an
//! optional directory on disk (bounded, entries written to a temporary file and renamed, each
//! with a checksum so that a corrupted or partial entry is detected, removed and rebuilt;
//! it survives restarts). Identical compiles arriving together run once: the first claims the
//! key, the others wait for its result.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use cod_core::StageReport;
use cod_sandbox::{FileEntry, SharedFile};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// A cache key: blake3 of a compile's inputs.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ArtifactKey(pub [u8; 32]);

impl fmt::Display for ArtifactKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ArtifactKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ArtifactKey({self})")
    }
}

/// Builds an [`ArtifactKey`] from length-prefixed fields, so that no two different inputs
/// concatenate to the same bytes.
#[derive(Debug, Default)]
pub struct KeyBuilder(blake3::Hasher);

impl KeyBuilder {
    /// Adds a field.
    pub fn field(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.update(&(bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
        self
    }

    /// The key.
    pub fn finish(&self) -> ArtifactKey {
        ArtifactKey(*self.0.finalize().as_bytes())
    }
}

/// Files of an artifact at least this large reach a run's sandbox as a [`SharedFile`] (one
/// sealed memfd per artifact, copied in the kernel) instead of through the run's sockets.
pub const SHARE_FROM: usize = 64 << 10;

/// What a compile produced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    /// The files to put beside the sources for the run (empty after a compile error).
    pub files: Vec<FileEntry>,
    /// The compiler's report (its warnings or errors).
    pub compile: StageReport,
    /// The large files as [`SharedFile`]s, made at the artifact's first cached run.
    #[serde(skip)]
    shared: SharedOnce,
}

/// Most memfds that artifacts keep at once: each is an open descriptor of this process, and
/// a large memory cache must not use up the descriptors that connections need. Past it, an
/// artifact's runs get its bytes through the run's sockets, as small files do.
pub const MAX_LIVE_SHARED: usize = 256;

/// Memfds kept by artifacts now (see [`MAX_LIVE_SHARED`]).
static LIVE_SHARED: AtomicUsize = AtomicUsize::new(0);

/// Counts `n` more live memfds if that stays within [`MAX_LIVE_SHARED`].
fn reserve_shared(n: usize) -> bool {
    LIVE_SHARED
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |live| {
            (live + n <= MAX_LIVE_SHARED).then_some(live + n)
        })
        .is_ok()
}

/// An artifact's large files as sealed memfds, made at its first run (set only once made).
/// Not part of what an artifact is: clones start empty and every two compare equal.
#[derive(Default)]
struct SharedOnce(std::sync::OnceLock<Vec<SharedFile>>);

impl Drop for SharedOnce {
    fn drop(&mut self) {
        if let Some(made) = self.0.get() {
            LIVE_SHARED.fetch_sub(made.len(), Ordering::AcqRel);
        }
    }
}

impl Clone for SharedOnce {
    fn clone(&self) -> SharedOnce {
        SharedOnce::default()
    }
}

impl fmt::Debug for SharedOnce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedOnce")
    }
}

impl PartialEq for SharedOnce {
    fn eq(&self, _: &SharedOnce) -> bool {
        true
    }
}

impl Eq for SharedOnce {}

impl Artifact {
    /// A compile's files and report.
    pub fn new(files: Vec<FileEntry>, compile: StageReport) -> Artifact {
        Artifact {
            files,
            compile,
            shared: SharedOnce::default(),
        }
    }

    /// The files a run gets: those under [`SHARE_FROM`] bytes by value, the others as
    /// [`SharedFile`]s made on the first call and kept with the artifact (all by value when
    /// a memfd cannot be made, or [`MAX_LIVE_SHARED`] are kept already).
    pub fn run_files(&self) -> (Vec<FileEntry>, Vec<SharedFile>) {
        match self.shared.0.get().or_else(|| self.make_shared()) {
            Some(shared) => {
                let by_value = self
                    .files
                    .iter()
                    .filter(|f| !shared.iter().any(|s| s.name == f.name))
                    .cloned()
                    .collect();
                (by_value, shared.clone())
            }
            None => (self.files.clone(), Vec::new()),
        }
    }

    /// Makes the memfds of [`Self::run_files`] and keeps them, if there is anything to share
    /// and room for it.
    fn make_shared(&self) -> Option<&Vec<SharedFile>> {
        let big: Vec<&FileEntry> = self
            .files
            .iter()
            .filter(|f| f.content.len() >= SHARE_FROM)
            .take(cod_sandbox::protocol::MAX_SHARED)
            .collect();
        if big.is_empty() || !reserve_shared(big.len()) {
            return None;
        }
        let made: io::Result<Vec<SharedFile>> = big
            .iter()
            .map(|f| SharedFile::new(&f.name, &f.content, f.executable))
            .collect();
        match made {
            // Another run of this artifact may have made them first: its are kept.
            Ok(made) => {
                if let Err(extra) = self.shared.0.set(made) {
                    LIVE_SHARED.fetch_sub(extra.len(), Ordering::AcqRel);
                }
                self.shared.0.get()
            }
            Err(e) => {
                LIVE_SHARED.fetch_sub(big.len(), Ordering::AcqRel);
                tracing::warn!(error = %e, "sharing a compiled program; sending its bytes");
                None
            }
        }
    }

    /// Bytes the artifact holds: its files, counted twice when large (a memfd copy of them
    /// is kept once it has run), its report and a fixed overhead.
    fn weight(&self) -> u32 {
        let bytes: usize = self
            .files
            .iter()
            .map(|f| {
                let copies = if f.content.len() >= SHARE_FROM { 2 } else { 1 };
                f.content.len() * copies + f.name.len()
            })
            .sum::<usize>()
            + self.compile.stdout.len()
            + self.compile.stderr.len()
            + 256;
        u32::try_from(bytes).unwrap_or(u32::MAX)
    }
}

/// A level shared by many machines behind the local ones (a fleet's object store): a
/// compile one worker did serves every worker. Looked up after a local miss, before
/// compiling; filled after each compile, off the run's path.
pub trait SharedArtifacts: Send + Sync + fmt::Debug {
    /// The artifact of `key`, if the shared level has it (errors count as misses).
    fn fetch(
        &self,
        key: ArtifactKey,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<Artifact>> + Send + '_>>;
    /// Offers `artifact` for `key` (in the background; failures are only logged).
    fn offer(&self, key: ArtifactKey, artifact: Arc<Artifact>);
}

/// Counts for monitoring.
#[derive(Debug, Default)]
pub struct CacheStats {
    /// Lookups answered from memory.
    pub memory_hits: AtomicU64,
    /// Lookups answered from disk.
    pub disk_hits: AtomicU64,
    /// Lookups that had to compile.
    pub misses: AtomicU64,
    /// Lookups that waited for an identical compile already running.
    pub joined: AtomicU64,
    /// Disk entries found corrupted (and removed).
    pub corrupted: AtomicU64,
    /// Lookups answered by the shared level (another machine's compile).
    pub shared_hits: AtomicU64,
}

type Waiters = watch::Sender<Option<Arc<Artifact>>>;

/// The two-level cache with single-flight compiles.
pub struct CompileCache {
    memory: moka::sync::Cache<ArtifactKey, Arc<Artifact>>,
    disk: Option<DiskStore>,
    inflight: Mutex<HashMap<ArtifactKey, Waiters>>,
    /// Counters.
    pub stats: CacheStats,
}

impl fmt::Debug for CompileCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompileCache")
            .field("memory_entries", &self.memory.entry_count())
            .field("disk", &self.disk)
            .finish_non_exhaustive()
    }
}

/// The outcome of [`CompileCache::lookup_or_claim`].
#[derive(Debug)]
pub enum Lookup {
    /// Cached.
    Hit(Arc<Artifact>),
    /// An identical compile is running: wait for its result (`None`: it produced nothing to
    /// cache; compile yourself).
    Wait(watch::Receiver<Option<Arc<Artifact>>>),
    /// Nobody has it: compile, then [`Claim::fulfil`].
    Claimed(Claim),
}

/// The right (and duty) to compile a key. Dropping it without fulfilling releases the
/// waiters, who then compile themselves.
#[derive(Debug)]
pub struct Claim {
    key: ArtifactKey,
    cache: Arc<CompileCache>,
    done: bool,
}

impl Claim {
    /// Stores what the compile produced and hands it to those waiting.
    pub fn fulfil(mut self, artifact: Artifact) {
        let artifact = Arc::new(artifact);
        self.cache.insert(self.key, artifact.clone());
        self.release(Some(artifact));
        self.done = true;
    }

    fn release(&self, value: Option<Arc<Artifact>>) {
        let waiters = self
            .cache
            .inflight
            .lock()
            .expect("the in-flight map is never poisoned")
            .remove(&self.key);
        if let Some(w) = waiters {
            let _ = w.send(Some(value).flatten());
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if !self.done {
            self.release(None);
        }
    }
}

impl CompileCache {
    /// A cache holding up to `memory` bytes in memory and, with `disk`, up to its budget in
    /// its directory (created if missing).
    pub fn new(memory: u64, disk: Option<(PathBuf, u64)>) -> io::Result<Arc<CompileCache>> {
        let disk = match disk {
            Some((dir, budget)) => Some(DiskStore::open(dir, budget)?),
            None => None,
        };
        Ok(Arc::new(CompileCache {
            memory: moka::sync::Cache::builder()
                .max_capacity(memory)
                .weigher(|_, v: &Arc<Artifact>| v.weight())
                .build(),
            disk,
            inflight: Mutex::new(HashMap::new()),
            stats: CacheStats::default(),
        }))
    }

    /// The cached artifact of `key`, from memory or disk.
    pub fn get(&self, key: &ArtifactKey) -> Option<Arc<Artifact>> {
        if let Some(a) = self.memory.get(key) {
            self.stats.memory_hits.fetch_add(1, Ordering::Relaxed);
            return Some(a);
        }
        let disk = self.disk.as_ref()?;
        match disk.read(key) {
            Ok(Some(a)) => {
                self.stats.disk_hits.fetch_add(1, Ordering::Relaxed);
                let a = Arc::new(a);
                self.memory.insert(*key, a.clone());
                Some(a)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(key = %key, error = %e, "corrupted compile-cache entry removed");
                self.stats.corrupted.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Stores `artifact` under `key` in memory and on disk.
    pub fn insert(&self, key: ArtifactKey, artifact: Arc<Artifact>) {
        if let Some(Err(e)) = self.disk.as_ref().map(|d| d.write(&key, &artifact)) {
            tracing::warn!(key = %key, error = %e, "writing a compile-cache entry failed");
        }
        self.memory.insert(key, artifact);
    }

    /// Looks `key` up; if absent and nobody compiles it, claims it.
    pub fn lookup_or_claim(self: &Arc<Self>, key: ArtifactKey) -> Lookup {
        if let Some(a) = self.get(&key) {
            return Lookup::Hit(a);
        }
        let mut inflight = self
            .inflight
            .lock()
            .expect("the in-flight map is never poisoned");
        if let Some(w) = inflight.get(&key) {
            self.stats.joined.fetch_add(1, Ordering::Relaxed);
            return Lookup::Wait(w.subscribe());
        }
        let (tx, _) = watch::channel(None);
        inflight.insert(key, tx);
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        Lookup::Claimed(Claim {
            key,
            cache: self.clone(),
            done: false,
        })
    }

    /// Bytes the memory level holds.
    pub fn memory_bytes(&self) -> u64 {
        self.memory.run_pending_tasks();
        self.memory.weighted_size()
    }

    /// Bytes the disk level holds.
    pub fn disk_bytes(&self) -> u64 {
        self.disk
            .as_ref()
            .map_or(0, |d| d.used.load(Ordering::Relaxed))
    }
}

/// The disk level: `<dir>/<first two hex digits>/<key>` files.
#[derive(Debug)]
struct DiskStore {
    dir: PathBuf,
    budget: u64,
    used: AtomicU64,
    /// Serializes evictions.
    evicting: Mutex<()>,
}

/// Magic at the start of every entry (the format's version is in it).
const MAGIC: &[u8; 8] = b"CODART1\n";

fn entries(dir: &Path) -> impl Iterator<Item = (PathBuf, fs::Metadata)> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .flat_map(|sub| fs::read_dir(sub.path()).into_iter().flatten().flatten())
        .filter_map(|e| e.metadata().ok().map(|m| (e.path(), m)))
        .filter(|(_, m)| m.is_file())
}

impl DiskStore {
    fn open(dir: PathBuf, budget: u64) -> io::Result<DiskStore> {
        fs::create_dir_all(&dir)?;
        let mut used = 0;
        for (path, meta) in entries(&dir) {
            let tmp = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(".tmp"));
            if tmp {
                // A write that never finished (cod was killed mid-write).
                let _ = fs::remove_file(&path);
            } else {
                used += meta.len();
            }
        }
        let store = DiskStore {
            dir,
            budget,
            used: AtomicU64::new(used),
            evicting: Mutex::new(()),
        };
        store.evict();
        Ok(store)
    }

    fn path(&self, key: &ArtifactKey) -> PathBuf {
        let hex = key.to_string();
        self.dir.join(&hex[..2]).join(hex)
    }

    /// The entry of `key`; an error when it exists but is corrupted (it is then removed).
    fn read(&self, key: &ArtifactKey) -> io::Result<Option<Artifact>> {
        let path = self.path(key);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let decoded = decode(&bytes);
        match decoded {
            Some(a) => {
                // Recently used: evicted last.
                if let Ok(f) = fs::File::options().append(true).open(&path) {
                    let _ = f.set_modified(SystemTime::now());
                }
                Ok(Some(a))
            }
            None => {
                if fs::remove_file(&path).is_ok() {
                    self.used.fetch_sub(bytes.len() as u64, Ordering::Relaxed);
                }
                Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} is corrupted", path.display()),
                ))
            }
        }
    }

    fn write(&self, key: &ArtifactKey, artifact: &Artifact) -> io::Result<()> {
        let payload = postcard::to_stdvec(artifact).map_err(io::Error::other)?;
        let path = self.path(key);
        let parent = path.parent().expect("entries sit in a subdirectory");
        fs::create_dir_all(parent)?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".tmp")
            .tempfile_in(parent)?;
        tmp.write_all(MAGIC)?;
        tmp.write_all(blake3::hash(&payload).as_bytes())?;
        tmp.write_all(&payload)?;
        let size = (MAGIC.len() + 32 + payload.len()) as u64;
        let existed = fs::metadata(&path).map(|m| m.len()).ok();
        tmp.persist(&path).map_err(|e| e.error)?;
        self.used.fetch_add(size, Ordering::Relaxed);
        if let Some(old) = existed {
            self.used.fetch_sub(old, Ordering::Relaxed);
        }
        if self.used.load(Ordering::Relaxed) > self.budget {
            self.evict();
        }
        Ok(())
    }

    /// Removes the least recently used entries until the store is within 90% of its budget.
    fn evict(&self) {
        let _guard = self.evicting.lock().expect("never poisoned");
        if self.used.load(Ordering::Relaxed) <= self.budget {
            return;
        }
        let mut all: Vec<(PathBuf, fs::Metadata)> = entries(&self.dir).collect();
        all.sort_by_key(|(_, m)| m.modified().unwrap_or(SystemTime::UNIX_EPOCH));
        let target = self.budget / 10 * 9;
        for (path, meta) in all {
            if self.used.load(Ordering::Relaxed) <= target {
                break;
            }
            if fs::remove_file(&path).is_ok() {
                self.used.fetch_sub(meta.len(), Ordering::Relaxed);
            }
        }
    }
}

fn decode(bytes: &[u8]) -> Option<Artifact> {
    let rest = bytes.strip_prefix(MAGIC.as_slice())?;
    let (sum, payload) = rest.split_at_checked(32)?;
    if blake3::hash(payload).as_bytes() != sum {
        return None;
    }
    postcard::from_bytes(payload).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use cod_core::Status;

    #[test]
    fn large_files_run_from_one_memfd_made_once_small_ones_by_value() {
        use std::os::fd::AsRawFd as _;
        let mut a = artifact(SHARE_FROM);
        a.files.push(FileEntry {
            name: "data".into(),
            content: b"small".to_vec(),
            executable: false,
        });
        let (by_value, shared) = a.run_files();
        assert_eq!(by_value, vec![a.files[1].clone()]);
        assert_eq!(shared.len(), 1);
        assert_eq!(
            (shared[0].name.as_str(), shared[0].executable),
            ("main", true)
        );
        let fd = shared[0].fd().expect("a memfd");
        let mut head = [0u8; 4];
        assert_eq!(rustix::io::pread(fd, &mut head, 0).unwrap(), 4);
        assert_eq!(head, [7; 4]);
        // The next run gets the same memfd, not another copy.
        let (_, again) = a.run_files();
        assert_eq!(
            again[0].fd().unwrap().as_raw_fd(),
            shared[0].fd().unwrap().as_raw_fd()
        );
        // Counted twice: the bytes and their memfd.
        assert!(a.weight() as usize >= 2 * SHARE_FROM);
        assert!(artifact(SHARE_FROM - 1).run_files().1.is_empty());
    }

    #[test]
    fn kept_memfds_are_bounded_and_released_with_their_artifacts() {
        let mut kept = Vec::new();
        // Until the bound: each artifact keeps its memfd.
        let stopped = loop {
            let a = artifact(SHARE_FROM);
            let shared = a.run_files().1.len();
            kept.push(a);
            if shared == 0 {
                break kept.len();
            }
            assert!(kept.len() <= MAX_LIVE_SHARED, "never past the bound");
        };
        assert!(stopped > MAX_LIVE_SHARED / 2, "stopped after {stopped}");
        // Past it, the bytes go by value, whole.
        let (by_value, shared) = kept.last().expect("one").run_files();
        assert!(shared.is_empty());
        assert_eq!(by_value[0].content.len(), SHARE_FROM);
        // Artifacts that leave the cache give their memfds back.
        kept.clear();
        assert_eq!(artifact(SHARE_FROM).run_files().1.len(), 1);
    }

    fn artifact(n: usize) -> Artifact {
        Artifact::new(
            vec![FileEntry {
                name: "main".into(),
                content: vec![7; n],
                executable: true,
            }],
            StageReport {
                status: Status::Ok,
                stderr: "warning: unused".into(),
                ..Default::default()
            },
        )
    }

    fn key(s: &str) -> ArtifactKey {
        KeyBuilder::default().field(s.as_bytes()).finish()
    }

    #[test]
    fn keys_separate_fields() {
        let a = KeyBuilder::default().field(b"ab").field(b"c").finish();
        let b = KeyBuilder::default().field(b"a").field(b"bc").finish();
        assert_ne!(a, b);
        assert_eq!(a, KeyBuilder::default().field(b"ab").field(b"c").finish());
    }

    #[test]
    fn memory_and_disk_round_trip_and_survive_restart() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CompileCache::new(1 << 20, Some((dir.path().into(), 1 << 20))).unwrap();
        assert!(cache.get(&key("a")).is_none());
        cache.insert(key("a"), Arc::new(artifact(100)));
        assert_eq!(*cache.get(&key("a")).unwrap(), artifact(100));
        assert_eq!(cache.stats.memory_hits.load(Ordering::Relaxed), 1);
        // A new process: memory is empty, disk still has it.
        let again = CompileCache::new(1 << 20, Some((dir.path().into(), 1 << 20))).unwrap();
        assert_eq!(*again.get(&key("a")).unwrap(), artifact(100));
        assert_eq!(again.stats.disk_hits.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn corrupted_and_partial_entries_are_detected_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CompileCache::new(1 << 20, Some((dir.path().into(), 1 << 20))).unwrap();
        cache.insert(key("x"), Arc::new(artifact(1000)));
        cache.insert(key("y"), Arc::new(artifact(1000)));
        let fresh = || CompileCache::new(1 << 20, Some((dir.path().into(), 1 << 20))).unwrap();
        // Flip a byte of one entry, cut the other short.
        let px = fresh().disk.as_ref().unwrap().path(&key("x"));
        let mut bytes = fs::read(&px).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&px, bytes).unwrap();
        let py = fresh().disk.as_ref().unwrap().path(&key("y"));
        let bytes = fs::read(&py).unwrap();
        fs::write(&py, &bytes[..bytes.len() / 2]).unwrap();

        let c = fresh();
        assert!(c.get(&key("x")).is_none());
        assert!(c.get(&key("y")).is_none());
        assert_eq!(c.stats.corrupted.load(Ordering::Relaxed), 2);
        assert!(
            !px.exists() && !py.exists(),
            "corrupted entries are removed"
        );
        // Rebuilt afterwards like any miss.
        c.insert(key("x"), Arc::new(artifact(10)));
        assert_eq!(*fresh().get(&key("x")).unwrap(), artifact(10));
    }

    #[test]
    fn leftover_temporary_files_are_removed_at_start() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("ab")).unwrap();
        fs::write(dir.path().join("ab/.tmpXYZ"), b"half").unwrap();
        let _c = CompileCache::new(1 << 20, Some((dir.path().into(), 1 << 20))).unwrap();
        assert!(!dir.path().join("ab/.tmpXYZ").exists());
    }

    #[test]
    fn disk_eviction_keeps_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let budget = 50_000;
        let cache = CompileCache::new(1 << 20, Some((dir.path().into(), budget))).unwrap();
        for i in 0..20 {
            cache.insert(key(&i.to_string()), Arc::new(artifact(8_000)));
            assert!(
                cache.disk_bytes() <= budget,
                "{} > {budget}",
                cache.disk_bytes()
            );
        }
        let on_disk: u64 = entries(dir.path()).map(|(_, m)| m.len()).sum();
        assert!(on_disk <= budget && on_disk == cache.disk_bytes());
        // The newest entries are the ones kept.
        let again = CompileCache::new(1 << 20, Some((dir.path().into(), budget))).unwrap();
        assert!(again.get(&key("19")).is_some());
        assert!(again.get(&key("0")).is_none());
    }

    #[test]
    fn memory_is_bounded() {
        let cache = CompileCache::new(100_000, None).unwrap();
        for i in 0..50 {
            cache.insert(key(&i.to_string()), Arc::new(artifact(10_000)));
        }
        assert!(cache.memory_bytes() <= 100_000, "{}", cache.memory_bytes());
    }

    #[tokio::test]
    async fn identical_compiles_run_once() {
        let cache = CompileCache::new(1 << 20, None).unwrap();
        let Lookup::Claimed(claim) = cache.lookup_or_claim(key("k")) else {
            panic!("the first lookup claims");
        };
        let mut waiters = Vec::new();
        for _ in 0..5 {
            match cache.lookup_or_claim(key("k")) {
                Lookup::Wait(rx) => waiters.push(rx),
                other => panic!("expected to wait, got {other:?}"),
            }
        }
        claim.fulfil(artifact(3));
        for mut rx in waiters {
            let got = rx.wait_for(Option::is_some).await.unwrap().clone().unwrap();
            assert_eq!(*got, artifact(3));
        }
        assert!(matches!(cache.lookup_or_claim(key("k")), Lookup::Hit(_)));
        assert_eq!(cache.stats.misses.load(Ordering::Relaxed), 1);
        assert_eq!(cache.stats.joined.load(Ordering::Relaxed), 5);
    }

    #[tokio::test]
    async fn an_abandoned_claim_releases_its_waiters() {
        let cache = CompileCache::new(1 << 20, None).unwrap();
        let Lookup::Claimed(claim) = cache.lookup_or_claim(key("k")) else {
            panic!("claims");
        };
        let Lookup::Wait(mut rx) = cache.lookup_or_claim(key("k")) else {
            panic!("waits");
        };
        drop(claim);
        rx.changed().await.unwrap();
        assert!(
            rx.borrow().is_none(),
            "nothing to cache: the waiter compiles itself"
        );
        assert!(matches!(
            cache.lookup_or_claim(key("k")),
            Lookup::Claimed(_)
        ));
    }
}
