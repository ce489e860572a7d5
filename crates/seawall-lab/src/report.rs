//! Tables: plain text for the terminal, Markdown for `report.md`.

use std::fmt::Write as _;

use crate::recorder::{Figures, Recovery};
use crate::run::ScenarioResult;

const HEADERS: [&str; 12] = [
    "stack",
    "ok %",
    "fallback %",
    "p50",
    "p99",
    "p99.9",
    "attempts/req",
    "in fault",
    "peak conc",
    "recovery",
    "dup",
    "unfinished",
];

fn ms(v: Option<f64>) -> String {
    match v {
        None => "—".to_owned(),
        Some(v) if v >= 10_000.0 => format!("{:.0} s", v / 1000.0),
        Some(v) if v >= 1000.0 => format!("{:.2} s", v / 1000.0),
        Some(v) if v >= 100.0 => format!("{v:.0} ms"),
        Some(v) => format!("{v:.1} ms"),
    }
}

fn recovery(r: Recovery) -> String {
    match r {
        Recovery::After(s) => format!("{s:.1} s"),
        Recovery::Never => "never".to_owned(),
        Recovery::NoFault => "—".to_owned(),
    }
}

fn row(label: String, f: &Figures) -> Vec<String> {
    vec![
        label,
        format!("{:.1}", f.ok_pct),
        format!("{:.1}", f.degraded_pct),
        ms(f.p50_ms),
        ms(f.p99_ms),
        ms(f.p999_ms),
        format!("{:.2}", f.attempts_per_request),
        f.fault_attempts_per_request
            .map_or_else(|| "—".to_owned(), |v| format!("{v:.2}")),
        f.peak_concurrency.to_string(),
        recovery(f.recovery),
        f.duplicates.to_string(),
        f.unfinished.to_string(),
    ]
}

fn rows(result: &ScenarioResult) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for s in &result.stacks {
        if s.figures.by_route.is_empty() {
            out.push(row(s.stack.name().to_owned(), &s.figures.overall));
        } else {
            for f in &s.figures.by_route {
                let route = f.route.as_deref().unwrap_or("?");
                out.push(row(format!("{} · {route}", s.stack.name()), f));
            }
        }
    }
    out
}

fn heading(result: &ScenarioResult) -> String {
    let window = result.fault_window.map_or_else(String::new, |(a, b)| {
        format!(", fault window {a:.0}–{b:.0} s")
    });
    format!(
        "{} — {} (seed {}, {:.0} s{window})",
        result.scenario, result.description, result.seed, result.duration_s
    )
}

/// A plain-text table for the terminal.
pub fn text_table(result: &ScenarioResult) -> String {
    let rows = rows(result);
    let mut widths: Vec<usize> = HEADERS.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            let pad = w - c.chars().count();
            if i == 0 {
                let _ = write!(s, "{c}{}", " ".repeat(pad));
            } else {
                let _ = write!(s, "  {}{c}", " ".repeat(pad));
            }
        }
        s.trim_end().to_owned()
    };
    let mut out = String::new();
    let _ = writeln!(out, "{}", heading(result));
    let headers: Vec<String> = HEADERS.iter().map(|h| (*h).to_owned()).collect();
    let _ = writeln!(out, "{}", line(&headers));
    let total: usize = widths.iter().sum::<usize>() + 2 * (widths.len() - 1);
    let _ = writeln!(out, "{}", "─".repeat(total));
    for r in &rows {
        let _ = writeln!(out, "{}", line(r));
    }
    out
}

/// A Markdown table.
pub fn markdown_table(result: &ScenarioResult) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "| {} |", HEADERS.join(" | "));
    let _ = writeln!(
        out,
        "|{}",
        HEADERS
            .iter()
            .enumerate()
            .map(|(i, _)| if i == 0 { "---|" } else { "---:|" })
            .collect::<String>()
    );
    for r in rows(result) {
        let _ = writeln!(out, "| {} |", r.join(" | "));
    }
    out
}

/// The legend printed under the tables.
pub const LEGEND: &str = "\
ok %: answered by the dependency · fallback %: answered by a fallback · p50/p99/p99.9: latency \
of the dependency's answers · attempts/req: downstream attempts per request (whole run; \
'in fault': attempts started in the fault window per request arriving in it) · peak conc: \
most attempts in flight at once at the dependency · recovery: from the fault's end to the \
first 1 s window (by arrival, 100 ms steps) whose success rate is ≥ 95% of the pre-fault \
rate · dup: extra executions of a POST handler · unfinished: no answer when the run ended \
(counted as failed). In virtual time, tower-resilience 0.13's breaker never half-opens: it times \
its open state with std::time::Instant (wall clock); --real shows it in wall time.";

/// `report.md` for `--out`.
pub fn markdown_report(results: &[ScenarioResult], command: &str, charts: &[String]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# seawall-lab report\n");
    let _ = writeln!(out, "Reproduce with `{command}`.\n");
    let _ = writeln!(out, "{LEGEND}\n");
    for (i, r) in results.iter().enumerate() {
        let _ = writeln!(out, "## {}\n", r.scenario);
        let _ = writeln!(out, "{}\n", heading(r));
        let _ = writeln!(out, "{}", markdown_table(r));
        if let Some(chart) = charts.get(i) {
            let _ = writeln!(out, "![{}]({chart})\n", r.scenario);
        }
    }
    out
}
