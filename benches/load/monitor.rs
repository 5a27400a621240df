//! What the processes cost, read from /proc: RSS, CPU time and open files
//! of a set of pids, the whole machine's busy time, and the pids of the
//! bench itself (this process, its children and theirs).

use crate::processes::CHILDREN;

/// RSS, CPU time and open files of a set of processes, from /proc.
#[derive(Clone, Debug)]
pub(crate) struct Monitor {
    pub(crate) pids: Vec<u32>,
}

/// USER_HZ: /proc reports CPU times in 1/100 s on Linux.
const TICKS_PER_SEC: f64 = 100.0;

impl Monitor {
    pub(crate) fn rss_kib(&self) -> u64 {
        self.pids
            .iter()
            .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
            .filter_map(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse::<u64>().ok())
            })
            .sum()
    }

    /// CPU time used so far, in seconds: the sum of every live thread's
    /// on-CPU nanoseconds (`/proc/<pid>/task/*/schedstat`), which resolves
    /// far finer than the 10 ms ticks of `/proc/<pid>/stat` utime+stime
    /// (the fallback). The proxies' threads live as long as they do.
    pub(crate) fn cpu_secs(&self) -> f64 {
        self.pids
            .iter()
            .map(|pid| Self::schedstat_secs(*pid).unwrap_or_else(|| Self::stat_secs(*pid)))
            .sum()
    }

    fn schedstat_secs(pid: u32) -> Option<f64> {
        let mut ns = 0u64;
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))
            .ok()?
            .flatten()
        {
            let s = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
            ns += s.split_whitespace().next()?.parse::<u64>().ok()?;
        }
        Some(ns as f64 / 1e9)
    }

    /// utime + stime, in seconds.
    fn stat_secs(pid: u32) -> f64 {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                // Fields after the `(comm)`, which may contain spaces.
                let rest = &s[s.rfind(')')? + 2..];
                let f: Vec<&str> = rest.split_whitespace().collect();
                Some(f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?)
            })
            .unwrap_or(0.0)
            / TICKS_PER_SEC
    }

    pub(crate) fn open_files(&self) -> usize {
        self.pids
            .iter()
            .filter_map(|pid| std::fs::read_dir(format!("/proc/{pid}/fd")).ok())
            .map(|d| d.count())
            .sum()
    }
}

/// Busy CPU seconds of the whole machine (all cores) from /proc/stat.
pub(crate) fn machine_busy_secs() -> f64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let line = s.lines().next()?;
            let f: Vec<f64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            // user nice system idle iowait irq softirq steal
            Some(f.iter().take(8).sum::<f64>() - f.get(3)? - f.get(4)?)
        })
        .unwrap_or(0.0)
        / TICKS_PER_SEC
}

/// Every process of the bench: this one, the children and theirs (nginx
/// workers). What the machine spends beyond them is someone else's load.
pub(crate) fn bench_processes() -> Monitor {
    let mut pids = vec![std::process::id()];
    for pid in CHILDREN.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        pids.push(*pid);
        pids.extend(children_of(*pid));
    }
    Monitor { pids }
}

pub(crate) fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}
