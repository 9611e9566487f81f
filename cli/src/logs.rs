//! `moat logs`: the container's json-file log (docs/logs.md), or with `--vm` its VM's console
//! and VMM log.

use std::path::Path;

use clap::Args;
use moat_runtime::sandbox::store::{self, Container};

/// `moat logs`' flags.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Follow the log as the container writes it
    #[arg(short, long)]
    pub follow: bool,
    /// Only the last N lines (or "all")
    #[arg(short = 'n', long, value_name = "N")]
    pub tail: Option<String>,
    /// Prefix each line with its time
    #[arg(short, long)]
    pub timestamps: bool,
    /// Only lines written at or after this time (RFC 3339)
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only lines written at or before this time (RFC 3339)
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// The VM's console and the VMM's log instead
    #[arg(long)]
    pub vm: bool,
    /// The container
    #[arg(value_name = "CONTAINER")]
    pub container: String,
}

fn time(flag: &str, text: &Option<String>) -> anyhow::Result<Option<std::time::SystemTime>> {
    text.as_deref()
        .map(|t| {
            moat_logs::time::parse_rfc3339(t).ok_or_else(|| {
                anyhow::anyhow!("invalid value {t:?} for {flag}: expected an RFC 3339 time")
            })
        })
        .transpose()
}

/// Runs `moat logs`.
pub fn logs(root: &Path, args: &LogsArgs) -> anyhow::Result<()> {
    let c = store::find(root, &args.container)?;
    if args.vm {
        return vm_logs(&c);
    }
    let tail = match args.tail.as_deref() {
        None | Some("all") => None,
        Some(n) => Some(n.parse::<usize>().map_err(|_| {
            anyhow::anyhow!("invalid value {n:?} for --tail: expected a number or all")
        })?),
    };
    let options = moat_logs::ReadOptions {
        tail,
        timestamps: args.timestamps,
        since: time("--since", &args.since)?,
        until: time("--until", &args.until)?,
        follow: args.follow,
    };
    let dir = c.dir.clone();
    let done = move || !moat_runtime::sandbox::lock::supervisor_alive(&dir);
    let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr());
    moat_logs::read_logs(&c.dir, c.name(), options, &mut out, &mut err, &done)?;
    Ok(())
}

fn vm_logs(c: &Container) -> anyhow::Result<()> {
    let live = c.dir.join("root").join("console.log");
    let console = if live.exists() {
        live
    } else {
        c.dir.join(moat_runtime::state::CONSOLE_COPY)
    };
    for (title, path) in [
        ("guest console", console),
        ("moat-vmm log", c.dir.join("vmm.log")),
    ] {
        println!("==> {title}: {}", path.display());
        match std::fs::read(&path) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                print!("{text}");
                if !text.ends_with('\n') && !text.is_empty() {
                    println!();
                }
            }
            Err(e) => println!("(not available: {e})"),
        }
    }
    Ok(())
}
