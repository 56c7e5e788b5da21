//! `cairn serve [--data DIR] [--listen HOST:PORT] [--config FILE]`: the HTTP server on the
//! embedded store. With no flags: `./cairn-data`, `127.0.0.1:8008`.

use std::io::Write;

use anyhow::{anyhow, Result};
use cairn_http::ServerConfig;

pub async fn run(
    data: Option<String>,
    listen: Option<String>,
    config: Option<String>,
) -> Result<()> {
    let mut cfg =
        ServerConfig::load(config.as_deref().map(std::path::Path::new)).map_err(|e| anyhow!(e))?;
    if let Some(d) = data {
        cfg.data = d.into();
    }
    if let Some(l) = listen {
        cfg.listen = l;
    }
    // Each connection is a file descriptor: take the hard limit, not the (often 1024) soft one,
    // so `max_connections` is what limits connections.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) if (n as usize) < cfg.max_connections + 256 => tracing::warn!(
            nofile = n,
            max_connections = cfg.max_connections,
            "the open-file limit is below max_connections; raise it (ulimit -n)"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }
    // The socket first: a `listen` that cannot be used must not leave a new data dir behind.
    let socket = cairn_http::bind(&cfg).await.map_err(|e| anyhow!(e))?;
    let (state, generated) = cairn_http::open(&cfg).map_err(|e| {
        // RocksDB's lock: another server has this data dir (exit 4, as for `--data` commands).
        match cairn_store::index::is_in_use(&e) {
            true => anyhow::Error::new(crate::ops::InUse(cfg.data.display().to_string())),
            false => anyhow!(e),
        }
    })?;
    if let Some(token) = generated {
        say(&format!(
            "cairn: generated admin token (shown once; stored hashed in {}):",
            cfg.data.display()
        ));
        // Shown once: a token that could not be shown must not be kept either.
        let mut out = std::io::stdout();
        if let Err(e) = writeln!(out, "{token}").and_then(|()| out.flush()) {
            let hash = cfg.data.join(cairn_http::ADMIN_TOKEN_FILE);
            let _ = std::fs::remove_file(&hash);
            // Durably gone: back after a crash, it would hold the hash of a token no one has.
            let _ = std::fs::File::open(&cfg.data).and_then(|d| d.sync_all());
            return Err(anyhow!(
                "the generated admin token could not be printed ({e}), so it was not kept; \
                 start again with a writable stdout, or set CAIRN_TOKEN"
            ));
        }
    }
    cairn_http::serve_on(socket, cfg, state, shutdown_signal())
        .await
        .map_err(|e| anyhow!(e))
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return ctrl_c.await.unwrap_or(()),
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
    say("cairn: shutting down; finishing in-flight requests");
}

/// A line for the operator on stderr; one that cannot be written is dropped (see `LogSink`).
fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}
