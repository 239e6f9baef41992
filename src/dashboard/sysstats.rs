//! CPU, memory and power of the training process and machine, sampled about once a second.
//!
//! - Process (by the pid in the run header): on Linux `/proc/<pid>/stat` gives user+system CPU
//!   time in clock ticks and the start time; `/proc/<pid>/status` gives `VmRSS`. Elsewhere
//!   (macOS) `ps -o time=,rss= -p <pid>` gives the same two numbers. CPU% is the CPU time used
//!   between two samples over the wall time between them (100% = one core busy). A pid that no
//!   longer exists, a zombie, or (Linux) a process that started after the run's header was
//!   written — the pid was reused — reads as gone.
//! - Power: Linux powercap RAPL counters (`/sys/class/powercap/intel-rapl:N/energy_uj`, the
//!   package zones, which are often readable by root only) turned into watts from the energy
//!   used between two samples, with the counter's wrap at `max_energy_range_uj`. This is the
//!   whole CPU package, not the process. On macOS, when running as root, `powermetrics
//!   --samplers cpu_power` reports CPU, GPU and Neural Engine power. Anything else is
//!   unavailable, with the reason.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Samples of history kept for the sparklines.
pub const HISTORY: usize = 600;

/// One reading of a process.
#[derive(Clone, Debug, PartialEq)]
pub struct ProcSample {
    /// User + system CPU time since the process started.
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
    /// When the process started (Unix seconds), where the system says.
    pub start_unix: Option<f64>,
}

/// Reads CPU time and resident memory of `pid`; `None` when the process does not exist (or is
/// a zombie) or cannot be read.
pub fn read_process(pid: u32) -> Option<ProcSample> {
    if pid == 0 {
        return None;
    }
    imp::read_process(pid)
}

#[cfg(target_os = "linux")]
mod imp {
    use super::ProcSample;

    pub fn read_process(pid: u32) -> Option<ProcSample> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let f = parse_stat(&stat)?;
        if f.state == 'Z' || f.state == 'X' {
            return None;
        }
        let rss_kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())?;
        let tick = clock_ticks_per_second();
        let start_unix = boot_time_unix().map(|b| b + f.start_ticks as f64 / tick);
        Some(ProcSample {
            cpu_seconds: (f.utime + f.stime) as f64 / tick,
            rss_bytes: rss_kb * 1024,
            start_unix,
        })
    }

    pub struct StatFields {
        pub state: char,
        pub utime: u64,
        pub stime: u64,
        pub start_ticks: u64,
    }

    /// `/proc/<pid>/stat`: `pid (comm) state ppid …`; comm may hold spaces and parentheses, so
    /// fields are counted after the last `)`. utime, stime and starttime are fields 14, 15
    /// and 22 (1-based) of proc(5).
    pub fn parse_stat(s: &str) -> Option<StatFields> {
        let rest = &s[s.rfind(')')? + 1..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        Some(StatFields {
            state: f.first()?.chars().next()?,
            utime: f.get(11)?.parse().ok()?,
            stime: f.get(12)?.parse().ok()?,
            start_ticks: f.get(19)?.parse().ok()?,
        })
    }

    fn clock_ticks_per_second() -> f64 {
        // SAFETY: sysconf only reads a system constant.
        let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if t > 0 {
            t as f64
        } else {
            100.0
        }
    }

    fn boot_time_unix() -> Option<f64> {
        let s = std::fs::read_to_string("/proc/stat").ok()?;
        s.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<f64>().ok())
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use super::ProcSample;

    pub fn read_process(pid: u32) -> Option<ProcSample> {
        let out = std::process::Command::new("ps")
            .args(["-o", "time=,rss=", "-p", &pid.to_string()])
            .stderr(std::process::Stdio::null())
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        super::parse_ps_line(&String::from_utf8_lossy(&out.stdout))
    }
}

