//! Scripts for the `wrk` load generator: pre-signed requests, so that callsign can be driven by
//! the same C load generator as the reference servers it is compared with (a fixed-answer
//! nginx, an OIDC provider), whose per-request cost on the client side is a small fraction of
//! `callsign bench`'s.
//!
//! The server checks every request in full (HMAC over method, path, host, date and body hash,
//! identity lookup, signature); only the client's signing is done ahead of time. The requests
//! stay valid for the server's 15-minute date window, so the script is written just before a
//! run.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::{Context as _, bail};
use serde::Serialize;

use crate::load::{
    ISSUE_BODY, Identities, Rng, create_identities, identity_path, learn_resource,
    target_and_baseline,
};
use crate::target::Target;
use crate::{BenchArgs, Workload};

/// Pre-signed requests written when no `--requests` is given.
const DEFAULT_REQUESTS: u64 = 4096;
/// Most pre-signed requests one script holds.
const MAX_REQUESTS: u64 = 100_000;

/// What `bench --wrk-script` wrote and measured.
#[derive(Debug, Clone, Serialize)]
pub struct WrkScript {
    /// The Lua file written.
    pub path: PathBuf,
    /// The URL to give `wrk`.
    pub url: String,
    /// Distinct pre-signed requests in it (replayed in a cycle).
    pub requests: u64,
    /// The bare ES256 signature on this machine, in microseconds (absent with --no-baseline).
    pub es256_sign_us: Option<f64>,
}

/// Writes a `wrk` script of pre-signed issue requests over the pool (or the seeded range).
pub async fn write_wrk_script(args: BenchArgs) -> anyhow::Result<WrkScript> {
    let Some(path) = args.wrk_script.clone() else {
        bail!("--wrk-script names the file to write");
    };
    if args.workload != Workload::Issue {
        bail!("--wrk-script works with the issue workload");
    }
    let count = args.requests.unwrap_or(DEFAULT_REQUESTS);
    if count == 0 || count > MAX_REQUESTS {
        bail!("--requests must be between 1 and {MAX_REQUESTS} with --wrk-script");
    }
    let (target, es256_sign_us) = target_and_baseline(&args)?;
    let identities = match args.seeded {
        Some(0) => bail!("--seeded must be at least 1"),
        Some(count) => Identities::Seeded {
            resource: learn_resource(&target, args.api_version).await?,
            count,
        },
        None => Identities::Pool(
            create_identities(
                &target,
                args.api_version,
                args.pool.unwrap_or(1000).max(1),
                args.connections.clamp(1, 64),
                args.quiet,
            )
            .await?,
        ),
    };
    let lua = issue_script(&target, &identities, &args, count)?;
    std::fs::write(&path, lua).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(WrkScript {
        path,
        url: target.endpoint().to_string(),
        requests: count,
        es256_sign_us,
    })
}

/// The rest of the script: each wrk thread formats the signed requests once and sends them in
/// turn, starting at a random one.
const REPLAY: &str = r#"local raw, next_request = {}, 0
function init(args)
  for i, s in ipairs(signed) do
    raw[i] = wrk.format("POST", s[1], {
      ["Host"] = s[2],
      ["x-ms-date"] = s[3],
      ["x-ms-content-sha256"] = s[4],
      ["Authorization"] = s[5],
      ["Content-Type"] = "application/json",
    }, body)
  end
  next_request = math.random(#raw) - 1
end
function request()
  next_request = next_request % #raw + 1
  return raw[next_request]
end
"#;

/// The Lua text: a table of signed requests, formatted once per wrk thread and cycled through.
fn issue_script(
    target: &Target,
    identities: &Identities,
    args: &BenchArgs,
    count: u64,
) -> anyhow::Result<String> {
    let now = SystemTime::now();
    let mut rng = Rng::new(u64::from(std::process::id()));
    let mut lua = String::from(
        "-- callsign issue requests, pre-signed by `callsign bench --wrk-script` (valid 15 minutes)\n\
         local signed = {\n",
    );
    for _ in 0..count {
        let id = identities
            .pick(&mut rng)
            .context("no identity to issue to")?;
        let path = identity_path(args.api_version, Some(&id), "/:issueAccessToken");
        let (host, h) = target.signed_headers("POST", &path, ISSUE_BODY, now)?;
        writeln!(
            lua,
            "  {{{}, {}, {}, {}, {}}},",
            lua_string(&path)?,
            lua_string(&host)?,
            lua_string(&h.date)?,
            lua_string(&h.content_hash)?,
            lua_string(&h.authorization)?
        )?;
    }
    writeln!(
        lua,
        "}}\nlocal body = {}",
        lua_string(std::str::from_utf8(ISSUE_BODY)?)?
    )?;
    lua.push_str(REPLAY);
    Ok(lua)
}

/// A Lua string literal of printable ASCII (all the signed values are).
fn lua_string(s: &str) -> anyhow::Result<String> {
    if !s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        bail!("{s:?} is not printable ASCII");
    }
    Ok(format!(
        "\"{}\"",
        s.replace('\\', "\\\\").replace('"', "\\\"")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lua_strings_escape_quotes_and_refuse_control_bytes() {
        assert_eq!(lua_string(r#"a"b\c"#).expect("ascii"), r#""a\"b\\c""#);
        assert!(lua_string("a\nb").is_err());
        assert!(lua_string("é").is_err());
    }
}
