//! A run request checked against the registry and the limits policy (`Job`), and the sandbox
//! spec it becomes.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use cod_core::limits::{LimitsPolicy, LimitsSpec};
use cod_core::run::{RequestError, RunRequest};
use cod_sandbox::{Bind, FileEntry, Layout, SandboxSpec, SharedFile, StageSpec, Symlink};

use crate::cache::{Artifact, ArtifactKey, KeyBuilder};
use crate::language::{Language, Registry};
use crate::template::{Context, expand};

/// Environment every stage starts from; languages add to it. Nothing of the host's leaks in.
pub const BASE_ENV: &[(&str, &str)] = &[
    ("PATH", "/usr/local/bin:/usr/bin:/bin"),
    ("HOME", "/box"),
    ("USER", "sandbox"),
    ("LOGNAME", "sandbox"),
    ("LANG", "C.UTF-8"),
    ("LC_ALL", "C.UTF-8"),
    ("TMPDIR", "/tmp"),
    ("TERM", "dumb"),
];

/// The environment of a stage of `lang`: [`BASE_ENV`], the language's, then `extra`.
pub fn stage_env(
    lang: &Language,
    extra: &std::collections::BTreeMap<String, String>,
) -> Vec<String> {
    let mut vars: Vec<(String, String)> = BASE_ENV
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let language = lang.env.iter().map(|(k, v)| (k, v));
    for (k, v) in language.chain(extra.iter()) {
        match vars.iter_mut().find(|(key, _)| key == k) {
            Some(slot) => slot.1 = v.clone(),
            None => vars.push((k.clone(), v.clone())),
        }
    }
    vars.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// A unique id for a run: time-ordered, readable in logs.
pub fn new_run_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "{:x}{:04x}{:04x}",
        now,
        std::process::id() & 0xffff,
        n & 0xffff
    )
}

/// What every run binds from the host: `/usr`, the loader cache, `/etc/alternatives`, and
/// the merged-/usr links
/// (`/bin -> usr/bin` ...) mirrored as the host has them (or bound, on hosts without them).
#[derive(Clone, Debug)]
pub struct HostLayout {
    binds: Vec<Bind>,
    symlinks: Vec<Symlink>,
}

impl HostLayout {
    /// Reads the layout of this host.
    pub fn detect() -> HostLayout {
        let mut binds = vec![Bind {
            src: "/usr".into(),
            dst: "/usr".into(),
        }];
        let mut symlinks = Vec::new();
        for d in ["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"] {
            let p = Path::new(d);
            match std::fs::read_link(p) {
                Ok(target) => symlinks.push(Symlink {
                    path: p.into(),
                    target,
                }),
                Err(_) if p.is_dir() => binds.push(Bind {
                    src: p.into(),
                    dst: p.into(),
                }),
                Err(_) => {}
            }
        }
        // The loader's cache, the time zone, and Debian's alternatives (/usr/bin/cc and
        // friends are links through /etc/alternatives).
        for f in ["/etc/ld.so.cache", "/etc/localtime", "/etc/alternatives"] {
            if Path::new(f).exists() {
                binds.push(Bind {
                    src: f.into(),
                    dst: f.into(),
                });
            }
        }
        HostLayout { binds, symlinks }
    }

    /// This layout plus every available language's binds: one layout fits every run, so a
    /// sandbox can be prepared before its run's language is known. (Binding another
    /// language's toolchain read-only gives a program nothing it could not run anyway.)
    pub fn with_languages(mut self, registry: &Registry) -> HostLayout {
        for lang in registry.all().iter().filter(|l| l.available()) {
            for b in &lang.binds {
                if !self.binds.contains(b) {
                    self.binds.push(b.clone());
                }
            }
        }
        self
    }

    /// The sandbox layout of this host with a work dir of `disk` bytes.
    pub fn layout(&self, disk: u64) -> Layout {
        Layout {
            binds: self.binds.clone(),
            symlinks: self.symlinks.clone(),
            disk,
        }
    }

    /// Read-only binds every run gets.
    pub fn binds(&self) -> &[Bind] {
        &self.binds
    }

    /// Symlinks every run gets.
    pub fn symlinks(&self) -> &[Symlink] {
        &self.symlinks
    }
}

/// One file of a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobFile {
    /// File name; the main file may leave it to the language.
    pub name: Option<String>,
    /// Contents.
    pub content: Vec<u8>,
}

/// A run ready to be placed in a slot.
#[derive(Clone, Debug)]
pub struct Job {
    /// Run id.
    pub id: String,
    /// The language.
    pub language: Arc<Language>,
    /// Files: the main one first.
    pub files: Vec<(String, Vec<u8>)>,
    /// `{main}` of the program.
    pub main: String,
    /// Standard input.
    pub stdin: Vec<u8>,
    /// Program arguments.
    pub args: Vec<String>,
    /// Limits of the run stage.
    pub limits: LimitsSpec,
    /// Limits of the compile stage (for compiled languages).
    pub compile_limits: LimitsSpec,
}