/// Parses `ps -o time=,rss=` output: CPU time as `[[dd-]hh:]mm:ss[.ss]`, RSS in KiB.
pub fn parse_ps_line(s: &str) -> Option<ProcSample> {
    let mut it = s.split_whitespace();
    let time = it.next()?;
    let rss_kb: u64 = it.next()?.parse().ok()?;
    let (days, hms) = match time.split_once('-') {
        Some((d, rest)) => (d.parse::<f64>().ok()?, rest),
        None => (0.0, time),
    };
    let mut secs = 0.0;
    for part in hms.split(':') {
        secs = secs * 60.0 + part.parse::<f64>().ok()?;
    }
    Some(ProcSample {
        cpu_seconds: days * 86400.0 + secs,
        rss_bytes: rss_kb * 1024,
        start_unix: None,
    })
}

/// What the process panel shows.
#[derive(Clone, Debug, PartialEq)]
pub struct ProcReading {
    /// Percent of one core since the previous sample (`None` on the first sample).
    pub cpu_percent: Option<f64>,
    pub rss_bytes: u64,
}

/// Samples one process over time.
pub struct ProcMonitor {
    pid: u32,
    /// Unix seconds the run header was written: a process started later is not the trainer.
    not_after: Option<f64>,
    last: Option<(f64, Instant)>,
    pub current: Option<ProcReading>,
    /// (cpu %, rss bytes) per sample, newest last.
    pub history: VecDeque<(f64, u64)>,
}

