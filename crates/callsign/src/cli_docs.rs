//! `callsign completions SHELL` (clap_complete) and `callsign man` (clap_mangen): both made from
//! the same clap definition as the parser, so they never drift from the flags.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::CommandFactory as _;

use crate::config::Cli;

/// `callsign completions`.
#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell: bash, zsh, fish, powershell or elvish.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `callsign man`.
#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// Write callsign.1 and a page per subcommand (callsign-serve.1, …) into this directory
    /// (created if missing; pages mode 0644) instead of printing callsign.1.
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
}

/// Writes `bytes` to standard output; a closed pipe (`| head`) ends quietly.
fn print_bytes(bytes: &[u8]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// Prints the completion script for `args.shell`.
pub fn completions(args: CompletionsArgs) -> anyhow::Result<()> {
    let mut cmd = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "callsign", &mut script);
    print_bytes(&script)
}

/// Prints the man page of `callsign`, or writes one per command into `--out-dir`.
pub fn man(args: ManArgs) -> anyhow::Result<()> {
    let Some(dir) = args.out_dir else {
        let mut page = Vec::new();
        clap_mangen::Man::new(Cli::command()).render(&mut page)?;
        return print_bytes(&page);
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // The process's umask keeps what it makes private; man pages are for every user.
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&dir)?.permissions().mode();
        if mode & 0o055 != 0o055 {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode | 0o755))?;
        }
    }
    let mut cmd = Cli::command().disable_help_subcommand(true);
    // Building names every subcommand by its full path (`callsign-serve`).
    cmd.build();
    write_pages(cmd, &dir)
}

/// Writes the page of `cmd` and of each of its visible subcommands, and says where.
fn write_pages(cmd: clap::Command, dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned() {
        write_pages(sub, dir)?;
    }
    let man = clap_mangen::Man::new(cmd);
    let path = dir.join(man.get_filename());
    let mut page = Vec::new();
    man.render(&mut page)?;
    std::fs::write(&path, page).with_context(|| format!("cannot write {}", path.display()))?;
    // Man pages are for everyone, whatever callsign's private umask.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
        .with_context(|| format!("cannot set the mode of {}", path.display()))?;
    out!("{}", path.display());
    Ok(())
}
