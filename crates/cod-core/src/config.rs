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
