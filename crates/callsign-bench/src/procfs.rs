//! What `/proc` says about a process on this machine: CPU time and memory.

use anyhow::Context as _;

/// Linux reports `/proc/<pid>/stat` times in USER_HZ, which is 100 on every architecture the
/// kernel exports to user space (`getconf CLK_TCK`).
const TICKS_PER_SECOND: f64 = 100.0;

/// User plus system CPU time of every thread of `pid` so far, in seconds.
pub(crate) fn cpu_seconds(pid: &str) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    parse_cpu_seconds(&stat).with_context(|| format!("unexpected contents in {path}"))
}

/// Fields 14 (utime) and 15 (stime), counted after the parenthesised command name, which may
/// itself hold spaces and parentheses.
fn parse_cpu_seconds(stat: &str) -> Option<f64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    // `after` starts at field 3 (state): utime is field 14, the 12th here.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / TICKS_PER_SECOND)
}

/// Total CPU seconds of every process whose command name (`/proc/<pid>/comm`) is `name`, and
/// how many there are (e.g. a database server's backends).
pub(crate) fn cpu_seconds_of_command(name: &str) -> anyhow::Result<(f64, usize)> {
    let mut total = 0.0;
    let mut count = 0;
    for entry in std::fs::read_dir("/proc").context("cannot list /proc")? {
        let Ok(entry) = entry else { continue };
        let pid = entry.file_name();
        let Some(pid) = pid
            .to_str()
            .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        // A process may end between the two reads; it then simply does not count.
        if let Ok(cpu) = cpu_seconds(pid) {
            total += cpu;
            count += 1;
        }
    }
    Ok((total, count))
}

/// Busy CPU seconds of the whole machine so far (all cores, everything but idle and iowait),
/// from the first line of `/proc/stat`.
pub(crate) fn machine_busy_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat").context("cannot read /proc/stat")?;
    let line = stat.lines().next().unwrap_or_default();
    parse_machine_busy(line).context("unexpected contents in /proc/stat")
}

fn parse_machine_busy(line: &str) -> Option<f64> {
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let values: Vec<u64> = fields.filter_map(|f| f.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal [guest guest_nice, already in user/nice]
    let busy: u64 = values.iter().take(8).sum::<u64>() - values.get(3)? - values.get(4)?;
    Some(busy as f64 / TICKS_PER_SECOND)
}

/// Resident set size now and at its peak, in KiB (`VmRSS`, `VmHWM`).
pub(crate) fn memory_kib(pid: &str) -> anyhow::Result<(u64, u64)> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    };
    match (field("VmRSS:"), field("VmHWM:")) {
        (Some(rss), Some(hwm)) => Ok((rss, hwm)),
        _ => anyhow::bail!("no VmRSS/VmHWM in {path}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_command_names_parse() {
        let line =
            "1234 (a (b) c) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 10 1000 50";
        assert_eq!(parse_cpu_seconds(line), Some(3.0));
    }

    #[test]
    fn machine_busy_time_excludes_idle_and_iowait() {
        let line = "cpu  100 5 50 1000 20 3 2 0 0 0";
        assert_eq!(parse_machine_busy(line), Some(1.6));
        assert!(machine_busy_seconds().expect("stat") > 0.0);
    }

    #[test]
    fn this_process_can_be_read() {
        assert!(cpu_seconds("self").expect("stat") >= 0.0);
        let (rss, hwm) = memory_kib("self").expect("status");
        let comm = std::fs::read_to_string("/proc/self/comm").expect("comm");
        let (cpu, n) = cpu_seconds_of_command(comm.trim_end()).expect("by name");
        assert!(n >= 1 && cpu >= 0.0);
        assert!(rss > 0 && hwm >= rss);
    }
}
