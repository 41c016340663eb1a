//! Languages: the schema of `languages/*.toml`, and the registry built from the built-in
//! files and an optional directory of the operator's.
//!
//! A language file says how to name the main file, which host paths to bind read-only, how
//! to compile (optional) and run, and how to print the version. Commands are argument
//! vectors with placeholders (see `languages/README.md`). `[vars]` are host commands run
//! once at load time whose first line of output becomes `{name}`; a language whose vars,
//! programs or version command fail is listed as unavailable, with the reason.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use cod_sandbox::Bind;
use regex::Regex;
use serde::Deserialize;

use crate::template::{substitute_vars, unresolved};

include!(concat!(env!("OUT_DIR"), "/builtin_languages.rs"));

/// How long a probe command (var, version) may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// A language file as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LanguageFile {
    /// Canonical name, used in the API (`"python"`).
    pub name: String,
    /// Human name (`"Python"`).
    pub title: String,
    /// Other names accepted in requests.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// File extensions of its sources, without the dot; the first names files by default.
    pub extensions: Vec<String>,
    /// Name of the main file; may use `{main}`.
    pub source_file: String,
    /// How `{main}` is found in the main source.
    #[serde(default)]
    pub main: Option<MainFile>,
    /// How to print the version.
    pub version: VersionFile,
    /// Extra read-only binds (besides `/usr` and the system's library links).
    #[serde(default)]
    pub binds: Vec<BindFile>,
    /// Environment variables for every stage.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The starter program shown in the editor.
    pub template: String,
    /// A hello-world program (used by `cod bench` and the tests).
    pub hello: String,
    /// Host commands whose output defines `{name}` placeholders.
    #[serde(default)]
    pub vars: BTreeMap<String, Vec<String>>,
    /// How to compile, for compiled languages.
    #[serde(default)]
    pub compile: Option<StageFile>,
    /// Something built once per compiler version that makes compiles faster (a
    /// precompiled header, a class-data archive).
    #[serde(default)]
    pub prebuild: Option<PrebuildFile>,
    /// How to run.
    pub run: StageFile,
    /// An interpreter kept started ahead of runs (see `docs/sandbox.md`, warm runtimes).
    #[serde(default)]
    pub warm: Option<WarmFile>,
}

/// `[warm]`: how slots keep the language's interpreter started ahead of its runs. Only runs
/// whose run command starts with the run program and a script can use it; the program sees
/// the same thing as when the interpreter is started for it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmFile {
    /// How: `"python"` (CPython loaded from its shared library into a zygote that forks a
    /// fresh process per run), `"node"` (Node.js started ahead, once per run, in the
    /// slot's prepared sandbox) or `"java"` (a JVM started ahead alike, with the run
    /// command's options, which loads the run's main class when it comes).
    pub kind: String,
    /// `python`: the interpreter's shared library (placeholders allowed). If it is missing,
    /// the language runs cold.
    #[serde(default)]
    pub library: String,
    /// Modules imported ahead, so that programs importing them start faster.
    #[serde(default)]
    pub preload: Vec<String>,
}

/// `[prebuild]`: built once per compiler version, in the sandbox, off the request path;
/// until it is ready, compiles run without it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrebuildFile {
    /// Files written into the work dir for the build.
    #[serde(default)]
    pub sources: BTreeMap<String, String>,
    /// The build command (placeholders as in `[compile]`).
    pub command: Vec<String>,
    /// The files it produces (names in the work dir).
    pub artifacts: Vec<String>,
    /// Subdirectory of `{prebuilt}` the artifacts go into (GCC finds `bits/stdc++.h.gch`
    /// only under `bits/`).
    #[serde(default)]
    pub into: Option<String>,
    /// Arguments appended to the compile command once the artifacts exist; `{prebuilt}` is
    /// the read-only directory holding them.
    #[serde(rename = "use")]
    pub use_args: Vec<String>,
}

/// Where a language's prebuilt files live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prebuilt {
    /// On the host (written by cod).
    pub host: PathBuf,
    /// Inside the sandbox (bound read-only).
    pub inside: PathBuf,
}

