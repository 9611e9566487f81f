//! Turns a [`RunRequest`] into an [`ExecPlan`]: validated, with every string the forked child
//! needs already converted, so the child does not allocate.

use std::ffi::CString;

use oci_spec::runtime::{Process, Spec};

use super::security::Security;
use crate::syscall::CStrArray;

/// `PATH` used for the command lookup when the request's environment has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Most arguments plus environment entries a request may carry.
const MAX_STRINGS: usize = 4096;

/// A request the agent refuses.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    /// `args` is empty or its first element is empty.
    #[error("no command given")]
    NoCommand,
    /// A string contains a NUL byte.
    #[error("{0} contains a nul byte")]
    Nul(&'static str),
    /// An environment entry has no `=`.
    #[error("environment entry {0:?} is not KEY=VALUE")]
    BadEnv(String),
    /// The working directory is not absolute.
    #[error("working directory {0:?} is not an absolute path")]
    RelativeCwd(String),
    /// A field of the spec the agent refuses, and why.
    #[error("{field}: {why}")]
    Field {
        /// The OCI field, e.g. `linux.namespaces`.
        field: String,
        /// Why.
        why: String,
    },
    /// Too many arguments and environment entries.
    #[error("more than {MAX_STRINGS} arguments and environment entries")]
    TooMany,
    /// `linux.seccomp` is invalid or cannot be compiled (the message names the field).
    #[error(transparent)]
    Seccomp(#[from] moat_oci_seccomp::CompileError),
}

/// The process fields of the spec the agent uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSpec {
    /// argv; `args[0]` is looked up in `PATH` from `env` when it has no `/`.
    pub args: Vec<String>,
    /// Environment as `KEY=VALUE` strings.
    pub env: Vec<String>,
    /// Working directory inside the container's root.
    pub cwd: String,
    /// User id the process runs as.
    pub uid: u32,
    /// Group id the process runs as.
    pub gid: u32,
    /// Supplementary groups.
    pub additional_gids: Vec<u32>,
    /// Run on a pseudo-terminal.
    pub terminal: bool,
    /// Initial terminal size, when `terminal` is set.
    pub rows: u16,
    /// Initial terminal size, when `terminal` is set.
    pub cols: u16,
}

impl ProcessSpec {
    /// The process of an OCI spec.
    pub fn from_oci(spec: &Spec) -> Result<Self, PlanError> {
        Ok(Self::from_process(
            spec.process().as_ref().ok_or(PlanError::NoCommand)?,
        ))
    }

    /// The fields of an OCI process (the spec's or an exec's).
    pub fn from_process(p: &Process) -> Self {
        let size = p.console_size();
        let clamp = |v: u64| u16::try_from(v).unwrap_or(u16::MAX);
        Self {
            args: p.args().clone().unwrap_or_default(),
            env: p.env().clone().unwrap_or_default(),
            cwd: p.cwd().to_string_lossy().into_owned(),
            uid: p.user().uid(),
            gid: p.user().gid(),
            additional_gids: p.user().additional_gids().clone().unwrap_or_default(),
            terminal: p.terminal().unwrap_or(false),
            rows: size.map(|b| clamp(b.height())).unwrap_or(0),
            cols: size.map(|b| clamp(b.width())).unwrap_or(0),
        }
    }
}

/// Everything the forked child needs, prepared by the parent.
pub struct ExecPlan {
    /// Limits and privileges.
    pub security: Security,
    /// What the container's init drops to once the command runs ([`Security::for_init`]).
    pub init_security: Security,
    /// User id.
    pub uid: libc::uid_t,
    /// Group id.
    pub gid: libc::gid_t,
    /// Supplementary groups.
    pub groups: Vec<libc::gid_t>,
    /// Working directory.
    pub cwd: CString,
    /// Each ancestor of `cwd` and `cwd` itself, outermost first, for creating it if missing.
    pub cwd_dirs: Vec<CString>,
    /// Paths execve tries in order (the `PATH` lookup of `args[0]`).
    pub candidates: Vec<CString>,
    /// argv.
    pub argv: CStrArray,
    /// envp.
    pub envp: CStrArray,
}

fn cstring(s: &str, what: &'static str) -> Result<CString, PlanError> {
    CString::new(s).map_err(|_| PlanError::Nul(what))
}

