//! The configuration tree, read from `cod.toml`.
//!
//! Every key has a safe default (see `docs/config.md`, which a test keeps in step with this
//! file). Unknown keys and bad values are errors: cod refuses to start rather than guess.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::Bytes;
use crate::limits::LimitsPolicy;

/// Default address of `cod serve`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:2000";
/// Default number of runs waiting for a worker before new ones get 429.
pub const DEFAULT_QUEUE: usize = 64;
/// Default largest request body.
pub const DEFAULT_MAX_BODY: Bytes = Bytes::mib(1);
/// Default first host uid of sandboxed programs (one uid per worker slot).
pub const DEFAULT_UID_BASE: u32 = 60_000;
/// Default stack size limit of sandboxed programs.
pub const DEFAULT_STACK: Bytes = Bytes::mib(64);
/// Default open-file limit of sandboxed programs.
pub const DEFAULT_OPEN_FILES: u64 = 256;

/// The whole configuration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The HTTP service.
    #[serde(default)]
    pub server: ServerConfig,
    /// Per-run limits: defaults, maxima and compile limits.
    #[serde(default)]
    pub limits: LimitsPolicy,
    /// How runs are isolated.
    #[serde(default)]
    pub sandbox: SandboxConfig,
    /// Which languages are offered.
    #[serde(default)]
    pub languages: LanguagesConfig,
    /// The compile cache.
    #[serde(default)]
    pub cache: CacheConfig,
    /// Warm runtimes kept started ahead of runs.
    #[serde(default)]
    pub pool: PoolConfig,
    /// The web editor's program buffers.
    #[serde(default)]
    pub sessions: SessionsConfig,
    /// The order runs start in, fair share and overload.
    #[serde(default)]
    pub scheduler: SchedulerConfig,
    /// Asynchronous jobs: how long results are kept, batches, callbacks.
    #[serde(default)]
    pub jobs: JobsConfig,
    /// API keys.
    #[serde(default)]
    pub auth: AuthConfig,
    /// The distributed mode's broker settings (`cod serve --nats`, `cod worker`).
    #[serde(default)]
    pub fleet: FleetConfig,
}

/// `[fleet]`: how gateways and workers use NATS JetStream. Every process of a fleet must
/// have the same values (the first to start creates the stream and consumers with them).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// A delivered job not reported in progress for this long goes to another worker
    /// (workers report every third of it while they run it).
    #[serde(default = "default_ack_wait", with = "humantime_serde")]
    pub ack_wait: std::time::Duration,
    /// Deliveries of one job (its workers lost each time) before it ends `internal_error`.
    #[serde(default = "default_max_deliveries")]
    pub max_deliveries: u32,
    /// How long results stay readable from any gateway.
    #[serde(default = "default_result_ttl", with = "humantime_serde")]
    pub result_ttl: std::time::Duration,
    /// Interval of worker heartbeats.
    #[serde(default = "default_heartbeat", with = "humantime_serde")]
    pub heartbeat: std::time::Duration,
    /// A worker silent for this long is listed dead.
    #[serde(default = "default_dead_after", with = "humantime_serde")]
    pub dead_after: std::time::Duration,
    /// Copies JetStream keeps of the job stream and the buckets: 1 for a single NATS
    /// server, 3 for a cluster (accepted jobs then survive the loss of a node).
    #[serde(default = "default_replicas")]
    pub replicas: usize,
}

fn default_replicas() -> usize {
    1
}

fn default_ack_wait() -> std::time::Duration {
    std::time::Duration::from_secs(10)
}
fn default_max_deliveries() -> u32 {
    3
}
fn default_result_ttl() -> std::time::Duration {
    std::time::Duration::from_secs(3600)
}
fn default_heartbeat() -> std::time::Duration {
    std::time::Duration::from_secs(1)
}
fn default_dead_after() -> std::time::Duration {
    std::time::Duration::from_secs(5)
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            ack_wait: default_ack_wait(),
            max_deliveries: default_max_deliveries(),
            result_ttl: default_result_ttl(),
            heartbeat: default_heartbeat(),
            dead_after: default_dead_after(),
            replicas: default_replicas(),
        }
    }
}