/// `main = { patterns = [...], default = "Main" }`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MainFile {
    /// Regexes tried in order on the main source; the first capture group of the first match
    /// is `{main}`.
    pub patterns: Vec<String>,
    /// `{main}` when no pattern matches.
    pub default: String,
}

/// `version = { command = [...], pattern = "..." }`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionFile {
    /// Command run on the host; its output holds the version.
    pub command: Vec<String>,
    /// Regex whose first capture is the version; default: the first `N.N[.N]`.
    #[serde(default)]
    pub pattern: Option<String>,
}

/// A bind: `"/path"` (same path inside) or `{ src, dst, optional }`.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum BindFile {
    /// Same path inside and out.
    Same(String),
    /// Different paths.
    Mapped {
        /// Host path.
        src: String,
        /// Path inside the sandbox (default: `src`).
        #[serde(default)]
        dst: Option<String>,
        /// Skip the bind when the host path is missing.
        #[serde(default)]
        optional: bool,
    },
}

/// `[compile]` or `[run]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageFile {
    /// Program and arguments, with placeholders.
    pub command: Vec<String>,
    /// Extra environment for this stage.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Compile only: the work-dir files the compiler produces that the run needs (names,
    /// `*` as a wildcard). Without it, compiled programs are not cached.
    #[serde(default)]
    pub artifacts: Vec<String>,
}

/// A language ready to use (or known to be unavailable).
#[derive(Clone, Debug)]
pub struct Language {
    /// Canonical name.
    pub name: String,
    /// Human name.
    pub title: String,
    /// Other accepted names.
    pub aliases: Vec<String>,
    /// Source extensions.
    pub extensions: Vec<String>,
    /// Version as reported by the toolchain (empty when unavailable).
    pub version: String,
    /// Why the language cannot be used on this host, if it cannot.
    pub unavailable: Option<String>,
    /// Starter program.
    pub template: String,
    /// Hello world.
    pub hello: String,
    pub(crate) source_file: String,
    pub(crate) main: Option<(Vec<Regex>, String)>,
    pub(crate) binds: Vec<Bind>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) compile: Option<StageFile>,
    pub(crate) prebuild: Option<PrebuildFile>,
    pub(crate) prebuilt: Option<Prebuilt>,
    pub(crate) run: StageFile,
    pub(crate) warm: Option<WarmFile>,
    /// Why `[warm]` cannot be used here, if the language has one that cannot.
    pub warm_unavailable: Option<String>,
}

impl Language {
    /// The language's prebuild, if it has one and a place for it was set
    /// ([`Registry::with_prebuilt`]).
    pub fn prebuild(&self) -> Option<(&PrebuildFile, &Prebuilt)> {
        Some((self.prebuild.as_ref()?, self.prebuilt.as_ref()?))
    }

    /// Whether the prebuilt files exist (then compiles use them).
    pub fn prebuilt_ready(&self) -> bool {
        self.prebuild().is_some_and(|(p, dir)| {
            let base = p
                .into
                .as_ref()
                .map_or(dir.host.clone(), |i| dir.host.join(i));
            p.artifacts.iter().all(|a| base.join(a).is_file())
        })
    }

    /// Whether the language has a prebuild whose files do not exist yet (to build off the
    /// request path).
    pub fn prebuild_missing(&self) -> bool {
        self.prebuild().is_some() && !self.prebuilt_ready()
    }

    /// The language's warm runtime, if it has one that works on this host.
    pub fn warm(&self) -> Option<&WarmFile> {
        self.warm.as_ref().filter(|_| self.available())
    }

    /// The program the run stage starts (`argv[0]`).
    pub fn run_program(&self) -> &str {
        self.run.command.first().map_or("", String::as_str)
    }

    /// Whether the language has a compile stage.
    pub fn compiled(&self) -> bool {
        self.compile.is_some()
    }

    /// Whether it can be used on this host.
    pub fn available(&self) -> bool {
        self.unavailable.is_none()
    }

    /// `{main}` for `source`.
    pub(crate) fn main_name(&self, source: &str) -> String {
        match &self.main {
            Some((patterns, default)) => patterns
                .iter()
                .find_map(|re| re.captures(source).and_then(|c| c.get(1)))
                .map_or_else(|| default.clone(), |m| m.as_str().to_owned()),
            None => "main".to_owned(),
        }
    }