/// The available language called `name`, or an error for the `language` field.
pub fn find_language(registry: &Registry, name: &str) -> Result<Arc<Language>, RequestError> {
    let language = registry.get(name).ok_or_else(|| RequestError::Invalid {
        field: "language".into(),
        why: format!(
            "unknown language {name:?}; available: {}",
            registry.available_names().join(", ")
        ),
    })?;
    if let Some(why) = &language.unavailable {
        return Err(RequestError::Invalid {
            field: "language".into(),
            why: format!("{} is not available on this server: {why}", language.name),
        });
    }
    Ok(language.clone())
}

impl Job {
    /// A job of `language` over `files` (the main one first). `extra_field` names the
    /// request field of extra file `i` in errors.
    pub fn new(
        language: Arc<Language>,
        files: Vec<JobFile>,
        extra_field: impl Fn(usize) -> String,
        stdin: Vec<u8>,
        args: Vec<String>,
        limits: LimitsSpec,
        compile_limits: LimitsSpec,
    ) -> Result<Job, RequestError> {
        let mut files = files.into_iter();
        let first = files.next().ok_or_else(|| RequestError::Missing {
            field: "source".into(),
            why: "a program needs a main file",
        })?;
        let main = language.main_name(&String::from_utf8_lossy(&first.content));
        let main_name = first.name.unwrap_or_else(|| language.main_file_name(&main));
        let mut out = vec![(main_name.clone(), first.content)];
        for (i, f) in files.enumerate() {
            let name = f.name.ok_or_else(|| RequestError::Missing {
                field: format!("{}.name", extra_field(i)),
                why: "required for every file but the main one",
            })?;
            if name == main_name || out.iter().any(|(n, _)| *n == name) {
                return Err(RequestError::Invalid {
                    field: format!("{}.name", extra_field(i)),
                    why: format!("{name:?} is already the name of another file"),
                });
            }
            out.push((name, f.content));
        }
        Ok(Job {
            id: new_run_id(),
            language,
            files: out,
            main,
            stdin,
            args,
            limits,
            compile_limits,
        })
    }

    /// Checks a native API request against the registry and policy. Errors name the field.
    pub fn from_request(
        req: &RunRequest,
        registry: &Registry,
        policy: &LimitsPolicy,
    ) -> Result<Job, RequestError> {
        req.validate()?;
        let language = find_language(registry, &req.language)?;
        let limits = policy
            .resolve(req.limits.as_ref())
            .map_err(|e| RequestError::Invalid {
                field: match &e {
                    cod_core::LimitsError::AboveMax { field, .. }
                    | cod_core::LimitsError::Zero { field } => format!("limits.{field}"),
                },
                why: e.to_string(),
            })?;
        let mut files: Vec<JobFile> = Vec::with_capacity(req.files.len() + 1);
        if let Some(src) = &req.source {
            files.push(JobFile {
                name: None,
                content: src.clone().into_bytes(),
            });
        }
        files.extend(req.files.iter().map(|f| JobFile {
            name: f.name.clone(),
            content: f.content.clone().into_bytes(),
        }));
        // Extra file i is files[i] after `source`, files[i + 1] without it.
        let offset = usize::from(req.source.is_none());
        Job::new(
            language,
            files,
            |i| format!("files[{}]", i + offset),
            req.stdin.clone().unwrap_or_default().into_bytes(),
            req.args.clone(),
            limits,
            policy.compile,
        )
    }

    /// Names of the source files (the main one first, then extra files with one of the
    /// language's extensions): what `{sources}` expands to.
    fn sources(&self) -> Vec<String> {
        self.files
            .iter()
            .enumerate()
            .filter(|(i, (name, _))| *i == 0 || self.language.is_source(name))
            .map(|(_, (name, _))| name.clone())
            .collect()
    }

    /// The environment of a stage: the base, the language's, the stage's.
    fn env(&self, extra: &std::collections::BTreeMap<String, String>) -> Vec<String> {
        stage_env(&self.language, extra)
    }

    fn compile_stage(&self) -> Option<StageSpec> {
        let compile = self.language.compile.as_ref()?;
        let limits = self.compile_limits.to_limits();
        let sources = self.sources();
        let ctx = Context {
            source: &self.files[0].0,
            sources: &sources,
            args: &[],
            main: &self.main,
            memory_bytes: limits.memory.get(),
        };
        let mut argv = expand(&compile.command, &ctx);
        argv.extend(self.prebuilt_args());
        Some(StageSpec {
            argv,
            env: self.env(&compile.env),
            limits,
            stdin: Vec::new(),
            collect: compile.artifacts.clone(),
            warm: None,
            interactive: false,
        })
    }