impl FleetConfig {
    /// Checks values that parse but cannot work; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.ack_wait < std::time::Duration::from_millis(300) {
            return Err("fleet.ack_wait must be at least 300ms".into());
        }
        if !(1..=100).contains(&self.max_deliveries) {
            return Err(format!(
                "fleet.max_deliveries = {} must be between 1 and 100",
                self.max_deliveries
            ));
        }
        if self.result_ttl < std::time::Duration::from_secs(1) {
            return Err("fleet.result_ttl must be at least 1s".into());
        }
        if !(1..=5).contains(&self.replicas) {
            return Err(format!(
                "fleet.replicas = {} must be between 1 and 5",
                self.replicas
            ));
        }
        if self.heartbeat.is_zero() || self.dead_after <= self.heartbeat {
            return Err("fleet.dead_after must be longer than fleet.heartbeat (> 0)".into());
        }
        Ok(())
    }
}

/// `[server]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Runs executed at once, each holding one CPU; 0 means one per CPU of the machine.
    #[serde(default)]
    pub workers: usize,
    /// Runs that may wait for a worker; beyond that, requests get 429 with `Retry-After`.
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// Largest request body; larger ones get 413.
    #[serde(default = "default_max_body")]
    pub max_body: Bytes,
    /// Threads of the async runtime that serves HTTP and hands runs to the sandbox (the
    /// runs are processes of their own); 0 means one per four CPUs, at least one.
    #[serde(default)]
    pub threads: usize,
}

impl ServerConfig {
    /// The async runtime's threads on a machine with `cpus` CPUs.
    ///
    /// By default, one per four CPUs: the server's own work is about a seventh of the
    /// machine's CPU per run when runs are the cheapest there are (Python `print(1)`,
    /// back to back), and each thread more wakes more threads for a run's hand-offs, which
    /// costs CPU the runs could use (measured in docs/config.md).
    pub fn runtime_threads(&self, cpus: usize) -> usize {
        if self.threads > 0 {
            self.threads
        } else {
            (cpus / 4).max(1)
        }
    }
}

fn default_listen() -> SocketAddr {
    DEFAULT_LISTEN.parse().expect("the default address parses")
}
fn default_queue() -> usize {
    DEFAULT_QUEUE
}
fn default_max_body() -> Bytes {
    DEFAULT_MAX_BODY
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            workers: 0,
            queue: DEFAULT_QUEUE,
            max_body: DEFAULT_MAX_BODY,
            threads: 0,
        }
    }
}

/// Which cgroup hierarchy to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupMode {
    /// v2 when its memory, pids and cpu controllers are available, else v1.
    #[default]
    Auto,
    /// The legacy per-controller hierarchies.
    V1,
    /// The unified hierarchy.
    V2,
}

/// `[sandbox]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxConfig {
    /// cgroup hierarchy: "auto", "v1" or "v2".
    #[serde(default)]
    pub cgroup: CgroupMode,
    /// Where cgroupfs is mounted.
    #[serde(default = "default_cgroup_root")]
    pub cgroup_root: PathBuf,
    /// Name of cod's cgroup under each hierarchy.
    #[serde(default = "default_cgroup_name")]
    pub cgroup_name: String,
    /// First host uid (and gid) of sandboxed programs; slot n runs as `uid_base + n`.
    #[serde(default = "default_uid_base")]
    pub uid_base: u32,
    /// Stack size limit of programs.
    #[serde(default = "default_stack")]
    pub stack: Bytes,
    /// Open-file limit of programs.
    #[serde(default = "default_open_files")]
    pub open_files: u64,
    /// CPU quota of each run, in CPUs. 0 sets no hard cap: slots share the CPUs by equal
    /// weight (one CPU's worth each when all are busy) and a run may use CPUs that idle.
    #[serde(default)]
    pub cpus: u32,
    /// Keep each worker slot's own processes (keeper, supervisor, sandbox init, zygote) on
    /// one CPU, slot `n` on the `n`-th CPU cod may use (modulo their number), when there are
    /// at least as many slots as CPUs. Programs still run on every CPU.
    #[serde(default = "default_pin_slots")]
    pub pin_slots: bool,
    /// Directory for the sandbox's private mount points; default: the system temp dir.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
}

