//! `cairn`: the server (`cairn serve`), the user commands that drive it over HTTP (`lib`,
//! `object`, `upload`, `ls`, `get`, `cat`, `versions`, `finalize`), and a few tools (`demo`,
//! `ingest-bench`). Errors are reported on stderr; the exit code says what kind (see
//! [`exit_code`]); `--json` prints machine-readable results on stdout.

mod cli;
mod crash_child;
mod demo;
mod ingest;
mod ops;
mod serve;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

const EXAMPLES: &str = "Examples:
  cairn serve                                   # embedded store in ./cairn-data, 127.0.0.1:8008
  export CAIRN_TOKEN=…                          # the token printed by the first `cairn serve`
  cairn lib create media                        # → ilib…
  cairn object create ilib…                     # → iq__… (with an open draft)
  cairn upload iq__… ./masters --parallel 8     # plan, upload in parallel, finalize → hq__…
  cairn ls iq__…:/masters                       # list a directory of the head version
  cairn get hq__…:masters/film.mov -o film.mov  # download (resumes a partial film.mov)
  cairn get iq__…:masters/film.mov --range 0-1048575 -o head.bin

Exit codes: 0 ok, 1 failure, 2 usage, 3 not found, 4 conflict (state forbids it), 5 server unreachable,
6 partial upload (names the server cannot store were skipped).";