    /// The arguments that make the compiler use the language's prebuilt files, once they
    /// exist.
    fn prebuilt_args(&self) -> Vec<String> {
        match self.language.prebuild() {
            Some((p, dir)) if self.language.prebuilt_ready() => {
                let inside = dir.inside.to_string_lossy();
                p.use_args
                    .iter()
                    .map(|a| a.replace("{prebuilt}", &inside))
                    .collect()
            }
            _ => Vec::new(),
        }
    }

    fn run_stage(&self) -> StageSpec {
        let lang = &self.language;
        let limits = self.limits.to_limits();
        let sources = self.sources();
        let ctx = Context {
            source: &self.files[0].0,
            sources: &sources,
            args: &self.args,
            main: &self.main,
            memory_bytes: limits.memory.get(),
        };
        StageSpec {
            argv: expand(&lang.run.command, &ctx),
            env: self.env(&lang.run.env),
            limits,
            stdin: self.stdin.clone(),
            collect: Vec::new(),
            // A slot that holds the language's warm runtime runs it there.
            warm: lang.warm().map(|_| lang.name.clone()),
            interactive: false,
        }
    }

    fn spec(
        &self,
        slot: u32,
        host: &HostLayout,
        stages: Vec<StageSpec>,
        (extra, shared): (Vec<FileEntry>, Vec<SharedFile>),
        disk_mb: u64,
    ) -> SandboxSpec {
        let mut binds = host.binds.clone();
        for b in &self.language.binds {
            if !binds.contains(b) {
                binds.push(b.clone());
            }
        }
        let mut files: Vec<FileEntry> = self
            .files
            .iter()
            .map(|(name, content)| FileEntry {
                name: name.clone(),
                content: content.clone(),
                executable: false,
            })
            .collect();
        // A source file of the same name wins over a compiled one.
        let not_a_source = |name: &str| !self.files.iter().any(|(n, _)| n == name);
        files.extend(extra.into_iter().filter(|a| not_a_source(&a.name)));
        let shared = shared
            .into_iter()
            .filter(|a| not_a_source(&a.name))
            .collect();
        SandboxSpec {
            slot,
            binds,
            symlinks: host.symlinks.clone(),
            files,
            shared,
            stages,
            disk: disk_mb.saturating_mul(1 << 20),
            stream: false,
        }
    }

    /// The sandbox spec of this job in worker slot `slot`: compile (for compiled languages,
    /// collecting the artifacts) and run.
    pub fn sandbox_spec(&self, slot: u32, host: &HostLayout) -> SandboxSpec {
        let mut disk_mb = self.limits.disk_mb;
        let mut stages = Vec::new();
        if let Some(c) = self.compile_stage() {
            // The compiler's files and the program's share the work dir.
            disk_mb = disk_mb.max(self.compile_limits.disk_mb);
            stages.push(c);
        }
        stages.push(self.run_stage());
        self.spec(slot, host, stages, (Vec::new(), Vec::new()), disk_mb)
    }

    /// The spec that runs this job with an already compiled `artifact`: the run stage only,
    /// the artifact's files beside the sources.
    pub fn cached_spec(&self, slot: u32, host: &HostLayout, artifact: &Artifact) -> SandboxSpec {
        self.spec(
            slot,
            host,
            vec![self.run_stage()],
            artifact.run_files(),
            self.limits.disk_mb,
        )
    }