fn default_cgroup_root() -> PathBuf {
    PathBuf::from("/sys/fs/cgroup")
}
fn default_cgroup_name() -> String {
    "cod".to_owned()
}
fn default_uid_base() -> u32 {
    DEFAULT_UID_BASE
}
fn default_stack() -> Bytes {
    DEFAULT_STACK
}
fn default_pin_slots() -> bool {
    true
}

fn default_open_files() -> u64 {
    DEFAULT_OPEN_FILES
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            cgroup: CgroupMode::Auto,
            cgroup_root: default_cgroup_root(),
            cgroup_name: default_cgroup_name(),
            uid_base: DEFAULT_UID_BASE,
            stack: DEFAULT_STACK,
            open_files: DEFAULT_OPEN_FILES,
            cpus: 0,
            pin_slots: true,
            state_dir: None,
        }
    }
}

/// `[languages]`
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LanguagesConfig {
    /// A directory of `*.toml` language files that add to (or replace, by name) the built-in ones.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Offer only these languages (by name); empty offers all that are available.
    #[serde(default)]
    pub enabled: Vec<String>,
}

/// Default bytes of compiled programs kept in memory.
pub const DEFAULT_CACHE_MEMORY: Bytes = Bytes::mib(256);
/// Default bytes of compiled programs kept on disk.
pub const DEFAULT_CACHE_DISK: Bytes = Bytes(2 * Bytes::GIB);
/// Default directory of the on-disk compile cache.
pub const DEFAULT_CACHE_DIR: &str = "/var/cache/cod";

/// `[cache]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Directory of the on-disk level (created if missing); `""` keeps compiled programs in
    /// memory only.
    #[serde(default = "default_cache_dir")]
    pub dir: PathBuf,
    /// Bytes of compiled programs kept in memory.
    #[serde(default = "default_cache_memory")]
    pub memory: Bytes,
    /// Bytes of compiled programs kept on disk.
    #[serde(default = "default_cache_disk")]
    pub disk: Bytes,
}

fn default_cache_dir() -> PathBuf {
    PathBuf::from(DEFAULT_CACHE_DIR)
}
fn default_cache_memory() -> Bytes {
    DEFAULT_CACHE_MEMORY
}
fn default_cache_disk() -> Bytes {
    DEFAULT_CACHE_DISK
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            dir: default_cache_dir(),
            memory: DEFAULT_CACHE_MEMORY,
            disk: DEFAULT_CACHE_DISK,
        }
    }
}

/// Default memory all idle warm runtimes together may hold.
pub const DEFAULT_POOL_MEMORY: Bytes = Bytes::mib(256);

/// `[pool]`: warm runtimes (languages with a `[warm]` section, such as Python) kept started
/// in the worker slots, so that a run skips the interpreter's start-up.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Whether slots keep warm runtimes at all.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Most memory the idle warm runtimes of all slots may hold together.
    #[serde(default = "default_pool_memory")]
    pub memory: Bytes,
    /// Follow the recent mix of requests: more slots warm for the languages most runs use.
    /// Off: every slot keeps every warm language (within `memory`).
    #[serde(default = "default_true")]
    pub adapt: bool,
    /// Per language: fewest and most slots kept warm for it (`{ python = { min = 1 } }`).
    #[serde(default)]
    pub languages: std::collections::BTreeMap<String, PoolLanguage>,
}

/// `[pool.languages.<name>]`
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolLanguage {
    /// Slots kept warm whatever the mix (still within `pool.memory`).
    #[serde(default)]
    pub min: u32,
    /// Most slots kept warm; absent: every slot.
    #[serde(default)]
    pub max: Option<u32>,
}

fn default_true() -> bool {
    true
}
fn default_pool_memory() -> Bytes {
    DEFAULT_POOL_MEMORY
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            enabled: true,
            memory: DEFAULT_POOL_MEMORY,
            adapt: true,
            languages: std::collections::BTreeMap::new(),
        }
    }
}

