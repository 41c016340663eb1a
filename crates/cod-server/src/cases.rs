//! Test cases: one program run once per input, each output compared with what was
//! expected, as a judge does.

use cod_core::{RunResult, Status};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One test case of a job.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    /// Standard input of this case.
    #[serde(default)]
    pub stdin: Option<String>,
    /// What stdout should be; compared ignoring trailing whitespace on each line and
    /// trailing empty lines (as Judge0 does).
    #[serde(default)]
    pub expected_output: Option<String>,
}

/// The outcome of comparing a case's output with the expected one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Comparison {
    /// The output is the expected one.
    Accepted,
    /// It is not.
    WrongAnswer,
}

/// One case's result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CaseResult {
    /// The run (the same fields as `POST /api/v1/run` answers).
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub result: RunResult,
    /// With an expected output and a run that ended `ok`: whether the output matched.
    pub comparison: Option<Comparison>,
}

/// The results of every case of a job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TestsResult {
    /// Cases compared `accepted`.
    pub accepted: usize,
    /// Cases in all.
    pub total: usize,
    /// Each case, in the order given.
    pub cases: Vec<CaseResult>,
}

/// Output as Judge0 compares it: trailing whitespace of each line and trailing empty lines
/// do not count.
pub fn normalize(output: &str) -> String {
    let lines: Vec<&str> = output.split('\n').map(str::trim_end).collect();
    lines.join("\n").trim_end().to_owned()
}

/// How `result` compares with `expected`, when there is something to compare.
pub fn compare(result: &RunResult, expected: Option<&str>) -> Option<Comparison> {
    let expected = expected?;
    (result.run.status == Status::Ok).then(|| {
        if normalize(&result.run.stdout) == normalize(expected) {
            Comparison::Accepted
        } else {
            Comparison::WrongAnswer
        }
    })
}

impl TestsResult {
    /// Pairs `cases` with their `results`.
    pub fn new(cases: &[TestCase], results: Vec<RunResult>) -> TestsResult {
        let cases: Vec<CaseResult> = cases
            .iter()
            .zip(results)
            .map(|(c, result)| CaseResult {
                comparison: compare(&result, c.expected_output.as_deref()),
                result,
            })
            .collect();
        TestsResult {
            accepted: cases
                .iter()
                .filter(|c| c.comparison == Some(Comparison::Accepted))
                .count(),
            total: cases.len(),
            cases,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(status: Status, stdout: &str) -> RunResult {
        RunResult {
            run: cod_core::StageReport {
                status,
                stdout: stdout.into(),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn comparison_ignores_trailing_whitespace_only() {
        assert_eq!(normalize("a  \nb\t\n\n\n"), "a\nb");
        let ok = result(Status::Ok, "42 \n");
        assert_eq!(compare(&ok, Some("42")), Some(Comparison::Accepted));
        assert_eq!(compare(&ok, Some(" 42")), Some(Comparison::WrongAnswer));
        assert_eq!(compare(&ok, None), None);
        let re = result(Status::RuntimeError, "42\n");
        assert_eq!(compare(&re, Some("42")), None);
        let cases = [
            TestCase {
                stdin: None,
                expected_output: Some("42".into()),
            },
            TestCase::default(),
        ];
        let t = TestsResult::new(&cases, vec![ok.clone(), ok]);
        assert_eq!((t.accepted, t.total), (1, 2));
        assert_eq!(t.cases[1].comparison, None);
    }
}