#[derive(Parser)]
#[command(name = "cairn", version, about = "Cairn: a content-addressed object store with resumable Files Jobs", after_help = EXAMPLES)]
struct Cli {
    /// Server URL [default: from the config file, else http://127.0.0.1:8008].
    #[arg(long, env = "CAIRN_SERVER", global = true)]
    server: Option<String>,
    /// API token [default: from the config file].
    #[arg(long, env = "CAIRN_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// PEM file of CA certificates to trust for an https:// server, beside the system's
    /// [default: from the config file].
    // A string, not a path: an empty `CAIRN_CACERT=` must mean "not set", which a path
    // argument refuses as a missing value (so does `cli_config`).
    #[arg(long, env = "CAIRN_CACERT", global = true)]
    cacert: Option<String>,
    /// Client config file (TOML with `server`, `token` and `cacert`)
    /// [default: $XDG_CONFIG_HOME/cairn/config.toml or ~/.config/cairn/config.toml].
    #[arg(long, env = "CAIRN_CLI_CONFIG", global = true)]
    cli_config: Option<String>,
    /// Print results as JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the Files API on the embedded store.
    Serve {
        /// Data directory (default ./cairn-data).
        #[arg(long)]
        data: Option<String>,
        /// Address to listen on (default 127.0.0.1:8008).
        #[arg(long)]
        listen: Option<String>,
        /// TOML config file.
        #[arg(long)]
        config: Option<String>,
    },
    /// Libraries.
    #[command(subcommand)]
    Lib(cli::LibCmd),
    /// Library tokens: access confined to one library, optionally read-only.
    #[command(
        subcommand,
        after_help = "Examples:\n  cairn token create ilib…              # prints a token for that library only\n  cairn token create ilib… --read-only  # GET and HEAD only\n  cairn token rm ilib… tok_…"
    )]
    Token(cli::TokenCmd),
    /// Content objects.
    #[command(subcommand)]
    Object(cli::ObjectCmd),
    /// Upload files and directories into an object as a new version.
    #[command(
        after_help = "Examples:\n  cairn upload iq__… ./masters --parallel 8 --message \"cut 2\"\n  cairn upload iq__… a.mov b.mov --dest incoming --no-finalize   # prints the write token\n\nRun the same command again after Ctrl-C or kill -9: it continues the same draft and sends only\nwhat the server lacks. Files the library already holds (same blake3 and size) are not sent."
    )]
    Upload(cli::UploadArgs),
    /// List files: `<object|version|write-token>[:/dir]`.
    #[command(
        after_help = "Examples:\n  cairn ls iq__…              # the head version, everything\n  cairn ls hq__…:/masters     # one directory of one version\n  cairn ls iq__… --json"
    )]
    Ls { target: String },
    /// Download a file: `<object|version>:<path>`.
    #[command(
        after_help = "Examples:\n  cairn get hq__…:masters/film.mov -o film.mov     # resumes a shorter film.mov; checks blake3\n  cairn get iq__…:masters/film.mov --range 0-1023 > head.bin"
    )]
    Get(cli::GetArgs),
    /// Print a file to stdout: `<object|version>:<path>`.
    Cat { target: String },
    /// An object's versions, newest first.
    Versions {
        #[arg(value_parser = clap::builder::NonEmptyStringValueParser::new())]
        object: String,
    },
    /// Finalize a draft into a version, only if no version was published since the draft was
    /// opened (exit 4 otherwise); `--force` publishes it whatever the newest version is.
    Finalize {
        #[arg(value_parser = clap::builder::NonEmptyStringValueParser::new())]
        write_token: String,
        /// Publish even if the object has a newer version than the draft was opened from; the
        /// draft's tree then replaces that version's files in the new head.
        #[arg(long)]
        force: bool,
        /// Where `upload` keeps its resume records: a record of this draft is removed.
        #[arg(long, env = "CAIRN_STATE_DIR")]
        state_dir: Option<String>,
    },
    /// Paths added, removed and changed between two versions (or objects' heads).
    Diff {
        #[arg(value_parser = clap::builder::NonEmptyStringValueParser::new())]
        a: String,
        #[arg(value_parser = clap::builder::NonEmptyStringValueParser::new())]
        b: String,
    },
    /// A draft's files jobs and upload jobs, with progress.
    Jobs {
        #[arg(value_parser = clap::builder::NonEmptyStringValueParser::new())]
        write_token: String,
    },
    /// Force completion: keep whole files, drop incomplete ones, seal parts.
    #[command(name = "force-complete")]
    ForceComplete {
        #[arg(value_parser = clap::builder::NonEmptyStringValueParser::new())]
        write_token: String,
        #[arg(value_parser = clap::builder::NonEmptyStringValueParser::new())]
        files_job: Option<String>,
    },
    /// Check every chunk, part, refcount and tree; names damaged files. Exit 1 on damage.
    #[command(
        after_help = "Examples:\n  cairn fsck                        # ask the running server\n  cairn fsck --data ./cairn-data    # the server must be stopped (exit 4 otherwise)\n  cairn fsck --data ./cairn-data --repair"
    )]
    Fsck {
        /// Check this data dir directly (the server must be stopped); else ask the server.
        #[arg(long)]
        data: Option<std::path::PathBuf>,
        /// Also correct refcounts that disagree with the references found.
        #[arg(long)]
        repair: bool,
        /// With --data: the server's TOML config file, whose store settings (free-space
        /// reserve, pack size, pack writes, allow_missing_packs) apply, as do CAIRN_* variables.
        #[arg(long, requires = "data")]
        config: Option<std::path::PathBuf>,
    },
    /// Delete unreferenced data and repack mostly-dead packs.
    #[command(
        after_help = "Examples:\n  cairn gc --dry-run\n  cairn object rm iq__… && cairn gc && cairn stats"
    )]
    Gc {
        /// Collect in this data dir directly (the server must be stopped); else ask the server.
        #[arg(long)]
        data: Option<std::path::PathBuf>,
        /// Report what would be freed, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// With --data: the server's TOML config file, whose store settings (free-space
        /// reserve, pack size, pack writes, allow_missing_packs) apply, as do CAIRN_* variables.
        #[arg(long, requires = "data")]
        config: Option<std::path::PathBuf>,
    },
    /// Logical and stored bytes, dedup ratio, packs, live ratio.
    Stats {
        /// Read this data dir directly (the server must be stopped); else ask the server.
        #[arg(long)]
        data: Option<std::path::PathBuf>,
        /// With --data: the server's TOML config file, whose store settings (free-space
        /// reserve, pack size, pack writes, allow_missing_packs) apply, as do CAIRN_* variables.
        #[arg(long, requires = "data")]
        config: Option<std::path::PathBuf>,
    },
    /// Print a shell completion script (bash, zsh, fish, …).
    Completions { shell: clap_complete::Shell },
    /// Ingest a directory through the engine in-process and read it back (no server).
    #[command(hide = true)]
    Demo {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Ingest a synthetic stream in-process; print throughput and peak RSS.
    #[command(hide = true, name = "ingest-bench")]
    IngestBench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Test helper for tests/crash.rs.
    #[command(hide = true, name = "crash-child")]
    CrashChild {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

// jemalloc gives freed memory back to the system within seconds; glibc's allocator kept most of
// what a large request took for the life of the process (docs/build.md, tests/memory.rs).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The log's writer: stderr, where a failed write is dropped. tracing-subscriber reports a failed
/// write with `eprintln!`, which panics when stderr itself fails, in whatever request was
/// logging: with the log's disk full, or its reader gone, every request was dropped unanswered
/// (QA). A log line is not worth a request.
struct LogSink;

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(std::io::stderr().write(buf).unwrap_or(buf.len()))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// The data dir of an offline `fsck`, `gc` or `stats`, with the server config it is read with.
fn offline_dir(
    data: Option<std::path::PathBuf>,
    config: Option<std::path::PathBuf>,
) -> Option<ops::Offline> {
    data.map(|data| ops::Offline { data, config })
}

fn main() {
    let cli = Cli::parse();
    // The server logs a line per request by default; the client commands only what went wrong.
    let default_level = match cli.cmd {
        Cmd::Serve { .. } => "info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG")
                .unwrap_or_else(|_| default_level.into()),
        )
        .with_writer(|| LogSink)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(run(cli)) {
        if broken_pipe(&e) {
            // The reader of our output went away (`cairn cat … | head`): nothing to report.
            std::process::exit(0);
        }
        // Not `eprintln!`, which panics (exit 101) when stderr fails.
        let _ = std::io::Write::write_fmt(&mut std::io::stderr(), format_args!("cairn: {e:#}\n"));
        std::process::exit(exit_code(&e));
    }
}

async fn run(cli: Cli) -> Result<()> {
    // Only commands that talk to a server read the client config and the CA file: an
    // unreadable or missing one must not stop `serve` (run as a service user that cannot read
    // the inherited home: QA), `completions` or an offline `fsck --data`.
    let offline = matches!(
        cli.cmd,
        Cmd::Serve { .. }
            | Cmd::Completions { .. }
            | Cmd::Demo { .. }
            | Cmd::IngestBench { .. }
            | Cmd::CrashChild { .. }
            | Cmd::Fsck { data: Some(_), .. }
            | Cmd::Gc { data: Some(_), .. }
            | Cmd::Stats { data: Some(_), .. }
    );
    let cli_config = cli.cli_config.filter(|v| !v.is_empty());
    let file = match offline {
        true => cli::ClientConfig::default(),
        false => cli::ClientConfig::load(cli_config.as_deref().map(std::path::Path::new))?,
    };
    // An empty `CAIRN_*` variable (or flag) says nothing: the config file's value stands (QA:
    // `CAIRN_TOKEN=` hid the file's token).
    let given = |v: Option<String>| v.filter(|v| !v.is_empty());
    let server = given(cli.server)
        .or(file.server)
        .unwrap_or_else(|| "http://127.0.0.1:8008".into());
    let token = given(cli.token).or(file.token).unwrap_or_default();
    if !offline {
        cairn_client::check_server_url(&server)?;
    }
    let cacert = given(cli.cacert).map(std::path::PathBuf::from);
    let ca = match cacert.or(file.cacert).filter(|_| !offline) {
        Some(f) => Some(std::fs::read(&f).with_context(|| format!("--cacert {}", f.display()))?),
        None => None,
    };
    let ctx = cli::Ctx {
        client: cairn_client::Client::with_ca(&server, &token, ca.as_deref())?,
        json: cli.json,
    };
    match cli.cmd {
        Cmd::Serve {
            data,
            listen,
            config,
        } => serve::run(data, listen, config).await,
        Cmd::Lib(c) => cli::lib(&ctx, c).await,
        Cmd::Token(c) => cli::token(&ctx, c).await,
        Cmd::Object(c) => cli::object(&ctx, c).await,
        Cmd::Upload(a) => cli::upload(&ctx, a).await,
        Cmd::Ls { target } => cli::ls(&ctx, &target).await,
        Cmd::Get(a) => cli::get(&ctx, a).await,
        Cmd::Cat { target } => cli::cat(&ctx, &target).await,
        Cmd::Versions { object } => cli::versions(&ctx, &object).await,
        Cmd::Finalize {
            write_token,
            force,
            state_dir,
        } => cli::finalize(&ctx, &write_token, force, state_dir).await,
        Cmd::Diff { a, b } => ops::diff(&ctx, &a, &b).await,
        Cmd::Jobs { write_token } => ops::jobs(&ctx, &write_token).await,
        Cmd::ForceComplete {
            write_token,
            files_job,
        } => ops::force_complete(&ctx, &write_token, files_job.as_deref()).await,
        Cmd::Fsck {
            data,
            repair,
            config,
        } => ops::fsck(&ctx, offline_dir(data, config), repair).await,
        Cmd::Gc {
            data,
            dry_run,
            config,
        } => ops::gc(&ctx, offline_dir(data, config), dry_run).await,
        Cmd::Stats { data, config } => ops::stats(&ctx, offline_dir(data, config)).await,
        Cmd::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "cairn",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Cmd::Demo { args } => demo::run(&args).await,
        Cmd::IngestBench { args } => ingest::run(&args).await,
        Cmd::CrashChild { args } => crash_child::run(&args).await,
    }
}

/// 2 invalid, 3 not found, 4 conflict/gone/precondition failed, 5 unreachable, 6 partial upload,
/// 1 anything else (clap itself exits 2 on usage).
fn broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn exit_code(e: &anyhow::Error) -> i32 {
    if e.downcast_ref::<ops::InUse>().is_some() {
        return 4;
    }
    if e.downcast_ref::<cli::Partial>().is_some() {
        return 6;
    }
    match e.downcast_ref::<cairn_client::ClientError>() {
        Some(cairn_client::ClientError::Invalid(_)) => 2,
        Some(cairn_client::ClientError::Api { status: 404, .. }) => 3,
        Some(cairn_client::ClientError::Api {
            status: 409 | 410 | 412,
            ..
        }) => 4,
        Some(cairn_client::ClientError::Api {
            status: 400 | 413 | 416,
            ..
        }) => 2,
        Some(cairn_client::ClientError::Transport(_) | cairn_client::ClientError::Tls(_)) => 5,
        _ => 1,
    }
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