/// Default largest program text of one editor session.
pub const DEFAULT_SESSION_MAX_TEXT: Bytes = Bytes::mib(1);
/// Default number of editor sessions kept (least recently used out first).
pub const DEFAULT_MAX_SESSIONS: usize = 10_000;
/// Default time after its last use that an editor session expires.
pub const DEFAULT_SESSION_IDLE_EXPIRY: std::time::Duration = std::time::Duration::from_secs(3600);
/// Default time a compiled-language buffer stays unedited before it is compiled ahead of Run.
pub const DEFAULT_COMPILE_AHEAD_DELAY: std::time::Duration = std::time::Duration::from_millis(300);

/// `[sessions]`: the program buffers behind the web editor's WebSocket.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionsConfig {
    /// Largest program text of one session (UTF-8 bytes).
    #[serde(default = "default_session_max_text")]
    pub max_text: Bytes,
    /// Sessions kept at once; opening one more evicts the least recently used.
    #[serde(default = "default_max_sessions")]
    pub max_sessions: usize,
    /// A session unused for this long is gone.
    #[serde(default = "default_session_idle_expiry", with = "humantime_serde")]
    pub idle_expiry: std::time::Duration,
    /// Compile a compiled-language buffer in the background once it is left unedited.
    #[serde(default = "default_true")]
    pub compile_ahead: bool,
    /// How long a buffer stays unedited before it is compiled ahead.
    #[serde(default = "default_compile_ahead_delay", with = "humantime_serde")]
    pub compile_ahead_delay: std::time::Duration,
}

fn default_session_max_text() -> Bytes {
    DEFAULT_SESSION_MAX_TEXT
}
fn default_max_sessions() -> usize {
    DEFAULT_MAX_SESSIONS
}
fn default_session_idle_expiry() -> std::time::Duration {
    DEFAULT_SESSION_IDLE_EXPIRY
}
fn default_compile_ahead_delay() -> std::time::Duration {
    DEFAULT_COMPILE_AHEAD_DELAY
}

impl Default for SessionsConfig {
    fn default() -> Self {
        SessionsConfig {
            max_text: DEFAULT_SESSION_MAX_TEXT,
            max_sessions: DEFAULT_MAX_SESSIONS,
            idle_expiry: DEFAULT_SESSION_IDLE_EXPIRY,
            compile_ahead: true,
            compile_ahead_delay: DEFAULT_COMPILE_AHEAD_DELAY,
        }
    }
}

impl SessionsConfig {
    /// Checks values that parse but cannot work; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_text < Bytes::kib(1) || self.max_text > Bytes::mib(64) {
            return Err(format!(
                "sessions.max_text = {} must be between 1KiB and 64MiB",
                self.max_text.get()
            ));
        }
        if self.max_sessions == 0 || self.max_sessions > 10_000_000 {
            return Err(format!(
                "sessions.max_sessions = {} must be between 1 and 10000000",
                self.max_sessions
            ));
        }
        if self.idle_expiry < std::time::Duration::from_secs(1) {
            return Err("sessions.idle_expiry must be at least 1s".into());
        }
        if self.compile_ahead_delay > std::time::Duration::from_secs(60) {
            return Err("sessions.compile_ahead_delay must be at most 60s".into());
        }
        Ok(())
    }
}

/// The order waiting runs start in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SchedulerPolicy {
    /// Shortest expected first, with aging, and fair share between clients.
    #[default]
    Sjf,
    /// First come, first served.
    Fifo,
}

/// Default expected CPU time of all waiting runs together before new ones get 429.
pub const DEFAULT_QUEUE_CPU: std::time::Duration = std::time::Duration::from_secs(600);
/// Default longest a run may be expected to wait behind the work ahead of it.
pub const DEFAULT_MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
/// Default expected length of a run of a language not seen yet.
pub const DEFAULT_EXPECTED_RUN: std::time::Duration = std::time::Duration::from_millis(250);
/// Default aging factor.
pub const DEFAULT_AGING: f64 = 2.0;

