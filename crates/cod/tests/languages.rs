//! Correct programs in every language: standard input, arguments, the standard library,
//! several files, exit codes and stderr — through the API with the real sandbox.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;

use common::*;
use serde_json::{Value, json};

/// Runs one program and checks status, exit code, stdout and (a part of) stderr.
async fn check(
    st: &cod_server::AppState,
    lang: &str,
    source: &str,
    extra: Value,
    stdout: &str,
    code: i64,
    stderr_has: &str,
) {
    let v = run(st, lang, source, extra).await;
    let want_status = if code == 0 { "ok" } else { "runtime_error" };
    assert_eq!(v["status"], want_status, "{lang}: {v:#}");
    assert_eq!(v["exit_code"], code, "{lang}: {v:#}");
    assert_eq!(v["stdout"], stdout, "{lang}: {v:#}");
    assert!(
        v["stderr"].as_str().unwrap().contains(stderr_has),
        "{lang}: stderr {:?} lacks {stderr_has:?}",
        v["stderr"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn python() {
    let st = state();
    check(&st, "python", "import sys\nname = input()\nprint('hi', name, sys.argv[1:])\nprint('warn', file=sys.stderr)\nsys.exit(3)",
        json!({"stdin": "ada\n", "args": ["x", "y z"]}), "hi ada ['x', 'y z']\n", 3, "warn").await;
    check(&st, "py", "import json, collections, math, re, itertools\nc = collections.Counter('abca')\nprint(json.dumps(c.most_common(1)), math.comb(5, 2), re.sub(r'\\d', '#', 'a1b2'))",
        json!({}), "[[\"a\", 2]] 10 a#b#\n", 0, "").await;
    check(
        &st,
        "python",
        "from helper import twice\nprint(twice(21))",
        json!({"files": [{"name": "helper.py", "content": "def twice(x):\n    return 2 * x\n"}]}),
        "42\n",
        0,
        "",
    )
    .await;
    let v = run(&st, "python", "raise ValueError('boom')", json!({})).await;
    assert_eq!(v["status"], "runtime_error");
    assert!(
        v["stderr"].as_str().unwrap().contains("ValueError: boom"),
        "{v}"
    );
    // Unicode in and out.
    check(
        &st,
        "python",
        "print(input()[::-1])",
        json!({"stdin": "héllo→🙂"}),
        "🙂→olléh\n",
        0,
        "",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn c() {
    let st = state();
    check(&st, "c", "#include <stdio.h>\n#include <math.h>\n#include \"util.h\"\nint main(int argc, char **argv) {\n  int n; scanf(\"%d\", &n);\n  printf(\"%d %s %.3f\\n\", twice(n), argv[1], sqrt(2.0));\n  fprintf(stderr, \"note\\n\");\n  return argc;\n}",
        json!({"stdin": "21", "args": ["arg"], "files": [
            {"name": "util.h", "content": "int twice(int);\n"},
            {"name": "util.c", "content": "#include \"util.h\"\nint twice(int x) { return 2 * x; }\n"}]}),
        "42 arg 1.414\n", 2, "note").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cpp() {
    let st = state();
    check(&st, "c++", "#include <bits/stdc++.h>\nusing namespace std;\nint main(int argc, char** argv) {\n  vector<int> v; int x; while (cin >> x) v.push_back(x);\n  sort(v.begin(), v.end());\n  map<string,int> m{{\"k\", 1}};\n  auto [lo, hi] = minmax_element(v.begin(), v.end());\n  cout << *lo << ' ' << *hi << ' ' << m[\"k\"] << ' ' << argv[1] << '\\n';\n  cerr << \"err\\n\";\n  return 0;\n}",
        json!({"stdin": "5 3 9 1", "args": ["z"]}), "1 9 1 z\n", 0, "err").await;
    // C++20 is available.
    check(&st, "cpp", "#include <iostream>\n#include <ranges>\n#include <vector>\nint main(){ std::vector<int> v{1,2,3,4}; for (int x : v | std::views::filter([](int i){return i%2==0;})) std::cout << x; std::cout << '\\n'; return 7; }",
        json!({}), "24\n", 7, "").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rust() {
    let st = state();
    check(&st, "rust", "mod util;\nuse std::collections::HashMap;\nuse std::io::Read;\nfn main() {\n    let mut s = String::new();\n    std::io::stdin().read_to_string(&mut s).unwrap();\n    let mut m = HashMap::new();\n    for w in s.split_whitespace() { *m.entry(w).or_insert(0) += 1; }\n    let args: Vec<String> = std::env::args().skip(1).collect();\n    println!(\"{} {} {:?}\", m[\"a\"], util::twice(21), args);\n    eprintln!(\"to stderr\");\n    std::process::exit(5);\n}",
        json!({"stdin": "a b a", "args": ["q"], "files": [{"name": "util.rs", "content": "pub fn twice(x: i32) -> i32 { x * 2 }\n"}]}),
        "2 42 [\"q\"]\n", 5, "to stderr").await;
    let v = run(
        &st,
        "rust",
        "fn main() { let v: Vec<i32> = vec![]; println!(\"{}\", v[3]); }",
        json!({}),
    )
    .await;
    assert_eq!(v["status"], "runtime_error", "{v}");
    assert_eq!(v["exit_code"], 101);
    assert!(
        v["stderr"]
            .as_str()
            .unwrap()
            .contains("index out of bounds")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn javascript() {
    let st = state();
    check(&st, "js", "const { twice } = require('./util.js');\nconst input = require('fs').readFileSync(0, 'utf8').trim();\nconsole.log(twice(Number(input)), process.argv.slice(2).join(','), [3,1,2].sort().join(''));\nconsole.error('e');\nprocess.exitCode = 9;",
        json!({"stdin": "21\n", "args": ["a", "b"], "files": [{"name": "util.js", "content": "exports.twice = (x) => 2 * x;\n"}]}),
        "42 a,b 123\n", 9, "e").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn java() {
    let st = state();
    check(&st, "java", "import java.util.*;\npublic class Solution {\n  public static void main(String[] args) {\n    Scanner in = new Scanner(System.in);\n    int n = in.nextInt();\n    List<Integer> l = new ArrayList<>(List.of(3, 1, 2));\n    Collections.sort(l);\n    System.out.println(Util.twice(n) + \" \" + l + \" \" + args[0]);\n    System.err.println(\"warn\");\n    System.exit(4);\n  }\n}",
        json!({"stdin": "21", "args": ["x"], "files": [{"name": "Util.java", "content": "public class Util { static int twice(int x) { return 2 * x; } }\n"}]}),
        "42 [1, 2, 3] x\n", 4, "warn").await;
    let v = run(&st, "java", "public class Main { public static void main(String[] a) { throw new IllegalStateException(\"nope\"); } }", json!({})).await;
    assert_eq!(v["status"], "runtime_error", "{v}");
    assert!(
        v["stderr"]
            .as_str()
            .unwrap()
            .contains("IllegalStateException"),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bash() {
    let st = state();
    check(&st, "bash", "read -r name\necho \"hi $name $1 $(id -u) $HOME $PWD\"\necho oops >&2\nsource ./lib.sh\ngreet\nexit 6",
        json!({"stdin": "bo\n", "args": ["one"], "files": [{"name": "lib.sh", "content": "greet() { echo greeted; }\n"}]}),
        "hi bo one 1000 /box /box\ngreeted\n", 6, "oops").await;
}

/// Every available language's own hello-world program prints "Hello, world!".
#[tokio::test(flavor = "multi_thread")]
async fn every_hello_world() {
    let st = state();
    for lang in registry().all() {
        if !lang.available() {
            continue;
        }
        let v = run(&st, &lang.name, &lang.hello, json!({})).await;
        assert_eq!(v["status"], "ok", "{}: {v:#}", lang.name);
        assert_eq!(v["stdout"], "Hello, world!\n", "{}", lang.name);
    }
}
