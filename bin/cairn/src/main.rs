//! `cairn`: the server (`cairn serve`), a demo that ingests a directory through the Files Job engine and reads it
//! back byte-exact, an ingest benchmark that reports peak memory, and a crash-test child.
//! The client commands come with the next issue.

mod crash_child;
mod demo;
mod ingest;
mod serve;

use anyhow::{bail, Context, Result};

const USAGE: &str = "usage:
  cairn serve [--data DIR] [--listen HOST:PORT] [--config FILE]
                                         serve the Files API (default ./cairn-data, 127.0.0.1:8008)
  cairn demo <DIR> [--data DATA_DIR]     ingest DIR as a new version, read every file back, compare
  cairn ingest-bench [--size BYTES] [--data DATA_DIR] [--parallel N]
                                         ingest a synthetic stream; print throughput and peak RSS
  cairn crash-child <DATA_DIR> <ABORT_AFTER_BYTES>   (test helper: uploads, then aborts)";

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if args.iter().skip(1).any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return Ok(());
    }
    match args.first().map(String::as_str) {
        Some("serve") => rt.block_on(serve::run(&args[1..])),
        Some("demo") => rt.block_on(demo::run(&args[1..])),
        Some("ingest-bench") => rt.block_on(ingest::run(&args[1..])),
        Some("crash-child") => rt.block_on(crash_child::run(&args[1..])),
        Some("-h" | "--help" | "help") | None => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => {
            eprintln!("{USAGE}");
            bail!("unknown command {other:?}")
        }
    }
}

/// Refuses anything in `args` but `--flag VALUE` pairs of the given flags (a typo must not start
/// a server on the default data dir).
pub(crate) fn only_flags(args: &[String], allowed: &[&str]) -> Result<()> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if !allowed.contains(&a.as_str()) {
            bail!("unexpected argument {a:?}\n{USAGE}");
        }
        if it.next().is_none() {
            bail!("{a} needs a value");
        }
    }
    Ok(())
}

/// Value of `--name VALUE` in `args`, if present.
pub(crate) fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.windows(2)
        .find(|w| w[0] == name)
        .map(|w| w[1].as_str())
}

/// Parses sizes like `4GiB`, `512MiB`, `100k`, `12345`.
pub(crate) fn parse_size(s: &str) -> Result<u64> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: u64 = s[..digits]
        .parse()
        .with_context(|| format!("bad size {s:?}"))?;
    let mult = match s[digits..].to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        other => bail!("bad size unit {other:?}"),
    };
    n.checked_mul(mult).context("size overflows")
}

/// Peak resident set size of this process, in KiB (Linux `VmHWM`).
pub(crate) fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}