    /// File name of the main source.
    pub(crate) fn main_file_name(&self, main: &str) -> String {
        self.source_file.replace("{main}", main)
    }

    /// Whether `name` has one of the language's extensions.
    pub(crate) fn is_source(&self, name: &str) -> bool {
        name.rsplit_once('.')
            .is_some_and(|(_, ext)| self.extensions.iter().any(|e| e == ext))
    }
}

/// Why the language files could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// a file does not parse
    #[error("language file {file}: {message}")]
    Parse {
        /// The file.
        file: String,
        /// What is wrong, with the key.
        message: String,
    },
    /// reading the operator's directory failed
    #[error("reading language directory {dir}")]
    ReadDir {
        /// The directory.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// two languages claim the same name or alias
    #[error("languages {first} and {second} both use the name {name:?}")]
    Duplicate {
        /// The name or alias.
        name: String,
        /// One language.
        first: String,
        /// The other.
        second: String,
    },
    /// `languages.enabled` names a language that does not exist
    #[error("languages.enabled names {0:?}, which no language file defines")]
    UnknownEnabled(String),
}

/// All languages, looked up by name or alias (case-insensitive).
#[derive(Debug, Default)]
pub struct Registry {
    languages: Vec<Arc<Language>>,
    by_name: HashMap<String, usize>,
}

fn parse(file: &str, text: &str) -> Result<LanguageFile, RegistryError> {
    let lf: LanguageFile = toml::from_str(text).map_err(|e| RegistryError::Parse {
        file: file.to_owned(),
        message: e.to_string(),
    })?;
    let bad = |m: String| RegistryError::Parse {
        file: file.to_owned(),
        message: m,
    };
    if lf.name.is_empty()
        || !lf
            .name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    {
        return Err(bad(format!(
            "name {:?} must be lowercase letters and digits",
            lf.name
        )));
    }
    if lf.extensions.is_empty() {
        return Err(bad("extensions must not be empty".into()));
    }
    for (what, cmd) in [
        ("run.command", Some(&lf.run.command)),
        ("compile.command", lf.compile.as_ref().map(|c| &c.command)),
    ] {
        if cmd.is_some_and(Vec::is_empty) {
            return Err(bad(format!("{what} must not be empty")));
        }
    }
    Ok(lf)
}