    /// The compile cache key: the language, its compiler's version, the compile command
    /// and environment (flags included), the main name, and every file. `None` for
    /// languages that do not compile or whose artifacts are not declared.
    pub fn cache_key(&self) -> Option<ArtifactKey> {
        let compile = self.language.compile.as_ref()?;
        if compile.artifacts.is_empty() {
            return None;
        }
        let mut k = KeyBuilder::default();
        k.field(b"cod-compile-1")
            .field(self.language.name.as_bytes())
            .field(self.language.version.as_bytes());
        for a in compile.command.iter().chain(&self.prebuilt_args()) {
            k.field(a.as_bytes());
        }
        for e in self.env(&compile.env) {
            k.field(e.as_bytes());
        }
        for a in &compile.artifacts {
            k.field(a.as_bytes());
        }
        k.field(self.main.as_bytes());
        for (name, content) in &self.files {
            k.field(name.as_bytes()).field(content);
        }
        Some(k.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cod_core::run::SourceFile;

    fn registry() -> Registry {
        Registry::load(None, &[]).unwrap()
    }

    #[test]
    fn unknown_language_names_the_field_and_lists_choices() {
        let req = RunRequest {
            language: "cobol".into(),
            source: Some("x".into()),
            ..Default::default()
        };
        let err = Job::from_request(&req, &registry(), &LimitsPolicy::default()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("language:"), "{msg}");
        assert!(msg.contains("python"), "{msg}");
    }

    #[test]
    fn limits_above_max_name_the_field() {
        let req = RunRequest {
            language: "python".into(),
            source: Some("x".into()),
            limits: Some(cod_core::LimitsRequest {
                memory_mb: Some(1 << 30),
                ..Default::default()
            }),
            ..Default::default()
        };
        let err = Job::from_request(&req, &registry(), &LimitsPolicy::default()).unwrap_err();
        assert!(err.to_string().starts_with("limits.memory_mb:"), "{err}");
    }

    #[test]
    fn c_job_compiles_every_c_file_and_runs_with_args() {
        let req = RunRequest {
            language: "c".into(),
            source: Some("int main(){}".into()),
            args: vec!["x".into(), "y".into()],
            files: vec![
                SourceFile {
                    name: Some("util.c".into()),
                    content: "".into(),
                },
                SourceFile {
                    name: Some("util.h".into()),
                    content: "".into(),
                },
            ],
            ..Default::default()
        };
        let reg = registry();
        let job = Job::from_request(&req, &reg, &LimitsPolicy::default()).unwrap();
        let spec = job.sandbox_spec(3, &HostLayout::detect());
        assert_eq!(spec.slot, 3);
        assert_eq!(spec.stages.len(), 2);
        let compile = &spec.stages[0].argv;
        assert!(compile.contains(&"main.c".to_owned()) && compile.contains(&"util.c".to_owned()));
        assert!(!compile.contains(&"util.h".to_owned()));
        assert_eq!(spec.stages[1].argv, ["/box/main", "x", "y"]);
        assert_eq!(spec.files.len(), 3);
        assert!(spec.stages[1].env.iter().any(|e| e == "HOME=/box"));
        assert!(
            !spec.stages[1]
                .env
                .iter()
                .any(|e| e.starts_with("NODE_EXTRA_CA_CERTS"))
        );
        assert_eq!(spec.disk, LimitsSpec::COMPILE.disk_mb << 20);
    }

    #[test]
    fn java_file_is_named_after_its_public_class() {
        let req = RunRequest {
            language: "java".into(),
            source: Some("public class Hello { public static void main(String[] a) {} }".into()),
            ..Default::default()
        };
        let job = Job::from_request(&req, &registry(), &LimitsPolicy::default()).unwrap();
        assert_eq!(job.files[0].0, "Hello.java");
        assert_eq!(job.main, "Hello");
    }

    #[test]
    fn extra_file_cannot_replace_the_main_file() {
        let req = RunRequest {
            language: "python".into(),
            source: Some("".into()),
            files: vec![SourceFile {
                name: Some("main.py".into()),
                content: "".into(),
            }],
            ..Default::default()
        };
        let err = Job::from_request(&req, &registry(), &LimitsPolicy::default()).unwrap_err();
        assert!(err.to_string().starts_with("files[0].name:"), "{err}");
    }

    #[test]
    fn cache_keys_follow_sources_flags_and_compiler_version() {
        let reg = registry();
        let req = |src: &str| RunRequest {
            language: "c".into(),
            source: Some(src.into()),
            stdin: Some("not part of the key".into()),
            ..Default::default()
        };
        let job = Job::from_request(&req("int main(){}"), &reg, &LimitsPolicy::default()).unwrap();
        let key = job.cache_key().unwrap();
        // Same program, other stdin and id: same key.
        let mut again =
            Job::from_request(&req("int main(){}"), &reg, &LimitsPolicy::default()).unwrap();
        again.stdin = b"x".to_vec();
        assert_eq!(again.cache_key(), Some(key));
        // Another source.
        let other = Job::from_request(
            &req("int main(){return 1;}"),
            &reg,
            &LimitsPolicy::default(),
        )
        .unwrap();
        assert_ne!(other.cache_key(), Some(key));
        // Another compiler version.
        let mut lang = (*job.language).clone();
        lang.version = "99.0.0".into();
        let newer = Job {
            language: Arc::new(lang.clone()),
            ..job.clone()
        };
        assert_ne!(newer.cache_key(), Some(key));
        // Other flags.
        lang.version = job.language.version.clone();
        lang.compile.as_mut().unwrap().command.push("-O3".into());
        let flagged = Job {
            language: Arc::new(lang),
            ..job.clone()
        };
        assert_ne!(flagged.cache_key(), Some(key));
        // Interpreted languages have none.
        let py = RunRequest {
            language: "python".into(),
            source: Some("print(1)".into()),
            ..Default::default()
        };
        let py = Job::from_request(&py, &reg, &LimitsPolicy::default()).unwrap();
        assert_eq!(py.cache_key(), None);
    }

    #[test]
    fn ids_are_unique() {
        let a = new_run_id();
        let b = new_run_id();
        assert_ne!(a, b);
    }
}