/// Validates `process` and builds the plan, with the process's `security`.
pub fn build(process: &ProcessSpec, security: Security) -> Result<ExecPlan, PlanError> {
    let program = process
        .args
        .first()
        .filter(|a| !a.is_empty())
        .ok_or(PlanError::NoCommand)?;
    if process.args.len() + process.env.len() > MAX_STRINGS {
        return Err(PlanError::TooMany);
    }
    if let Some(bad) = process
        .env
        .iter()
        .find(|e| e.find('=').is_none_or(|i| i == 0))
    {
        return Err(PlanError::BadEnv(bad.clone()));
    }
    if !process.cwd.starts_with('/') {
        return Err(PlanError::RelativeCwd(process.cwd.clone()));
    }
    let argv = process
        .args
        .iter()
        .map(|a| cstring(a, "an argument"))
        .collect::<Result<_, _>>()?;
    let envp = process
        .env
        .iter()
        .map(|e| cstring(e, "the environment"))
        .collect::<Result<_, _>>()?;
    let path_env = process
        .env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="));
    let candidates = lookup_candidates(program, path_env.unwrap_or(DEFAULT_PATH))
        .iter()
        .map(|c| cstring(c, "the command"))
        .collect::<Result<_, _>>()?;
    let cwd_dirs = ancestors(&process.cwd)
        .iter()
        .map(|d| cstring(d, "the working directory"))
        .collect::<Result<_, _>>()?;
    Ok(ExecPlan {
        init_security: security.for_init()?,
        security,
        uid: process.uid,
        gid: process.gid,
        groups: process.additional_gids.clone(),
        cwd: cstring(&process.cwd, "the working directory")?,
        cwd_dirs,
        candidates,
        argv: CStrArray::new(argv),
        envp: CStrArray::new(envp),
    })
}

/// The paths `execvp` would try for `program`: itself if it contains a `/`, else each `PATH`
/// entry joined with it (an empty entry means the working directory).
pub fn lookup_candidates(program: &str, path: &str) -> Vec<String> {
    if program.contains('/') {
        return vec![program.to_owned()];
    }
    path.split(':')
        .map(|dir| match dir {
            "" => format!("./{program}"),
            d if d.ends_with('/') => format!("{d}{program}"),
            d => format!("{d}/{program}"),
        })
        .collect()
}

/// `/a/b/c` -> `/a`, `/a/b`, `/a/b/c`; `/` and empty components are skipped.
fn ancestors(path: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
        cur.push('/');
        cur.push_str(part);
        out.push(cur.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(args: &[&str], env: &[&str], cwd: &str) -> ProcessSpec {
        ProcessSpec {
            args: args.iter().map(|s| s.to_string()).collect(),
            env: env.iter().map(|s| s.to_string()).collect(),
            cwd: cwd.into(),
            uid: 1000,
            gid: 100,
            additional_gids: vec![10],
            terminal: false,
            rows: 0,
            cols: 0,
        }
    }

    #[test]
    fn path_lookup() {
        assert_eq!(lookup_candidates("/bin/sh", "/x"), ["/bin/sh"]);
        assert_eq!(lookup_candidates("./run", "/x"), ["./run"]);
        assert_eq!(
            lookup_candidates("ls", "/usr/bin:/bin/::/opt"),
            ["/usr/bin/ls", "/bin/ls", "./ls", "/opt/ls"]
        );
    }

    #[test]
    fn plan_uses_the_request_path_or_the_default() {
        let plan = build(
            &spec(&["ls", "-l"], &["A=1", "PATH=/a:/b"], "/"),
            Security::default(),
        )
        .unwrap();
        let c: Vec<_> = plan
            .candidates
            .iter()
            .map(|c| c.to_str().unwrap())
            .collect();
        assert_eq!(c, ["/a/ls", "/b/ls"]);
        assert_eq!(plan.argv.strings().len(), 2);
        assert_eq!(
            (plan.uid, plan.gid, plan.groups.as_slice()),
            (1000, 100, &[10][..])
        );
        let plan = build(&spec(&["ls"], &[], "/"), Security::default()).unwrap();
        assert_eq!(plan.candidates.len(), DEFAULT_PATH.split(':').count());
        assert!(plan.cwd_dirs.is_empty());
    }

    #[test]
    fn cwd_ancestors() {
        assert_eq!(ancestors("/a//b/./c/"), ["/a", "/a/b", "/a/b/c"]);
        assert!(ancestors("/").is_empty());
    }

    #[test]
    fn invalid_requests() {
        let err = |args: &[&str], env: &[&str], cwd: &str, _: Option<&str>| {
            build(&spec(args, env, cwd), Security::default())
                .err()
                .unwrap()
        };
        assert_eq!(err(&[], &[], "/", None), PlanError::NoCommand);
        assert_eq!(err(&[""], &[], "/", None), PlanError::NoCommand);
        assert_eq!(
            err(&["a\0b"], &[], "/", None),
            PlanError::Nul("an argument")
        );
        assert_eq!(
            err(&["ls"], &["NOEQ"], "/", None),
            PlanError::BadEnv("NOEQ".into())
        );
        assert_eq!(
            err(&["ls"], &["=x"], "/", None),
            PlanError::BadEnv("=x".into())
        );
        assert_eq!(
            err(&["ls"], &[], "tmp", None),
            PlanError::RelativeCwd("tmp".into())
        );
        let many: Vec<String> = (0..=MAX_STRINGS).map(|i| i.to_string()).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(err(&many, &[], "/", None), PlanError::TooMany);
    }
}