/// `[scheduler]`: the order runs start in, fair share between clients, and overload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerConfig {
    /// `"sjf"` (shortest expected first, with aging and fair share) or `"fifo"`.
    #[serde(default)]
    pub policy: SchedulerPolicy,
    /// A run waits at most about `aging` times its expected length before runs that
    /// arrive later stop overtaking it.
    #[serde(default = "default_aging")]
    pub aging: f64,
    /// Expected CPU time of all waiting runs together; beyond it, 429. `"0s"`: no bound.
    #[serde(default = "default_queue_cpu", with = "humantime_serde")]
    pub queue_cpu: std::time::Duration,
    /// A run expected to wait longer than `max(max_wait, aging × its expected length)`
    /// behind the work ahead of it gets 429. `"0s"`: no bound.
    #[serde(default = "default_max_wait", with = "humantime_serde")]
    pub max_wait: std::time::Duration,
    /// Expected length of a run of a language with no history yet.
    #[serde(default = "default_expected_run", with = "humantime_serde")]
    pub default_expected: std::time::Duration,
    /// Runs per second each client may submit on average (0: no limit).
    #[serde(default)]
    pub client_rate: f64,
    /// Runs a client may submit at once above `client_rate` (0: `max(1, client_rate)`).
    #[serde(default)]
    pub client_burst: u32,
    /// Runs of one client queued or running at once (0: no limit).
    #[serde(default)]
    pub client_concurrency: usize,
}

fn default_aging() -> f64 {
    DEFAULT_AGING
}
fn default_queue_cpu() -> std::time::Duration {
    DEFAULT_QUEUE_CPU
}
fn default_max_wait() -> std::time::Duration {
    DEFAULT_MAX_WAIT
}
fn default_expected_run() -> std::time::Duration {
    DEFAULT_EXPECTED_RUN
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            policy: SchedulerPolicy::Sjf,
            aging: DEFAULT_AGING,
            queue_cpu: DEFAULT_QUEUE_CPU,
            max_wait: DEFAULT_MAX_WAIT,
            default_expected: DEFAULT_EXPECTED_RUN,
            client_rate: 0.0,
            client_burst: 0,
            client_concurrency: 0,
        }
    }
}

impl SchedulerConfig {
    /// Checks values that parse but cannot work; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if !(1.0..=100.0).contains(&self.aging) {
            return Err(format!(
                "scheduler.aging = {} must be between 1 and 100",
                self.aging
            ));
        }
        if !self.client_rate.is_finite() || self.client_rate < 0.0 {
            return Err(format!(
                "scheduler.client_rate = {} must be a number of runs per second, 0 or more",
                self.client_rate
            ));
        }
        if self.default_expected.is_zero()
            || self.default_expected > std::time::Duration::from_secs(3600)
        {
            return Err("scheduler.default_expected must be between 1ms and 1h".into());
        }
        Ok(())
    }
}

/// Default time finished jobs are kept.
pub const DEFAULT_JOB_RETENTION: std::time::Duration = std::time::Duration::from_secs(600);
/// Default number of finished jobs kept.
pub const DEFAULT_MAX_JOBS_KEPT: usize = 10_000;
/// Default and most runs in one batch.
pub const DEFAULT_MAX_BATCH: usize = 20;
/// Default attempts to deliver a callback.
pub const DEFAULT_CALLBACK_ATTEMPTS: u32 = 5;
/// Default wait before the second attempt (doubling after each).
pub const DEFAULT_CALLBACK_BACKOFF: std::time::Duration = std::time::Duration::from_millis(500);
/// Default time one callback request may take.
pub const DEFAULT_CALLBACK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// `[jobs]`: asynchronous jobs (`/api/v1/jobs`, Judge0 submissions).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsConfig {
    /// How long a finished job's result is kept.
    #[serde(default = "default_job_retention", with = "humantime_serde")]
    pub retention: std::time::Duration,
    /// Most finished jobs kept; the oldest go first.
    #[serde(default = "default_max_jobs_kept")]
    pub max_kept: usize,
    /// Most runs (or test cases) in one batch.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// Key of the HMAC-SHA256 signature of callbacks; `""` makes a random one at start-up.
    #[serde(default)]
    pub callback_secret: String,
    /// Attempts to deliver a callback before it is marked failed.
    #[serde(default = "default_callback_attempts")]
    pub callback_attempts: u32,
    /// Wait before the second attempt; it doubles after each.
    #[serde(default = "default_callback_backoff", with = "humantime_serde")]
    pub callback_backoff: std::time::Duration,
    /// Time one callback request may take.
    #[serde(default = "default_callback_timeout", with = "humantime_serde")]
    pub callback_timeout: std::time::Duration,
}