impl ProcMonitor {
    /// `started_before`: the run header's `start_unix`, when known (0 = unknown).
    pub fn new(pid: u32, started_before: f64) -> ProcMonitor {
        ProcMonitor {
            pid,
            not_after: (started_before > 0.0).then_some(started_before + 5.0),
            last: None,
            current: None,
            history: VecDeque::new(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Takes one sample; returns the reading, `None` when the process is gone.
    pub fn sample(&mut self) -> Option<&ProcReading> {
        let s = read_process(self.pid).filter(|s| match (s.start_unix, self.not_after) {
            (Some(st), Some(limit)) => st <= limit,
            _ => true,
        });
        let Some(s) = s else {
            self.current = None;
            self.last = None;
            return None;
        };
        let now = Instant::now();
        let cpu_percent = self.last.and_then(|(c0, t0)| {
            let dt = now.duration_since(t0).as_secs_f64();
            (dt > 0.05).then(|| ((s.cpu_seconds - c0) / dt * 100.0).max(0.0))
        });
        self.last = Some((s.cpu_seconds, now));
        if let Some(c) = cpu_percent {
            if self.history.len() >= HISTORY {
                self.history.pop_front();
            }
            self.history.push_back((c, s.rss_bytes));
        }
        self.current = Some(ProcReading {
            cpu_percent,
            rss_bytes: s.rss_bytes,
        });
        self.current.as_ref()
    }
}

/// Watts from two readings of an energy counter in microjoules that wraps at `max_range_uj`.
pub fn watts_between(e0_uj: u64, e1_uj: u64, max_range_uj: u64, seconds: f64) -> Option<f64> {
    if seconds <= 0.0 {
        return None;
    }
    let used = if e1_uj >= e0_uj {
        e1_uj - e0_uj
    } else if max_range_uj > e0_uj {
        max_range_uj - e0_uj + e1_uj
    } else {
        return None;
    };
    Some(used as f64 / 1e6 / seconds)
}

/// The RAPL package zones under a powercap folder.
pub struct Rapl {
    zones: Vec<RaplZone>,
}

struct RaplZone {
    energy: PathBuf,
    max_range_uj: u64,
    last: Option<(u64, Instant)>,
}

impl Rapl {
    /// Finds the readable top-level zones (`intel-rapl:N`, not the `intel-rapl:N:M` sub-zones
    /// they contain) named `package-*` (or all top-level zones if none is so named; `psys`
    /// is left out when packages exist since it includes them).
    pub fn open(powercap: &Path) -> Result<Rapl, String> {
        let rd = std::fs::read_dir(powercap).map_err(|_| "no RAPL counters".to_string())?;
        let mut tops: Vec<(String, PathBuf)> = Vec::new();
        for ent in rd.flatten() {
            let name = ent.file_name().to_string_lossy().into_owned();
            if name.starts_with("intel-rapl:") && name.matches(':').count() == 1 {
                let zname = std::fs::read_to_string(ent.path().join("name"))
                    .map(|s| s.trim().to_string())
                    .unwrap_or_default();
                tops.push((zname, ent.path()));
            }
        }
        if tops.is_empty() {
            return Err("no RAPL counters".into());
        }
        tops.sort_by(|a, b| a.1.cmp(&b.1));
        let packages: Vec<_> = tops
            .iter()
            .filter(|(n, _)| n.starts_with("package"))
            .cloned()
            .collect();
        let chosen = if packages.is_empty() { tops } else { packages };
        let mut zones = Vec::new();
        let mut denied = None;
        for (_, dir) in chosen {
            let energy = dir.join("energy_uj");
            match std::fs::read_to_string(&energy) {
                Ok(s) if s.trim().parse::<u64>().is_ok() => {
                    let max_range_uj = std::fs::read_to_string(dir.join("max_energy_range_uj"))
                        .ok()
                        .and_then(|s| s.trim().parse().ok())
                        .unwrap_or(0);
                    zones.push(RaplZone {
                        energy,
                        max_range_uj,
                        last: None,
                    });
                }
                Ok(_) => denied = Some("energy_uj is not a number".into()),
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    denied = Some("root only".into());
                }
                Err(e) => denied = Some(e.to_string()),
            }
        }
        if zones.is_empty() {
            return Err(format!("RAPL {}", denied.unwrap_or_default()));
        }
        Ok(Rapl { zones })
    }

    /// Sum of package watts since the previous call (`None` on the first call).
    pub fn sample(&mut self) -> Option<f64> {
        let now = Instant::now();
        let mut total = 0.0;
        let mut complete = true;
        for z in &mut self.zones {
            let e: Option<u64> = std::fs::read_to_string(&z.energy)
                .ok()
                .and_then(|s| s.trim().parse().ok());
            let Some(e) = e else {
                complete = false;
                continue;
            };
            match z.last.and_then(|(e0, t0)| {
                watts_between(e0, e, z.max_range_uj, now.duration_since(t0).as_secs_f64())
            }) {
                Some(w) => total += w,
                None => complete = false,
            }
            z.last = Some((e, now));
        }
        complete.then_some(total)
    }
}

/// Power readings from `powermetrics` in milliwatts (macOS).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PowerMetricsSample {
    pub cpu_mw: Option<f64>,
    pub gpu_mw: Option<f64>,
    pub ane_mw: Option<f64>,
    pub combined_mw: Option<f64>,
}

/// Folds one line of `powermetrics --samplers cpu_power` output into `s`; returns true on the
/// line that ends a sample (`Combined Power …` on Apple Silicon, `Package Power` on older
/// systems). Lines look like `ANE Power: 12 mW`.
pub fn parse_powermetrics_line(line: &str, s: &mut PowerMetricsSample) -> bool {
    let Some((key, val)) = line.split_once(':') else {
        return false;
    };
    let mut v = val.split_whitespace();
    let Some(mw) = v.next().and_then(|x| x.parse::<f64>().ok()) else {
        return false;
    };
    let mw = match v.next() {
        Some("W") => mw * 1e3,
        Some("mW") => mw,
        _ => return false,
    };
    let key = key.trim();
    if key.starts_with("Combined Power") || key == "Package Power" {
        s.combined_mw = Some(mw);
        return true;
    }
    match key {
        "CPU Power" => s.cpu_mw = Some(mw),
        "GPU Power" => s.gpu_mw = Some(mw),
        "ANE Power" => s.ane_mw = Some(mw),
        _ => {}
    }
    false
}

/// One power reading for the panel.
#[derive(Clone, Debug, PartialEq)]
pub struct PowerReading {
    pub watts: f64,
    /// What the number covers ("RAPL package", "CPU+GPU+ANE", …).
    pub source: String,
    /// Neural Engine watts, where reported.
    pub ane_watts: Option<f64>,
}

enum PowerSource {
    Rapl(Rapl),
    #[cfg(target_os = "macos")]
    PowerMetrics(
        std::sync::mpsc::Receiver<PowerMetricsSample>,
        std::process::Child,
    ),
    Unavailable,
}

/// Samples machine power where it can be read.
pub struct PowerMonitor {
    source: PowerSource,
    /// Why power is unavailable (shown instead of watts).
    pub unavailable: Option<String>,
    pub current: Option<PowerReading>,
    pub history: VecDeque<f64>,
}

impl PowerMonitor {
    /// Picks the best source this machine offers.
    pub fn detect() -> PowerMonitor {
        #[cfg(target_os = "macos")]
        let m = match powermetrics::start() {
            Ok((rx, child)) => PowerMonitor::with(PowerSource::PowerMetrics(rx, child), None),
            Err(why) => PowerMonitor::with(PowerSource::Unavailable, Some(why)),
        };
        #[cfg(not(target_os = "macos"))]
        let m = PowerMonitor::rapl_at(Path::new("/sys/class/powercap"));
        m
    }