impl Registry {
    /// Loads the built-in languages and those in `dir` (which replace built-ins of the same
    /// name), keeps only `enabled` ones when it is not empty, and probes each on this host.
    /// Runs host commands: call it before starting async work or from a blocking thread.
    pub fn load(dir: Option<&Path>, enabled: &[String]) -> Result<Registry, RegistryError> {
        let mut files: BTreeMap<String, LanguageFile> = BTreeMap::new();
        for (file, text) in BUILTIN {
            let lf = parse(file, text)?;
            files.insert(lf.name.clone(), lf);
        }
        if let Some(dir) = dir {
            let entries = std::fs::read_dir(dir).map_err(|source| RegistryError::ReadDir {
                dir: dir.to_owned(),
                source,
            })?;
            let mut paths: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "toml"))
                .collect();
            paths.sort();
            for p in paths {
                let text =
                    std::fs::read_to_string(&p).map_err(|source| RegistryError::ReadDir {
                        dir: p.clone(),
                        source,
                    })?;
                let lf = parse(&p.display().to_string(), &text)?;
                files.insert(lf.name.clone(), lf);
            }
        }
        for name in enabled {
            if !files.contains_key(name) {
                return Err(RegistryError::UnknownEnabled(name.clone()));
            }
        }
        let chosen: Vec<LanguageFile> = files
            .into_values()
            .filter(|lf| enabled.is_empty() || enabled.contains(&lf.name))
            .collect();
        // Probing runs a few host commands per language; do the languages side by side.
        let languages: Vec<Language> = std::thread::scope(|s| {
            let handles: Vec<_> = chosen.iter().map(|lf| s.spawn(|| resolve(lf))).collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("probing a language does not panic"))
                .collect::<Result<_, _>>()
        })?;
        Self::from_languages(languages)
    }

    /// Builds a registry from resolved languages (checks names for clashes).
    pub fn from_languages(languages: Vec<Language>) -> Result<Registry, RegistryError> {
        let mut reg = Registry::default();
        for lang in languages {
            let idx = reg.languages.len();
            for n in std::iter::once(&lang.name).chain(&lang.aliases) {
                let key = n.to_lowercase();
                if let Some(&other) = reg.by_name.get(&key) {
                    return Err(RegistryError::Duplicate {
                        name: key,
                        first: reg.languages[other].name.clone(),
                        second: lang.name.clone(),
                    });
                }
                reg.by_name.insert(key, idx);
            }
            reg.languages.push(Arc::new(lang));
        }
        Ok(reg)
    }

    /// Gives every available language with a `[prebuild]` a directory under `root` (named
    /// after its compiler version and build, so an upgrade starts afresh), bound read-only
    /// into sandboxes at `/opt/cod/prebuilt/<language>`.
    pub fn with_prebuilt(mut self, root: &Path) -> std::io::Result<Registry> {
        for lang in &mut self.languages {
            let Some(p) = (lang.available().then_some(lang.prebuild.as_ref())).flatten() else {
                continue;
            };
            let mut h = blake3::Hasher::new();
            h.update(lang.version.as_bytes());
            for a in &p.command {
                h.update(a.as_bytes());
                h.update(b"\0");
            }
            for (name, text) in &p.sources {
                h.update(name.as_bytes());
                h.update(text.as_bytes());
            }
            let tag = h.finalize().to_hex();
            let host = root.join(format!("{}-{}", lang.name, &tag[..16]));
            std::fs::create_dir_all(&host)?;
            if let Some(into) = &p.into {
                std::fs::create_dir_all(host.join(into))?;
            }
            let inside = PathBuf::from("/opt/cod/prebuilt").join(&lang.name);
            let lang = Arc::make_mut(lang);
            lang.binds.push(Bind {
                src: host.clone(),
                dst: inside.clone(),
            });
            lang.prebuilt = Some(Prebuilt { host, inside });
        }
        Ok(self)
    }

    /// Writes the files that warm runtimes start from (the Node.js bootstrap) under `root`
    /// and binds them read-only into the sandboxes of the languages that use them.
    pub fn with_warm_files(mut self, root: &Path) -> std::io::Result<Registry> {
        for lang in &mut self.languages {
            if lang.warm().is_some_and(|w| w.kind == "java") {
                match java_boot(lang, root) {
                    Ok(dir) => Arc::make_mut(lang).binds.push(Bind {
                        src: dir,
                        dst: crate::pool::JAVA_BOOT_DIR.into(),
                    }),
                    Err(why) => {
                        let l = Arc::make_mut(lang);
                        l.warm = None;
                        l.warm_unavailable = Some(why);
                    }
                }
                continue;
            }
            if lang.warm().is_none_or(|w| w.kind != "node") {
                continue;
            }
            let code = crate::pool::NODE_BOOTSTRAP;
            let tag = blake3::hash(code.as_bytes()).to_hex();
            let host = root.join(format!("node-bootstrap-{}.js", &tag[..16]));
            if !host.is_file() {
                std::fs::create_dir_all(root)?;
                // Written whole under a temporary name, then renamed into place.
                let tmp = root.join(format!(
                    ".node-bootstrap-{}.{}",
                    &tag[..16],
                    std::process::id()
                ));
                std::fs::write(&tmp, code)?;
                std::fs::rename(&tmp, &host)?;
            }
            Arc::make_mut(lang).binds.push(Bind {
                src: host,
                dst: crate::pool::NODE_BOOTSTRAP_PATH.into(),
            });
        }
        Ok(self)
    }

    /// The language called `name` (or with that alias), case-insensitive.
    pub fn get(&self, name: &str) -> Option<&Arc<Language>> {
        self.by_name
            .get(&name.trim().to_lowercase())
            .map(|&i| &self.languages[i])
    }

    /// The language whose extensions include that of `file`.
    pub fn for_file(&self, file: &Path) -> Option<&Arc<Language>> {
        let ext = file.extension()?.to_str()?;
        self.languages
            .iter()
            .find(|l| l.extensions.iter().any(|e| e == ext))
    }

    /// Every language, available or not, by name.
    pub fn all(&self) -> &[Arc<Language>] {
        &self.languages
    }

    /// Names of the available languages.
    pub fn available_names(&self) -> Vec<String> {
        self.languages
            .iter()
            .filter(|l| l.available())
            .map(|l| l.name.clone())
            .collect()
    }
}

