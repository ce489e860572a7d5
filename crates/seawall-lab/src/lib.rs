//! The engine of `seawall-lab`: failure scenarios run through competing
//! resilience stacks in paused virtual time, and the figures that compare
//! them.
//!
//! A [`Scenario`](scenario::Scenario) (a TOML file) describes open-loop
//! arrivals, one or more simulated dependencies (workers, a queue, a
//! latency distribution) and their faults. [`run::run_scenario`] sends the
//! same arrivals (same seed) through each [`StackKind`](stacks::StackKind)
//! on a current-thread Tokio runtime whose clock is paused, so a minute of
//! traffic takes a fraction of a second, and returns the figures that
//! [`report`] prints and [`chart`] draws.
//!
//! ```
//! use seawall_lab::run::run_scenario;
//! use seawall_lab::scenario::Scenario;
//! use seawall_lab::stacks::StackKind;
//!
//! let scenario = Scenario::from_toml("doc", r#"
//!     name = "doc"
//!     duration = "5s"
//!     [arrivals]
//!     rate = 20
//!     [[upstream]]
//!     name = "api"
//!     capacity = 4
//!     latency = { dist = "fixed", value = "10ms" }
//!     [[upstream.fault]]
//!     start = "1s"
//!     end = "2s"
//!     error_rate = 1.0
//! "#).unwrap();
//! let result = run_scenario(&scenario, 1, &[StackKind::None], |_| {}).unwrap();
//! let figures = &result.stacks[0].figures.overall;
//! assert!(figures.ok_pct > 60.0 && figures.ok_pct < 95.0);
//! ```

pub mod chart;
pub mod dist;
pub mod fleet;
pub mod real;
pub mod recorder;
pub mod report;
pub mod run;
pub mod scenario;
pub mod stacks;
pub mod upstream;

/// The README, checked by rustdoc: its blocks are shell, text and TOML,
/// none of them Rust, so none may be mistaken for one.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
