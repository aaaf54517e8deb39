//! `sim`: Keybrake's deterministic simulator. See `sim/README.md`.
//!
//!     sim --seed N [--drop j1,f2] [--history]     one run, replayed exactly
//!     sim --seeds A..B [--threads T]              many runs; the first failure is shrunk and printed
//!     sim --regressions sim/regressions.txt       the seeds that once found a bug (combines with --seeds)
//!
//! Exit status 0 when every invariant held in every run, 1 when one did not, 2 on a usage error.

#![forbid(unsafe_code)]
// A test tool: its output is its interface.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod check;
mod client;
mod control;
mod gateway;
mod plan;
mod rng;
mod run;
mod world;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Instant;

use plan::Dropped;
use run::{Runner, Summary};

struct Args {
    seeds: Vec<u64>,
    single: bool,
    threads: usize,
    dropped: Dropped,
    history: bool,
    shrink: bool,
}

fn usage(message: &str) -> ExitCode {
    eprintln!("sim: {message}");
    eprintln!("usage: sim --seed N [--drop j1,f2] [--history] | --seeds A..B [--threads T] | --regressions FILE");
    ExitCode::from(2)
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        seeds: Vec::new(),
        single: false,
        threads: 1,
        dropped: Dropped::default(),
        history: false,
        shrink: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--seed" => {
                a.seeds = vec![value()?.parse().map_err(|_| "--seed takes a number".to_owned())?];
                a.single = true;
            }
            "--seeds" => {
                let text = value()?;
                let (lo, hi) = match text.split_once("..") {
                    Some((lo, hi)) => (lo.parse::<u64>(), hi.parse::<u64>()),
                    None => (Ok(0), text.parse::<u64>()),
                };
                match (lo, hi) {
                    (Ok(lo), Ok(hi)) if lo < hi => a.seeds.extend(lo..hi),
                    _ => return Err("--seeds takes A..B (A < B) or a count".into()),
                }
            }
            "--regressions" => {
                let path = value()?;
                let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
                for line in text.lines() {
                    let line = line.split('#').next().unwrap_or_default().trim();
                    if !line.is_empty() {
                        a.seeds.push(line.parse().map_err(|_| format!("{path}: {line:?} is not a seed"))?);
                    }
                }
            }
            "--threads" => a.threads = value()?.parse().map_err(|_| "--threads takes a number".to_owned())?,
            "--drop" => a.dropped = Dropped::parse(&value()?)?,
            "--history" => a.history = true,
            "--no-shrink" => a.shrink = false,
            "-h" | "--help" => return Err("help".into()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if a.seeds.is_empty() {
        return Err("give --seed, --seeds or --regressions".into());
    }
    let mut seen = std::collections::BTreeSet::new();
    a.seeds.retain(|s| seen.insert(*s));
    Ok(a)
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => return usage(&e),
    };
    run::install_panic_hook();
    if args.single {
        return single(&args);
    }
    batch(&args)
}

fn single(args: &Args) -> ExitCode {
    let seed = args.seeds[0];
    let mut runner = match Runner::new() {
        Ok(r) => r,
        Err(e) => return usage(&e),
    };
    let plan = plan::Plan::from_seed(seed).without(&args.dropped);
    print!("{}", plan.describe());
    let started = Instant::now();
    let out = runner.run(&plan, true);
    let took = started.elapsed();
    if args.history {
        println!("history:");
        for line in &out.lines {
            println!("  {line}");
        }
    }
    println!(
        "{} events, {} client calls, {} upstream requests, {} gRPC calls, {} store operations, {:.1} s simulated, faults {:?}; {:.1} ms; history digest {}",
        out.stats.events,
        out.stats.attempts,
        out.stats.upstream_requests,
        out.stats.rpcs,
        out.stats.store_ops,
        out.stats.simulated_us as f64 / 1e6,
        out.stats.faults,
        took.as_secs_f64() * 1000.0,
        out.digest
    );
    println!("observed: {:?}", out.observed);
    if out.violations.is_empty() {
        println!("no violation");
        return ExitCode::SUCCESS;
    }
    report(&mut runner, seed, &args.dropped, args.shrink);
    ExitCode::from(1)
}