/// Runs a probe command on the host and returns its output (stdout, then stderr). Gives up
/// after [`PROBE_TIMEOUT`].
fn probe(cmd: &[String]) -> Result<String, String> {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let (prog, args) = cmd.split_first().ok_or("empty command")?;
    let mut child = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{prog}: {e}"))?;
    let pidfd = rustix::process::pidfd_open(
        rustix::process::Pid::from_child(&child),
        rustix::process::PidfdFlags::empty(),
    )
    .map_err(|e| format!("{prog}: pidfd: {e}"))?;
    let mut fds = [PollFd::new(&pidfd, PollFlags::IN)];
    let timeout = Timespec {
        tv_sec: i64::try_from(PROBE_TIMEOUT.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: 0,
    };
    if poll(&mut fds, Some(&timeout)).is_ok_and(|n| n == 0) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!("{prog} did not finish within {PROBE_TIMEOUT:?}"));
    }
    let output = child
        .wait_with_output()
        .map_err(|e| format!("{prog}: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "{} exited with {}: {}",
            cmd.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let mut s = String::from_utf8_lossy(&output.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&output.stderr));
    Ok(s)
}

fn default_version_pattern() -> Regex {
    Regex::new(r"(\d+\.\d+(?:\.\d+)?)").expect("a valid regex")
}

/// Resolves vars, binds and commands, and probes the host. Parse-level problems (bad regex)
/// are errors; missing toolchains make the language unavailable.
fn resolve(lf: &LanguageFile) -> Result<Language, RegistryError> {
    let bad = |m: String| RegistryError::Parse {
        file: format!("{}.toml", lf.name),
        message: m,
    };
    let main = match &lf.main {
        Some(m) => Some((
            m.patterns
                .iter()
                .map(|p| Regex::new(p).map_err(|e| bad(format!("main.patterns: {e}"))))
                .collect::<Result<Vec<_>, _>>()?,
            m.default.clone(),
        )),
        None => None,
    };
    let version_re = match &lf.version.pattern {
        Some(p) => Regex::new(p).map_err(|e| bad(format!("version.pattern: {e}")))?,
        None => default_version_pattern(),
    };
    let mut lang = Language {
        name: lf.name.clone(),
        title: lf.title.clone(),
        aliases: lf.aliases.clone(),
        extensions: lf.extensions.clone(),
        version: String::new(),
        unavailable: None,
        template: lf.template.trim_start_matches('\n').to_owned(),
        hello: lf.hello.trim_start_matches('\n').to_owned(),
        source_file: lf.source_file.clone(),
        main,
        binds: Vec::new(),
        env: lf.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        compile: lf.compile.clone(),
        prebuild: lf.prebuild.clone(),
        prebuilt: None,
        run: lf.run.clone(),
        warm: None,
        warm_unavailable: None,
    };
    if let Err(why) = probe_host(lf, &mut lang, &version_re) {
        lang.unavailable = Some(why);
    }
    Ok(lang)
}