    /// RAPL under the given powercap folder (tests point it at a fake one).
    pub fn rapl_at(powercap: &Path) -> PowerMonitor {
        match Rapl::open(powercap) {
            Ok(r) => PowerMonitor::with(PowerSource::Rapl(r), None),
            Err(why) => PowerMonitor::with(PowerSource::Unavailable, Some(why)),
        }
    }

    /// A monitor that reports nothing, with the reason given.
    pub fn disabled(why: &str) -> PowerMonitor {
        PowerMonitor::with(PowerSource::Unavailable, Some(why.to_string()))
    }

    fn with(source: PowerSource, unavailable: Option<String>) -> PowerMonitor {
        PowerMonitor {
            source,
            unavailable,
            current: None,
            history: VecDeque::new(),
        }
    }

    pub fn sample(&mut self) -> Option<&PowerReading> {
        let reading = match &mut self.source {
            PowerSource::Rapl(r) => r.sample().map(|w| PowerReading {
                watts: w,
                source: "RAPL package".into(),
                ane_watts: None,
            }),
            #[cfg(target_os = "macos")]
            PowerSource::PowerMetrics(rx, _) => {
                let mut last = None;
                while let Ok(s) = rx.try_recv() {
                    last = Some(s);
                }
                match last {
                    Some(s) => s.combined_mw.or(s.cpu_mw).map(|mw| PowerReading {
                        watts: mw / 1e3,
                        source: if s.ane_mw.is_some() {
                            "CPU+GPU+ANE".into()
                        } else {
                            "package".into()
                        },
                        ane_watts: s.ane_mw.map(|m| m / 1e3),
                    }),
                    None => return self.current.as_ref(),
                }
            }
            PowerSource::Unavailable => None,
        };
        if let Some(r) = &reading {
            if self.history.len() >= HISTORY {
                self.history.pop_front();
            }
            self.history.push_back(r.watts);
        }
        self.current = reading;
        self.current.as_ref()
    }
}

impl Drop for PowerMonitor {
    fn drop(&mut self) {
        #[cfg(target_os = "macos")]
        if let PowerSource::PowerMetrics(_, child) = &mut self.source {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(target_os = "macos")]
mod powermetrics {
    use super::{parse_powermetrics_line, PowerMetricsSample};
    use std::io::BufRead;
    use std::process::{Child, Command, Stdio};
    use std::sync::mpsc::{channel, Receiver};

    /// Starts `powermetrics` sampling once a second (root only) and a thread that parses it.
    pub fn start() -> Result<(Receiver<PowerMetricsSample>, Child), String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("powermetrics needs root".into());
        }
        let mut child = Command::new("powermetrics")
            .args(["--samplers", "cpu_power", "-i", "1000"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start powermetrics: {e}"))?;
        let out = child.stdout.take().ok_or("powermetrics: no output")?;
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            let mut cur = PowerMetricsSample::default();
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if parse_powermetrics_line(&line, &mut cur) {
                    if tx.send(std::mem::take(&mut cur)).is_err() {
                        break;
                    }
                }
            }
        });
        Ok((rx, child))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ps_times_parse() {
        let s = parse_ps_line("  1-02:03:04.50  20480\n").unwrap();
        assert_eq!(s.cpu_seconds, 86400.0 + 2.0 * 3600.0 + 3.0 * 60.0 + 4.5);
        assert_eq!(s.rss_bytes, 20480 * 1024);
        assert_eq!(parse_ps_line("0:01.25 100").unwrap().cpu_seconds, 1.25);
        assert!(parse_ps_line("").is_none());
        assert!(parse_ps_line("x y").is_none());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn proc_stat_fields_are_counted_after_the_command_name() {
        // proc(5): pid (comm) state ppid pgrp session tty_nr tpgid flags minflt cminflt
        // majflt cmajflt utime stime cutime cstime priority nice num_threads itrealvalue
        // starttime …; a command name may hold spaces and parentheses.
        let line = "42 (a) (b c) S 1 42 42 0 -1 4194304 10 0 0 0 \
                    700 300 0 0 20 0 1 0 123456 1000 50 18446744073709551615";
        let f = imp::parse_stat(line).unwrap();
        assert_eq!(
            (f.state, f.utime, f.stime, f.start_ticks),
            ('S', 700, 300, 123456)
        );
        assert!(imp::parse_stat("42 (x) S 1").is_none());
    }

    #[test]
    fn powermetrics_lines_parse() {
        let text = "CPU Power: 1234 mW\nGPU Power: 56 mW\nANE Power: 789 mW\n\
                    Combined Power (CPU + GPU + ANE): 2079 mW\n";
        let mut s = PowerMetricsSample::default();
        let ends: Vec<bool> = text
            .lines()
            .map(|l| parse_powermetrics_line(l, &mut s))
            .collect();
        assert_eq!(ends, vec![false, false, false, true]);
        assert_eq!(s.cpu_mw, Some(1234.0));
        assert_eq!(s.ane_mw, Some(789.0));
        assert_eq!(s.combined_mw, Some(2079.0));
        let mut s = PowerMetricsSample::default();
        assert!(parse_powermetrics_line("Package Power: 3.5 W", &mut s));
        assert_eq!(s.combined_mw, Some(3500.0));
    }

    #[test]
    fn rapl_counter_wraps() {
        assert_eq!(watts_between(1_000_000, 3_000_000, 0, 2.0), Some(1.0));
        // 10 J range; counter went 9 J -> 1 J: 2 J used in 1 s.
        assert_eq!(
            watts_between(9_000_000, 1_000_000, 10_000_000, 1.0),
            Some(2.0)
        );
        assert_eq!(watts_between(5, 1, 0, 1.0), None);
    }

    #[test]
    fn rapl_reads_package_zones_of_a_fake_powercap() {
        let d = tempfile::tempdir().unwrap();
        let mk = |name: &str, zname: &str, e: u64| {
            let z = d.path().join(name);
            std::fs::create_dir_all(&z).unwrap();
            std::fs::write(z.join("name"), zname).unwrap();
            std::fs::write(z.join("energy_uj"), e.to_string()).unwrap();
            std::fs::write(z.join("max_energy_range_uj"), "262143328850").unwrap();
        };
        mk("intel-rapl:0", "package-0", 1_000_000);
        mk("intel-rapl:0:0", "core", 5);
        mk("intel-rapl:1", "psys", 7);
        let mut r = Rapl::open(d.path()).unwrap();
        assert_eq!(r.zones.len(), 1);
        assert_eq!(r.sample(), None);
        std::thread::sleep(std::time::Duration::from_millis(100));
        std::fs::write(d.path().join("intel-rapl:0/energy_uj"), "2000000").unwrap();
        let w = r.sample().unwrap();
        // 1 J over ≥ 0.1 s (and surely less than 5 s).
        assert!(w > 0.2 && w <= 10.0, "{w}");
        let empty = tempfile::tempdir().unwrap();
        let m = PowerMonitor::rapl_at(empty.path());
        assert!(m.unavailable.is_some());
    }
}
