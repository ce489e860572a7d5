//! The binary: flags, output formats, and clear errors (never a panic) for
//! bad scenario files.

use std::path::PathBuf;
use std::process::{Command, Output};

fn lab(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_seawall-lab"))
        .args(args)
        .output()
        .expect("the binary runs")
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("seawall-lab-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

const SMALL: &str = r#"
name = "tiny"
description = "a short outage"
duration = "6s"
drain = "2s"
[arrivals]
rate = 20
[[upstream]]
name = "api"
capacity = 4
latency = { dist = "fixed", value = "10ms" }
[[upstream.fault]]
start = "2s"
end = "4s"
error_rate = 1.0
"#;

#[test]
fn list_names_the_default_scenarios() {
    let out = lab(&["--list"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for name in [
        "outage",
        "brownout",
        "overload",
        "retry-storm",
        "slow-dependency",
        "duplicate-posts",
        "slow-tail",
        "fleet-outage",
    ] {
        assert!(text.contains(name), "{name} missing from {text}");
    }
}

#[test]
fn a_user_file_runs_and_prints_a_table_per_scenario() {
    let dir = temp_dir("table");
    let file = dir.join("tiny.toml");
    std::fs::write(&file, SMALL).unwrap();
    let out = lab(&["--scenario-file", file.to_str().unwrap(), "--seed", "3"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("tiny — a short outage (seed 3"), "{text}");
    for stack in [
        "no resilience",
        "tower built-ins",
        "tower-resilience",
        "seawall",
    ] {
        assert!(text.contains(stack), "{stack} row missing: {text}");
    }
    // Progress goes to stderr only on a terminal.
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn json_and_out_dir() {
    let dir = temp_dir("out");
    std::fs::write(dir.join("tiny.toml"), SMALL).unwrap();
    let report = dir.join("report");
    let out = lab(&[
        "--scenarios",
        dir.to_str().unwrap(),
        "--scenario",
        "tiny",
        "--json",
        "--out",
        report.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json[0]["scenario"], "tiny");
    assert_eq!(json[0]["stacks"].as_array().unwrap().len(), 4);
    assert_eq!(json[0]["stacks"][3]["stack"], "seawall");
    let md = std::fs::read_to_string(report.join("report.md")).unwrap();
    assert!(md.contains("| seawall |"), "{md}");
    assert!(md.contains("![tiny](tiny.svg)"), "{md}");
    let svg = std::fs::read_to_string(report.join("tiny.svg")).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..40.min(svg.len())]);
    for text in [
        "seawall-lab: tiny",
        "time (s)",
        "per second",
        "latency (ms, log)",
        "seawall attempts",
    ] {
        assert!(svg.contains(text), "chart lacks {text:?}");
    }
}

#[test]
fn bad_input_is_a_clear_error_and_a_failure_exit() {
    let dir = temp_dir("bad");
    let cases = [
        (
            "typo.toml",
            SMALL.replace("capacity = 4", "capacty = 4"),
            "unknown field",
        ),
        (
            "rate.toml",
            SMALL.replace("rate = 20", "rate = 0"),
            "arrivals.rate",
        ),
        (
            "window.toml",
            SMALL.replace("end = \"4s\"", "end = \"1s\""),
            "must be before end",
        ),
        ("syntax.toml", "name = ".to_owned(), "invalid TOML"),
        (
            "huge.toml",
            SMALL.replace("rate = 20", "rate = 900000\n"),
            "keep it under",
        ),
    ];
    for (name, text, expected) in cases {
        let file = dir.join(name);
        std::fs::write(&file, text).unwrap();
        let out = lab(&["--scenario-file", file.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {err}");
        assert!(err.starts_with("seawall-lab: scenario "), "{name}: {err}");
        assert!(err.contains(expected), "{name}: {err}");
        assert!(!err.contains("panicked"), "{name}: {err}");
    }
    let out = lab(&["--scenario", "no-such-thing"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no scenario named \"no-such-thing\""));
    let out = lab(&["--scenario-file", "/nonexistent/x.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}