fn probe_host(lf: &LanguageFile, lang: &mut Language, version_re: &Regex) -> Result<(), String> {
    // Vars may use each other: resolve whichever have all their inputs, until none is left.
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    let mut pending: Vec<(&String, &Vec<String>)> = lf.vars.iter().collect();
    while !pending.is_empty() {
        let before = pending.len();
        let mut still = Vec::new();
        for (name, cmd) in pending {
            let cmd: Vec<String> = cmd.iter().map(|a| substitute_vars(a, &vars)).collect();
            if cmd.iter().any(|a| unresolved(a, lf.vars.keys())) {
                still.push((name, lf.vars.get(name).expect("from the map")));
                continue;
            }
            let out = probe(&cmd).map_err(|e| format!("vars.{name}: {e}"))?;
            let value = out.lines().next().unwrap_or("").trim().to_owned();
            if value.is_empty() {
                return Err(format!("vars.{name}: {} printed nothing", cmd.join(" ")));
            }
            vars.insert(name.clone(), value);
        }
        if still.len() == before {
            return Err(format!(
                "vars {:?} refer to each other in a cycle",
                still.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>()
            ));
        }
        pending = still;
    }
    let sub = |s: &str| substitute_vars(s, &vars);

    for b in &lf.binds {
        let (src, dst, optional) = match b {
            BindFile::Same(p) => (sub(p), sub(p), false),
            BindFile::Mapped { src, dst, optional } => {
                let s = sub(src);
                (s.clone(), dst.as_deref().map_or(s, sub), *optional)
            }
        };
        if !Path::new(&src).exists() {
            if optional {
                continue;
            }
            return Err(format!("{src} does not exist on this host"));
        }
        lang.binds.push(Bind {
            src: src.into(),
            dst: dst.into(),
        });
    }
    for (k, v) in &mut lang.env {
        *v = sub(v);
        let _ = k;
    }
    if let Some(p) = &mut lang.prebuild {
        for a in p.command.iter_mut().chain(p.use_args.iter_mut()) {
            *a = sub(a);
        }
    }
    let stages = [lang.compile.as_mut(), Some(&mut lang.run)];
    for stage in stages.into_iter().flatten() {
        for a in &mut stage.command {
            *a = sub(a);
        }
        for v in stage.env.values_mut() {
            *v = sub(v);
        }
    }
    // Every program a stage starts must exist on the host (through the binds).
    let programs: Vec<String> = lang
        .compile
        .iter()
        .chain(std::iter::once(&lang.run))
        .map(|s| s.command[0].clone())
        .filter(|p| !p.starts_with("/box/"))
        .collect();
    for p in programs {
        let host = host_path(&p, &lang.binds);
        if !host.exists() {
            return Err(format!(
                "{p} is not installed (looked for {})",
                host.display()
            ));
        }
    }
    if let Some(w) = &lf.warm {
        let library = sub(&w.library);
        let usable = match w.kind.as_str() {
            "python" if Path::new(&library).is_file() => Ok(()),
            "python" => Err(format!("{library} does not exist on this host")),
            "node" => Ok(()),
            "java" if lang.compile.is_some() => Ok(()),
            "java" => Err("warm.kind \"java\" needs a [compile] section (javac)".into()),
            other => Err(format!(
                "warm.kind {other:?} is not known (\"python\", \"node\" or \"java\")"
            )),
        };
        match usable {
            Ok(()) => {
                lang.warm = Some(WarmFile {
                    kind: w.kind.clone(),
                    library,
                    preload: w.preload.clone(),
                });
            }
            Err(why) => lang.warm_unavailable = Some(why),
        }
    }
    let vcmd: Vec<String> = lf.version.command.iter().map(|a| sub(a)).collect();
    let out = probe(&vcmd)?;
    lang.version = version_re
        .captures(&out)
        .and_then(|c| c.get(1))
        .map(|m| m.as_str().to_owned())
        .ok_or_else(|| format!("no version in the output of {}", vcmd.join(" ")))?;
    Ok(())
}

/// Where a path inside the sandbox comes from on the host: through a language bind, else the
/// same path (`/usr` is bound as itself).
fn host_path(inside: &str, binds: &[Bind]) -> PathBuf {
    for b in binds {
        if let Ok(rest) = Path::new(inside).strip_prefix(&b.dst) {
            return b.src.join(rest);
        }
    }
    PathBuf::from(inside)
}