fn default_job_retention() -> std::time::Duration {
    DEFAULT_JOB_RETENTION
}
fn default_max_jobs_kept() -> usize {
    DEFAULT_MAX_JOBS_KEPT
}
fn default_max_batch() -> usize {
    DEFAULT_MAX_BATCH
}
fn default_callback_attempts() -> u32 {
    DEFAULT_CALLBACK_ATTEMPTS
}
fn default_callback_backoff() -> std::time::Duration {
    DEFAULT_CALLBACK_BACKOFF
}
fn default_callback_timeout() -> std::time::Duration {
    DEFAULT_CALLBACK_TIMEOUT
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            retention: DEFAULT_JOB_RETENTION,
            max_kept: DEFAULT_MAX_JOBS_KEPT,
            max_batch: DEFAULT_MAX_BATCH,
            callback_secret: String::new(),
            callback_attempts: DEFAULT_CALLBACK_ATTEMPTS,
            callback_backoff: DEFAULT_CALLBACK_BACKOFF,
            callback_timeout: DEFAULT_CALLBACK_TIMEOUT,
        }
    }
}

impl JobsConfig {
    /// Checks values that parse but cannot work; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_kept == 0 {
            return Err("jobs.max_kept must be at least 1".into());
        }
        if !(1..=1000).contains(&self.max_batch) {
            return Err(format!(
                "jobs.max_batch = {} must be between 1 and 1000",
                self.max_batch
            ));
        }
        if !(1..=20).contains(&self.callback_attempts) {
            return Err(format!(
                "jobs.callback_attempts = {} must be between 1 and 20",
                self.callback_attempts
            ));
        }
        if self.callback_timeout.is_zero() {
            return Err("jobs.callback_timeout must be more than 0s".into());
        }
        Ok(())
    }
}

/// Shortest API key accepted.
pub const MIN_API_KEY_LEN: usize = 16;

/// `[auth]`: API keys. Off by default, for a server on localhost.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Require a key (`Authorization: Bearer KEY` or `X-Auth-Token: KEY`) on the API.
    #[serde(default)]
    pub enabled: bool,
    /// The keys.
    #[serde(default)]
    pub keys: Vec<ApiKeyConfig>,
}

/// `[[auth.keys]]`: one API key and its limits.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// Who holds it: fair share, limits, logs and job listings go by this name.
    pub name: String,
    /// The secret the client sends.
    pub key: String,
    /// Runs per second (0: `scheduler.client_rate`).
    #[serde(default)]
    pub rate: f64,
    /// Burst above the rate (0: `scheduler.client_burst`).
    #[serde(default)]
    pub burst: u32,
    /// Runs queued or running at once (0: `scheduler.client_concurrency`).
    #[serde(default)]
    pub concurrency: usize,
    /// May list and cancel every client's jobs, not only its own.
    #[serde(default)]
    pub admin: bool,
}

impl AuthConfig {
    /// Checks values that parse but cannot work; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.enabled && self.keys.is_empty() {
            return Err("auth.enabled = true needs at least one [[auth.keys]] entry".into());
        }
        let mut names = std::collections::HashSet::new();
        let mut secrets = std::collections::HashSet::new();
        for (i, k) in self.keys.iter().enumerate() {
            if k.name.trim().is_empty() {
                return Err(format!("auth.keys[{i}].name must not be empty"));
            }
            if k.key.len() < MIN_API_KEY_LEN || k.key.chars().any(char::is_whitespace) {
                return Err(format!(
                    "auth.keys[{i}].key must be at least {MIN_API_KEY_LEN} characters without spaces"
                ));
            }
            if !names.insert(k.name.as_str()) {
                return Err(format!("auth.keys[{i}].name {:?} appears twice", k.name));
            }
            if !secrets.insert(k.key.as_str()) {
                return Err(format!("auth.keys[{i}].key is the same as another key's"));
            }
            if !k.rate.is_finite() || k.rate < 0.0 {
                return Err(format!("auth.keys[{i}].rate must be 0 or more"));
            }
        }
        Ok(())
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// the TOML does not parse or has unknown keys
    #[error("invalid configuration: {0}")]
    Parse(#[from] toml::de::Error),
    /// a value is out of range
    #[error("invalid configuration: {0}")]
    Value(String),
}

