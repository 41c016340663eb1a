//! Placeholders in language commands.
//!
//! Load time: `{var}` for each of the language's `[vars]`.
//! Run time: `{source}` (main file name), `{main}` (main class or name), `{memory_mb}` and
//! `{memory_bytes}` (the stage's memory limit), and two that stand alone as a whole argument
//! and expand to several: `{sources}` (every source file, main first) and `{args}` (the
//! program's arguments).

use std::collections::BTreeMap;

/// Replaces `{name}` for every `name` in `vars`.
pub(crate) fn substitute_vars(s: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = s.to_owned();
    for (k, v) in vars {
        out = out.replace(&format!("{{{k}}}"), v);
    }
    out
}

/// Whether `s` still mentions one of `names` as a placeholder.
pub(crate) fn unresolved<'a>(s: &str, mut names: impl Iterator<Item = &'a String>) -> bool {
    names.any(|n| s.contains(&format!("{{{n}}}")))
}

/// Run-time values of placeholders.
#[derive(Debug)]
pub(crate) struct Context<'a> {
    pub(crate) source: &'a str,
    pub(crate) sources: &'a [String],
    pub(crate) args: &'a [String],
    pub(crate) main: &'a str,
    pub(crate) memory_bytes: u64,
}

/// Expands a command for one stage.
pub(crate) fn expand(command: &[String], ctx: &Context<'_>) -> Vec<String> {
    let mut out = Vec::with_capacity(command.len() + ctx.args.len() + ctx.sources.len());
    for arg in command {
        match arg.as_str() {
            "{sources}" => out.extend(ctx.sources.iter().cloned()),
            "{args}" => out.extend(ctx.args.iter().cloned()),
            _ => out.push(
                arg.replace("{source}", ctx.source)
                    .replace("{main}", ctx.main)
                    .replace("{memory_bytes}", &ctx.memory_bytes.to_string())
                    .replace("{memory_mb}", &(ctx.memory_bytes >> 20).to_string()),
            ),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_inline_and_whole_argument_placeholders() {
        let sources = vec!["main.c".to_owned(), "util.c".to_owned()];
        let args = vec!["a b".to_owned(), "{source}".to_owned()];
        let ctx = Context {
            source: "main.c",
            sources: &sources,
            args: &args,
            main: "Main",
            memory_bytes: 256 << 20,
        };
        let cmd: Vec<String> = [
            "gcc",
            "{sources}",
            "-o",
            "{main}",
            "-Xmx{memory_mb}m",
            "{args}",
            "x{args}",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            expand(&cmd, &ctx),
            [
                "gcc", "main.c", "util.c", "-o", "Main", "-Xmx256m", "a b", "{source}", "x{args}"
            ]
        );
    }

    #[test]
    fn user_arguments_are_not_expanded() {
        // An argument that looks like a placeholder is passed through literally.
        let args = vec!["{main}".to_owned()];
        let ctx = Context {
            source: "s",
            sources: &[],
            args: &args,
            main: "M",
            memory_bytes: 0,
        };
        assert_eq!(expand(&["{args}".to_owned()], &ctx), ["{main}"]);
    }

    #[test]
    fn vars_substitute_and_report_leftovers() {
        let vars = BTreeMap::from([("home".to_owned(), "/opt/x".to_owned())]);
        assert_eq!(
            substitute_vars("{home}/bin/{home}", &vars),
            "/opt/x/bin//opt/x"
        );
        let names = ["home".to_owned(), "other".to_owned()];
        assert!(unresolved("{other}/x", names.iter()));
        assert!(!unresolved("/plain", names.iter()));
    }
}