/// Compiles the JVM bootstrap ([`crate::pool::JAVA_BOOT`]) with `lang`'s own compiler into
/// a directory under `root` named after its source and the compiler, unless it is there;
/// returns that directory. The bootstrap is cod's code, compiled on the host once.
fn java_boot(lang: &Language, root: &Path) -> Result<std::path::PathBuf, String> {
    let javac = lang
        .compile
        .as_ref()
        .and_then(|c| c.command.first())
        .ok_or("no compiler")?;
    let code = crate::pool::JAVA_BOOT;
    let tag = blake3::hash(format!("{code}\0{javac}\0{}", lang.version).as_bytes()).to_hex();
    let dir = root.join(format!("java-boot-{}", &tag[..16]));
    if dir.join("CodBoot.class").is_file() {
        return Ok(dir);
    }
    let tmp = root.join(format!(".java-boot-{}.{}", &tag[..16], std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let fail = |e: &dyn std::fmt::Display| format!("building the JVM bootstrap: {e}");
    std::fs::create_dir_all(&tmp).map_err(|e| fail(&e))?;
    std::fs::write(tmp.join("CodBoot.java"), code).map_err(|e| fail(&e))?;
    let out = std::process::Command::new(javac)
        .args(["-encoding", "UTF-8", "-d", "."])
        .arg("CodBoot.java")
        .current_dir(&tmp)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .output()
        .map_err(|e| fail(&e))?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(fail(&String::from_utf8_lossy(&out.stderr)));
    }
    let _ = std::fs::remove_file(tmp.join("CodBoot.java"));
    match std::fs::rename(&tmp, &dir) {
        Ok(()) => Ok(dir),
        // Another cod built it at the same time.
        Err(_) if dir.join("CodBoot.class").is_file() => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(dir)
        }
        Err(e) => Err(fail(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_files_parse_and_names_are_unique() {
        let mut names = std::collections::HashSet::new();
        for (file, text) in BUILTIN {
            let lf = parse(file, text).unwrap();
            assert_eq!(format!("{}.toml", lf.name), *file);
            for n in std::iter::once(&lf.name).chain(&lf.aliases) {
                assert!(names.insert(n.clone()), "{n} used twice");
            }
        }
        for required in ["python", "c", "cpp", "rust", "javascript", "java", "bash"] {
            assert!(names.contains(required), "{required} missing");
        }
        for alias in ["py", "c++", "js"] {
            assert!(names.contains(alias), "alias {alias} missing");
        }
    }

    #[test]
    fn unknown_keys_in_language_files_are_errors() {
        let text = BUILTIN[0].1.replace("title =", "titel =");
        let err = parse("x.toml", &text).unwrap_err().to_string();
        assert!(err.contains("titel"), "{err}");
    }

    #[test]
    fn java_main_class_follows_the_source() {
        let (_, text) = BUILTIN.iter().find(|(f, _)| *f == "java.toml").unwrap();
        let lf = parse("java.toml", text).unwrap();
        let lang = Language {
            main: Some((
                lf.main
                    .as_ref()
                    .unwrap()
                    .patterns
                    .iter()
                    .map(|p| Regex::new(p).unwrap())
                    .collect(),
                "Main".into(),
            )),
            ..resolve_unprobed(&lf)
        };
        assert_eq!(lang.main_name("public class Solution {\n}"), "Solution");
        assert_eq!(
            lang.main_name("import x;\nfinal class Foo { }\nclass Bar {}"),
            "Foo"
        );
        assert_eq!(lang.main_name("// nothing"), "Main");
        assert_eq!(lang.main_file_name("Solution"), "Solution.java");
    }

    fn resolve_unprobed(lf: &LanguageFile) -> Language {
        Language {
            name: lf.name.clone(),
            title: lf.title.clone(),
            aliases: lf.aliases.clone(),
            extensions: lf.extensions.clone(),
            version: String::new(),
            unavailable: None,
            template: lf.template.clone(),
            hello: lf.hello.clone(),
            source_file: lf.source_file.clone(),
            main: None,
            binds: vec![],
            env: vec![],
            compile: lf.compile.clone(),
            prebuild: None,
            prebuilt: None,
            run: lf.run.clone(),
            warm: None,
            warm_unavailable: None,
        }
    }

    #[test]
    fn missing_toolchain_makes_a_language_unavailable_not_an_error() {
        let text = r#"
name = "ghost"
title = "Ghost"
extensions = ["gh"]
source_file = "main.gh"
version = { command = ["/nonexistent/ghost", "--version"] }
template = ""
hello = ""
[run]
command = ["/nonexistent/ghost", "{source}"]
"#;
        let lf = parse("ghost.toml", text).unwrap();
        let lang = resolve(&lf).unwrap();
        assert!(!lang.available());
        assert!(lang.unavailable.unwrap().contains("/nonexistent/ghost"));
    }

    #[test]
    fn vars_resolve_in_dependency_order() {
        let text = r#"
name = "echoer"
title = "Echoer"
extensions = ["e"]
source_file = "main.e"
version = { command = ["/bin/echo", "{b}"] }
template = ""
hello = ""
[vars]
b = ["/bin/echo", "{a}.1"]
a = ["/bin/echo", "7.2"]
[run]
command = ["/usr/bin/cat", "{source}"]
"#;
        let lang = resolve(&parse("echoer.toml", text).unwrap()).unwrap();
        assert_eq!(lang.unavailable, None);
        assert_eq!(lang.version, "7.2.1");
    }

    /// Rust links with the toolchain's `rust-lld`, given what `cc` would add, where the
    /// toolchain has it; through `cc`, rustc's default, where it does not.
    #[test]
    fn rust_links_with_rust_lld_where_the_toolchain_has_it_and_through_cc_elsewhere() {
        let Ok(sysroot) = probe(&["rustc".into(), "--print".into(), "sysroot".into()]) else {
            return; // no Rust on this host: the language is unavailable anyway
        };
        let (_, text) = BUILTIN.iter().find(|(f, _)| *f == "rust.toml").unwrap();
        let compile = |text: &str| {
            let lang = resolve(&parse("rust.toml", text).unwrap()).unwrap();
            lang.compile.unwrap().command
        };
        let has = |cmd: &[String], arg: &str| cmd.iter().any(|a| a == arg);
        let cmd = compile(text);
        let host = probe(&[
            "/bin/sh".into(),
            "-c".into(),
            "rustc -vV | sed -n 's/^host: //p'".into(),
        ])
        .unwrap();
        let lld = format!("{sysroot}/lib/rustlib/{host}/bin/rust-lld");
        if Path::new(&lld).exists() {
            assert!(has(&cmd, "linker-flavor=ld.lld"), "{cmd:?}");
            let linker = format!("linker=/opt/rust/lib/rustlib/{host}/bin/rust-lld");
            assert!(has(&cmd, &linker), "{cmd:?}");
            let args = cmd.iter().find(|a| a.starts_with("link-args=")).unwrap();
            for part in [
                "Scrt1.o",
                "crti.o",
                "crtbeginS.o",
                "crtendS.o",
                "crtn.o",
                "-L/",
                "--dynamic-linker=/",
            ] {
                assert!(args.contains(part), "{part} missing in {args}");
            }
        }
        // A toolchain without rust-lld: its rustc, and nothing else.
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        std::os::unix::fs::symlink(format!("{sysroot}/bin/rustc"), dir.path().join("bin/rustc"))
            .unwrap();
        let bare = text.replace(
            r#"sysroot = ["rustc", "--print", "sysroot"]"#,
            &format!(r#"sysroot = ["/bin/echo", "{}"]"#, dir.path().display()),
        );
        assert_ne!(bare, *text, "the test no longer finds rust.toml's sysroot");
        let cmd = compile(&bare);
        assert!(has(&cmd, "linker=cc"), "{cmd:?}");
        assert!(has(&cmd, "linker-flavor=gcc"), "{cmd:?}");
    }

    #[test]
    fn lookup_is_by_name_alias_or_extension() {
        let reg = Registry::load(None, &[]).unwrap();
        assert_eq!(reg.get("PY").unwrap().name, "python");
        assert_eq!(reg.get("c++").unwrap().name, "cpp");
        assert_eq!(reg.for_file(Path::new("x/hello.c")).unwrap().name, "c");
        assert_eq!(reg.for_file(Path::new("Main.java")).unwrap().name, "java");
        assert!(reg.get("cobol").is_none());
        let only = Registry::load(None, &["python".into()]).unwrap();
        assert_eq!(only.all().len(), 1);
        assert!(matches!(
            Registry::load(None, &["cobol".into()]),
            Err(RegistryError::UnknownEnabled(_))
        ));
    }
}