impl Config {
    /// Parses and validates a `cod.toml`.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let c: Config = toml::from_str(text)?;
        c.validate()?;
        Ok(c)
    }

    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.limits.validate().map_err(ConfigError::Value)?;
        let s = &self.sandbox;
        if s.uid_base == 0 || s.uid_base > u32::MAX - 100_000 {
            return Err(ConfigError::Value(format!(
                "sandbox.uid_base = {} must be an unprivileged uid range (1..{})",
                s.uid_base,
                u32::MAX - 100_000
            )));
        }
        if s.cgroup_name.is_empty() || s.cgroup_name.contains('/') || s.cgroup_name.starts_with('.')
        {
            return Err(ConfigError::Value(format!(
                "sandbox.cgroup_name = {:?} must be a plain directory name",
                s.cgroup_name
            )));
        }
        if s.open_files < 16 {
            return Err(ConfigError::Value(
                "sandbox.open_files must be at least 16".into(),
            ));
        }
        if s.stack < Bytes::kib(256) {
            return Err(ConfigError::Value(
                "sandbox.stack must be at least 256KiB".into(),
            ));
        }
        if s.cpus > 1024 {
            return Err(ConfigError::Value(
                "sandbox.cpus must be at most 1024".into(),
            ));
        }
        if self.server.max_body < Bytes::kib(1) {
            return Err(ConfigError::Value(
                "server.max_body must be at least 1KiB".into(),
            ));
        }
        if self.server.workers > 4096 {
            return Err(ConfigError::Value(
                "server.workers must be at most 4096".into(),
            ));
        }
        if self.server.threads > 1024 {
            return Err(ConfigError::Value(
                "server.threads must be at most 1024".into(),
            ));
        }
        self.sessions.validate().map_err(ConfigError::Value)?;
        self.scheduler.validate().map_err(ConfigError::Value)?;
        self.jobs.validate().map_err(ConfigError::Value)?;
        self.fleet.validate().map_err(ConfigError::Value)?;
        self.auth.validate().map_err(ConfigError::Value)?;
        Ok(())
    }

    /// The configuration as TOML, every key written out.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("the configuration serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.server.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.limits.default.memory_mb, 256);
    }

    #[test]
    fn unknown_keys_are_errors() {
        let e = Config::from_toml("[server]\nlisten = \"127.0.0.1:1\"\nworkrs = 3\n").unwrap_err();
        assert!(e.to_string().contains("workrs"), "{e}");
        let e = Config::from_toml("[limit]\n").unwrap_err();
        assert!(e.to_string().contains("limit"), "{e}");
    }

    #[test]
    fn bad_values_are_errors() {
        let e = Config::from_toml("[limits.default]\ncpu_ms = 999999\nwall_ms = 1\nmemory_mb = 1\nprocesses = 1\noutput_kb = 1\ndisk_mb = 1\n")
            .unwrap_err();
        assert!(e.to_string().contains("cpu_ms"), "{e}");
        let e = Config::from_toml("[sandbox]\nuid_base = 0\n").unwrap_err();
        assert!(e.to_string().contains("uid_base"), "{e}");
        let e = Config::from_toml("[server]\nmax_body = \"1 parsec\"\n").unwrap_err();
        assert!(e.to_string().contains("unit"), "{e}");
        let e = Config::from_toml("[sandbox]\ncgroup = \"v3\"\n").unwrap_err();
        assert!(e.to_string().contains("v3"), "{e}");
    }

    #[test]
    fn round_trips_through_toml() {
        let c = Config::default();
        assert_eq!(Config::from_toml(&c.to_toml()).unwrap(), c);
    }

    #[test]
    fn sessions_section_parses_durations_and_checks_values() {
        let c = Config::from_toml(
            "[sessions]\nmax_text = \"64KiB\"\nidle_expiry = \"15m\"\ncompile_ahead_delay = \"1s\"\n",
        )
        .unwrap();
        assert_eq!(c.sessions.max_text, Bytes::kib(64));
        assert_eq!(c.sessions.idle_expiry, std::time::Duration::from_secs(900));
        assert_eq!(
            c.sessions.compile_ahead_delay,
            std::time::Duration::from_secs(1)
        );
        assert_eq!(c.sessions.max_sessions, DEFAULT_MAX_SESSIONS);
        let e = Config::from_toml("[sessions]\nmax_sessions = 0\n").unwrap_err();
        assert!(e.to_string().contains("sessions.max_sessions"), "{e}");
        let e = Config::from_toml("[sessions]\nidle_expiry = \"soon\"\n").unwrap_err();
        assert!(e.to_string().contains("idle_expiry"), "{e}");
        let e = Config::from_toml("[sessions]\nmax_text = 10\n").unwrap_err();
        assert!(e.to_string().contains("sessions.max_text"), "{e}");
    }

    #[test]
    fn scheduler_jobs_and_auth_sections_parse_and_check_values() {
        let c = Config::from_toml(
            "[scheduler]\npolicy = \"fifo\"\naging = 3.0\nmax_wait = \"5s\"\nclient_rate = 2.5\n\
             [jobs]\nretention = \"1m\"\ncallback_backoff = \"10ms\"\n\
             [auth]\nenabled = true\n[[auth.keys]]\nname = \"alice\"\nkey = \"0123456789abcdef\"\nconcurrency = 2\n",
        )
        .unwrap();
        assert_eq!(c.scheduler.policy, SchedulerPolicy::Fifo);
        assert_eq!(c.scheduler.max_wait, std::time::Duration::from_secs(5));
        assert_eq!(c.jobs.retention, std::time::Duration::from_secs(60));
        assert_eq!(c.auth.keys[0].concurrency, 2);
        for (toml, key) in [
            ("[scheduler]\naging = 0.5\n", "scheduler.aging"),
            ("[scheduler]\nclient_rate = -1.0\n", "scheduler.client_rate"),
            ("[scheduler]\npolicy = \"lifo\"\n", "lifo"),
            ("[jobs]\nmax_batch = 0\n", "jobs.max_batch"),
            ("[auth]\nenabled = true\n", "auth.enabled"),
            (
                "[[auth.keys]]\nname = \"a\"\nkey = \"short\"\n",
                "auth.keys[0].key",
            ),
        ] {
            let e = Config::from_toml(toml).unwrap_err();
            assert!(e.to_string().contains(key), "{toml}: {e}");
        }
    }

    /// The runtime's threads: as set, or one per four CPUs and at least one.
    #[test]
    fn server_threads_default_to_one_per_four_cpus() {
        let c = Config::default();
        assert_eq!(c.server.threads, 0);
        for (cpus, want) in [(1, 1), (2, 1), (4, 1), (7, 1), (8, 2), (64, 16)] {
            assert_eq!(c.server.runtime_threads(cpus), want, "{cpus} CPUs");
        }
        let set = Config::from_toml("[server]\nthreads = 3\n").unwrap();
        assert_eq!(set.server.runtime_threads(64), 3);
        let e = Config::from_toml("[server]\nthreads = 5000\n").unwrap_err();
        assert!(e.to_string().contains("server.threads"), "{e}");
    }

    /// Every key the code reads is documented in docs/config.md.
    #[test]
    fn docs_list_every_key() {
        let docs = include_str!("../../../docs/config.md");
        let value: toml::Value = toml::from_str(&Config::default().to_toml()).unwrap();
        let mut keys = Vec::new();
        fn walk(prefix: &str, v: &toml::Value, out: &mut Vec<String>) {
            if let toml::Value::Table(t) = v {
                for (k, v) in t {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    if v.is_table() {
                        walk(&p, v, out);
                    } else {
                        out.push(p);
                    }
                }
            }
        }
        walk("", &value, &mut keys);
        // Optional keys (None by default) are absent from the serialization; name them here.
        keys.extend(["sandbox.state_dir".to_owned(), "languages.dir".to_owned()]);
        assert!(keys.len() > 20, "{keys:?}");
        for k in keys {
            assert!(
                docs.contains(&format!("`{k}`")),
                "docs/config.md does not document `{k}`"
            );
        }
    }
}
