//! `seawall-lab`: runs failure scenarios through competing stacks.

use seawall_lab::{report, run, scenario::Scenario, stacks::StackKind};

fn main() {
    for s in Scenario::defaults() {
        let t = std::time::Instant::now();
        let r = run::run_scenario(&s, 1, &StackKind::ALL, |_| {}).unwrap();
        println!("{}", report::text_table(&r));
        eprintln!("{:?}", t.elapsed());
    }
}
