//! `seawall-lab`: runs failure scenarios through competing resilience stacks
//! in paused virtual time and prints one table per scenario.
//!
//! Run with: `cargo run --release -p seawall-lab` (see `--help`).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use seawall_lab::fleet::{self, run_fleet};
use seawall_lab::real::run_real;
use seawall_lab::run::{run_scenario, ScenarioResult};
use seawall_lab::scenario::Scenario;
use seawall_lab::{chart, report};

/// Runs failure scenarios (outage, brownout, overload, retry storm, slow
/// dependency, duplicate POSTs, slow tail) through four client stacks — no
/// resilience, tower's built-ins, tower-resilience, seawall — plus seawall's
/// hedged stack and client preset where a scenario asks, with the same
/// arrivals, in virtual time, and compares them.
#[derive(Debug, Parser)]
#[command(name = "seawall-lab", version)]
struct Args {
    /// Scenarios to run (repeatable or comma-separated); default: all.
    #[arg(long = "scenario", value_delimiter = ',')]
    scenarios: Vec<String>,
    /// Seed of the arrivals and faults.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the results as JSON instead of tables.
    #[arg(long)]
    json: bool,
    /// Write report.md and one SVG chart per scenario to this directory.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// List the scenarios and exit.
    #[arg(long)]
    list: bool,
    /// Load a scenario from a TOML file (repeatable) instead of the defaults.
    #[arg(long = "scenario-file", value_name = "PATH")]
    scenario_files: Vec<PathBuf>,
    /// Load every *.toml scenario of a directory instead of the defaults.
    #[arg(long = "scenarios", value_name = "DIR")]
    scenario_dir: Option<PathBuf>,
    /// Run over real loopback HTTP (an axum upstream, a hyper-util client)
    /// in wall time, each scenario compressed to --real-seconds.
    #[arg(long)]
    real: bool,
    /// With --real: seconds of arrivals per scenario and stack.
    #[arg(long, default_value_t = 6.0, value_name = "SECONDS")]
    real_seconds: f64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("seawall-lab: {e}");
            ExitCode::FAILURE
        }
    }
}

fn load(args: &Args) -> Result<Vec<Scenario>, String> {
    let mut all = Vec::new();
    if let Some(dir) = &args.scenario_dir {
        all.extend(Scenario::from_dir(dir).map_err(|e| e.to_string())?);
    }
    for path in &args.scenario_files {
        all.push(Scenario::from_file(path).map_err(|e| e.to_string())?);
    }
    if all.is_empty() {
        all = Scenario::defaults();
    }
    if args.scenarios.is_empty() {
        return Ok(all);
    }
    let mut chosen = Vec::new();
    for name in &args.scenarios {
        let found = all.iter().find(|s| &s.name == name).ok_or_else(|| {
            let names: Vec<&str> = all.iter().map(|s| s.name.as_str()).collect();
            format!("no scenario named {name:?} (have: {})", names.join(", "))
        })?;
        chosen.push(found.clone());
    }
    Ok(chosen)
}

fn run(args: &Args) -> Result<(), String> {
    let scenarios = load(args)?;
    if args.list {
        for s in &scenarios {
            println!("{:<18} {}", s.name, s.description);
        }
        return Ok(());
    }
    let bar = ProgressBar::new(scenarios.iter().map(|s| s.stacks().len()).sum::<usize>() as u64);
    if std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
                .map_err(|e| e.to_string())?,
        );
    } else {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    if !(args.real_seconds >= 1.0 && args.real_seconds <= 600.0) {
        return Err("--real-seconds must be between 1 and 600".to_owned());
    }
    let real_seconds = Duration::from_secs_f64(args.real_seconds);
    let mut results: Vec<ScenarioResult> = Vec::new();
    for s in &scenarios {
        bar.set_message(s.name.clone());
        let result = if s.client.fleet.is_some() {
            // Real Redis, so wall time: skipped when Redis is absent.
            let url = fleet::redis_url();
            if let Err(why) = fleet::redis_reachable(&url) {
                eprintln!("seawall-lab: skipping {}: {why}", s.name);
                bar.inc(s.stacks().len() as u64);
                continue;
            }
            run_fleet(s, args.seed, real_seconds, &url, |_| bar.inc(1))
        } else if args.real {
            run_real(s, args.seed, &s.stacks(), real_seconds, |_| bar.inc(1))
        } else {
            run_scenario(s, args.seed, &s.stacks(), |_| bar.inc(1))
        }
        .map_err(|e| format!("scenario {}: {e}", s.name))?;
        results.push(result);
    }
    bar.finish_and_clear();

    if args.json {
        let text = serde_json::to_string_pretty(&results).map_err(|e| e.to_string())?;
        println!("{text}");
    } else {
        for r in &results {
            println!("{}", report::text_table(r));
        }
        println!("{}", report::LEGEND);
    }
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut charts = Vec::new();
        for r in &results {
            let file = format!(
                "{}.svg",
                r.scenario.replace(' ', "-").replace(['(', ')'], "")
            );
            let svg = chart::render(r).map_err(|e| format!("chart {}: {e}", r.scenario))?;
            let path = dir.join(&file);
            std::fs::write(&path, svg).map_err(|e| format!("{}: {e}", path.display()))?;
            charts.push(file);
        }
        let command = std::env::args().collect::<Vec<_>>().join(" ");
        let md = report::markdown_report(&results, &command, &charts);
        let path = dir.join("report.md");
        std::fs::write(&path, md).map_err(|e| format!("{}: {e}", path.display()))?;
        eprintln!("wrote {} and {} charts", path.display(), charts.len());
    }
    Ok(())
}