/// Shrinks a failing seed and prints the shortest history that shows its first violation.
fn report(runner: &mut Runner, seed: u64, dropped: &Dropped, shrink: bool) {
    let (dropped, out) = if shrink { runner.shrink(seed, dropped) } else { runner.replay(seed, dropped) };
    let Some(first) = out.violations.first() else {
        println!("seed {seed}: the violation did not reproduce (a panic on another thread?)");
        return;
    };
    println!("\nVIOLATION {} (seed {seed}): {}", first.kind, first.text);
    let plan = plan::Plan::from_seed(seed).without(&dropped);
    println!("shrunk to:\n{}", plan.describe());
    println!(
        "replay: sim --seed {seed}{}",
        if dropped.is_empty() { String::new() } else { format!(" --drop {dropped}") }
    );
    println!("the history that shows it:");
    for line in &out.relevant {
        println!("  {line}");
    }
    for other in out.violations.iter().skip(1).take(5) {
        println!("also: {} {}", other.kind, other.text);
    }
}

fn batch(args: &Args) -> ExitCode {
    let started = Instant::now();
    let total = match run::batch(&args.seeds, args.threads.max(1), &args.dropped) {
        Ok(t) => t,
        Err(e) => return usage(&e),
    };
    let took = started.elapsed().as_secs_f64();
    print_summary(&total, took);
    if total.failed.is_empty() {
        return ExitCode::SUCCESS;
    }
    let mut runner = match Runner::new() {
        Ok(r) => r,
        Err(e) => return usage(&e),
    };
    if let Some((seed, _)) = total.failed.first() {
        report(&mut runner, *seed, &args.dropped, args.shrink);
    }
    ExitCode::from(1)
}

fn print_summary(s: &Summary, took: f64) {
    let faults: u64 = s.faults.values().sum();
    println!(
        "{} seeds in {:.1} s ({:.0} seeds/s): {} simulated client calls ({:.0}/s), {} upstream requests, {} gRPC calls, {} store operations, {} events, {:.0} s simulated",
        s.seeds,
        took,
        s.seeds as f64 / took.max(1e-9),
        s.attempts,
        s.attempts as f64 / took.max(1e-9),
        s.upstream_requests,
        s.rpcs,
        s.store_ops,
        s.events,
        s.simulated_us as f64 / 1e6
    );
    println!("reads decided from a worker's key cache: {}", s.cached_reads);
    println!("faults injected: {faults} {:?}", s.faults);
    let o = &s.observed;
    println!("observed, and allowed by the guarantees as stated (SECURITY.md, \"Deterministic simulation\"):");
    println!(
        "  {} retries of uncertain calls sent under the same upstream key and executed again by the upstream that does not deduplicate",
        o.same_key_repeats
    );
    println!(
        "  {} calls allowed before their key's revocation was acknowledged and forwarded after it",
        o.forwarded_after_ack
    );
    println!(
        "  {} charges authorized before UTC midnight and executed after it; {} keys over their cap counted by day of execution",
        o.across_midnight, o.over_cap_by_execution_day
    );
    println!("  {} successful reads whose audit record was lost with their worker or a lost commit", o.reads_unaudited);
    let mut kinds: BTreeMap<&str, u64> = BTreeMap::new();
    for (_, k) in &s.failed {
        *kinds.entry(k.as_str()).or_default() += 1;
    }
    println!("violations: {} seeds {:?}", s.failed.len(), kinds);
    for (seed, kind) in s.failed.iter().take(20) {
        println!("  seed {seed}: {kind}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_replays_exactly() {
        let mut runner = Runner::new().unwrap();
        for seed in [7, 11] {
            let plan = plan::Plan::from_seed(seed);
            let a = runner.run(&plan, true);
            let b = runner.run(&plan, true);
            assert_eq!(a.digest, b.digest, "seed {seed}");
            assert_eq!(a.lines, b.lines, "seed {seed}");
            assert!(a.stats.attempts > 0 || plan.jobs.is_empty());
        }
    }

    #[test]
    fn the_seeds_that_found_bugs_keep_every_invariant() {
        let text = include_str!("../regressions.txt");
        let seeds: Vec<u64> =
            text.lines().filter_map(|l| l.split('#').next()).filter_map(|l| l.trim().parse().ok()).collect();
        assert!(seeds.len() >= 5);
        let mut runner = Runner::new().unwrap();
        for seed in seeds {
            let out = runner.run(&plan::Plan::from_seed(seed), false);
            assert!(out.violations.is_empty(), "seed {seed}: {:?}", out.violations.first());
        }
    }
}
