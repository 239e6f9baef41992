//! Data-parallel training over MPI, end to end: `mpirun -np 2` runs of an anetrain built with
//! `--features mpi` against one-process runs of this build.
//!
//! The MPI build is `$ANETRAIN_MPI_BIN` (CI builds it into a separate target folder and sets
//! it), else this test's own binary when the suite itself is built with `--features mpi`.
//! Without it or without `mpirun` the tests are skipped with a message — under `CI=true`
//! that is a failure instead.
//!
//! The reference for "2 ranks × batch B" is an independent code path: one process with
//! `--accum 2`, which draws the same windows and sums the same micro-step gradients in one
//! address space.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `(mpirun, the MPI build of anetrain)`, or None (skip) outside CI.
fn mpi() -> Option<(PathBuf, PathBuf)> {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    let bin = std::env::var_os("ANETRAIN_MPI_BIN")
        .map(PathBuf::from)
        .or_else(|| cfg!(feature = "mpi").then(|| env!("CARGO_BIN_EXE_anetrain").into()));
    let mpirun = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("mpirun"))
            .find(|p| p.is_file())
    });
    let why = match (&mpirun, &bin) {
        (None, _) => "no mpirun on PATH (install Open MPI: apt-get install openmpi-bin)".into(),
        (_, None) => "ANETRAIN_MPI_BIN is not set and this suite was built without \
                      --features mpi"
            .to_string(),
        (_, Some(b)) if !b.is_file() => format!("ANETRAIN_MPI_BIN={} does not exist", b.display()),
        _ => return Some((mpirun.unwrap(), bin.unwrap())),
    };
    if ci {
        panic!("CI=true: the distributed tests cannot run: {why}");
    }
    eprintln!("skipping the distributed tests: {why}");
    None
}

fn plain_bin() -> &'static str {
    env!("CARGO_BIN_EXE_anetrain")
}

/// Token data of a small repetitive language (ids below 512, stories260k's vocabulary).
fn write_tokens(path: &Path, bad_id: bool) {
    let mut rng = anetrain::util::rng::Rng::new(9);
    let mut toks: Vec<u16> = Vec::new();
    while toks.len() < 30_000 {
        toks.push(1);
        let start = rng.below(100) as u16;
        for i in 0..(5 + rng.below(30) as u16) {
            toks.push(3 + (start + 7 * i) % 500);
        }
    }
    if bad_id {
        toks[100] = 600;
    }
    let bytes: Vec<u8> = toks.iter().flat_map(|t| t.to_le_bytes()).collect();
    std::fs::write(path, bytes).unwrap();
}

struct Run {
    dir: tempfile::TempDir,
}

impl Run {
    fn new() -> Run {
        let dir = tempfile::tempdir().unwrap();
        write_tokens(&dir.path().join("tokens.bin"), false);
        Run { dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// `anetrain train` arguments for a run into folder `out`.
    fn args(&self, out: &str, backend: &str, steps: u64, extra: &[&str]) -> Vec<String> {
        let mut a: Vec<String> = [
            "train",
            "--model",
            "stories260k",
            "--data",
            self.path("tokens.bin").to_str().unwrap(),
            "--out",
            self.path(out).to_str().unwrap(),
            "--backend",
            backend,
            "--steps",
            &steps.to_string(),
            "--batch",
            "2",
            "--seq",
            "16",
            "--lr",
            "3e-3",
            "--eval-every",
            "0",
            "--ckpt-every",
            "5",
            "--threads",
            "1",
            "--quiet",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    }
}

fn check(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn one_process(args: &[String]) -> Output {
    check(
        Command::new(plain_bin()).args(args).output().unwrap(),
        "one-process run",
    )
}

fn mpirun_cmd(mpirun: &Path) -> Command {
    let mut c = Command::new(mpirun);
    c.args(["--oversubscribe", "--allow-run-as-root"]);
    c
}

/// `mpirun -np 2 BIN ARGS --distributed mpi`.
fn two_ranks(mpi: &(PathBuf, PathBuf), args: &[String]) -> Output {
    let out = mpirun_cmd(&mpi.0)
        .args(["-np", "2"])
        .arg(&mpi.1)
        .args(args)
        .args(["--distributed", "mpi"])
        .output()
        .unwrap();
    check(out, "mpirun -np 2")
}

/// (step, loss, grad_norm) of every `step` event.
fn steps(log: &Path) -> Vec<(u64, u64, u64)> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["type"] == "step")
        .map(|v| {
            (
                v["step"].as_u64().unwrap(),
                v["loss"].as_f64().unwrap().to_bits(),
                v["grad_norm"].as_f64().unwrap().to_bits(),
            )
        })
        .collect()
}

/// The checkpoint's state: parameters, moments, step, AdamW t, sampler and loss scale.
fn state(ckpt: &Path) -> (Vec<u32>, u64, u64, u64, u64, u32) {
    let ck = anetrain::train::checkpoint::load(ckpt).unwrap();
    let h = &ck.header;
    let bits: Vec<u32> = ck
        .params
        .data
        .iter()
        .chain(&ck.m)
        .chain(&ck.v)
        .map(|x| x.to_bits())
        .collect();
    (
        bits,
        h.step,
        h.adam_t,
        h.sampler_rng,
        h.sampler_cursor,
        h.loss_scale.to_bits(),
    )
}

fn same_run(r: &Run, a: &str, b: &str, n: usize) {
    let (la, lb) = (
        steps(&r.path(a).join("run.jsonl")),
        steps(&r.path(b).join("run.jsonl")),
    );
    assert_eq!(la.len(), n, "{a}: {la:?}");
    assert_eq!(la, lb, "losses and gradient norms of {a} and {b}");
    assert!(
        state(&r.path(a).join("model.ckpt")) == state(&r.path(b).join("model.ckpt")),
        "the checkpoints of {a} and {b} hold different states"
    );
}

fn bit_for_bit(backend: &str) {
    let Some(mpi) = mpi() else { return };
    let r = Run::new();
    one_process(&r.args("one", backend, 20, &["--accum", "2"]));
    two_ranks(&mpi, &r.args("two", backend, 20, &[]));
    same_run(&r, "one", "two", 20);
    let log = std::fs::read_to_string(r.path("two").join("run.jsonl")).unwrap();
    let head: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    assert_eq!(head["world_size"], 2, "{head}");
    assert_eq!(head["tokens_per_step"], 2 * 2 * 16, "{head}");
    let ck = anetrain::train::checkpoint::load(&r.path("two").join("model.ckpt")).unwrap();
    assert_eq!(ck.header.world_size, 2);
}

#[test]
fn two_ranks_equal_one_process_with_accum_2_bit_for_bit_cpu() {
    bit_for_bit("cpu");
}

#[test]
fn two_ranks_equal_one_process_with_accum_2_bit_for_bit_ane_sim() {
    bit_for_bit("ane-sim");
}

#[test]
fn resume_across_rank_counts_continues_the_same_curve() {
    let Some(mpi) = mpi() else { return };
    let r = Run::new();
    // The uninterrupted reference: one process, 20 steps.
    one_process(&r.args("ref", "cpu", 20, &["--accum", "2"]));
    // 2 ranks for 10 steps, then one process (it takes accum 2 from the checkpoint).
    two_ranks(&mpi, &r.args("a", "cpu", 20, &["--until", "10"]));
    one_process(&r.args("a", "cpu", 20, &["--resume"]));
    same_run(&r, "ref", "a", 20);
    // One process for 10 steps, then 2 ranks (accum 1 each).
    one_process(&r.args("b", "cpu", 20, &["--accum", "2", "--until", "10"]));
    two_ranks(&mpi, &r.args("b", "cpu", 20, &["--resume"]));
    same_run(&r, "ref", "b", 20);
    // A global batch that 2 ranks cannot share is refused by name.
    one_process(&r.args("c", "cpu", 20, &["--accum", "3", "--until", "2"]));
    let out = mpirun_cmd(&mpi.0)
        .args(["-np", "2"])
        .arg(&mpi.1)
        .args(r.args("c", "cpu", 20, &["--resume", "--distributed", "mpi"]))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("3 micro-steps per update") && err.contains("cannot share them"),
        "{err}"
    );
}

/// Waits for `child` at most `limit`; kills it (it is ours) and fails past that.
fn wait_within(child: &mut Child, limit: Duration, what: &str) -> (std::process::ExitStatus, f64) {
    let t = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return (st, t.elapsed().as_secs_f64());
        }
        if t.elapsed() > limit {
            // mpirun passes SIGTERM on to its ranks; SIGKILL only if it does not go.
            // SAFETY: kill(2) on the pid of our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            std::thread::sleep(Duration::from_secs(5));
            let _ = child.kill();
            panic!("{what}: still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn stderr_of(child: &mut Child) -> String {
    let mut s = String::new();
    use std::io::Read;
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut s);
    }
    s
}

/// Pid of the process of rank `rank` among the descendants of `root` (Open MPI tells each
/// its rank in OMPI_COMM_WORLD_RANK).
fn rank_pid(root: u32, rank: usize) -> Option<u32> {
    let want = format!("OMPI_COMM_WORLD_RANK={rank}");
    let mut family = vec![root];
    let mut found = None;
    for _ in 0..4 {
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // Field 4 (after the parenthesised name) is the parent pid.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if ppid.is_some_and(|p| family.contains(&p)) && !family.contains(&pid) {
                family.push(pid);
                let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
                let is_rank = env.split(|&b| b == 0).any(|kv| kv == want.as_bytes());
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                if is_rank && String::from_utf8_lossy(&cmd).contains("anetrain") {
                    found = Some(pid);
                }
            }
        }
    }
    found
}

#[test]
fn killing_a_rank_ends_every_rank_and_the_checkpoint_resumes() {
    let Some(mpi) = mpi() else { return };
    let r = Run::new();
    let mut child = mpirun_cmd(&mpi.0)
        .args(["-np", "2"])
        .arg(&mpi.1)
        .args(r.args("k", "cpu", 1_000_000, &["--distributed", "mpi"]))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let ckpt = r.path("k").join("model.ckpt");
    let log = r.path("k").join("run.jsonl");
    // Let it write a few checkpoints.
    let t = Instant::now();
    while !(ckpt.exists() && log.exists() && steps(&log).len() >= 12) {
        if t.elapsed() > Duration::from_secs(120) || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            panic!("the run did not get going: {}", stderr_of(&mut child));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let victim = rank_pid(child.id(), 1).expect("the pid of rank 1");
    let killed = Command::new("kill")
        .args(["-9", &victim.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let (st, secs) = wait_within(&mut child, Duration::from_secs(30), "mpirun after kill -9");
    let err = stderr_of(&mut child);
    assert!(
        !st.success(),
        "mpirun exited successfully after losing a rank"
    );
    assert!(
        err.contains("rank 1"),
        "the message names rank 1 ({secs:.1} s): {err}"
    );
    // The last checkpoint is whole and continues on one process.
    let at = anetrain::train::checkpoint::load(&ckpt)
        .expect("the checkpoint loads")
        .header
        .step;
    let until = (at + 2).to_string();
    one_process(&r.args("k", "cpu", 1_000_000, &["--resume", "--until", &until]));
    let ck = anetrain::train::checkpoint::load(&ckpt).unwrap();
    assert_eq!(ck.header.step, at + 2);
}

#[test]
fn a_failing_rank_stops_every_rank_naming_itself() {
    let Some(mpi) = mpi() else { return };
    let r = Run::new();
    // Rank 1 gets token data with an id outside the vocabulary (MPMD: one program line per
    // rank); rank 0 would wait for it forever without the abort.
    write_tokens(&r.path("bad.bin"), true);
    let good = r.args("f", "cpu", 50, &["--distributed", "mpi"]);
    let mut bad = good.clone();
    let i = bad.iter().position(|a| a == "--data").unwrap();
    bad[i + 1] = r.path("bad.bin").to_str().unwrap().into();
    let mut child = mpirun_cmd(&mpi.0)
        .args(["-np", "1"])
        .arg(&mpi.1)
        .args(&good)
        .args([":", "-np", "1"])
        .arg(&mpi.1)
        .args(&bad)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (st, _) = wait_within(
        &mut child,
        Duration::from_secs(60),
        "mpirun with a failing rank",
    );
    let err = stderr_of(&mut child);
    assert!(!st.success());
    assert!(
        err.contains("rank 1 of 2") && err.contains("600") && err.contains("MPI_Abort"),
        "{err}"
    );
}

#[test]
fn diverged_ranks_are_stopped_by_the_checksum() {
    let Some(mpi) = mpi() else { return };
    let r = Run::new();
    let args = r.args(
        "d",
        "cpu",
        40,
        &["--distributed", "mpi", "--check-every", "4"],
    );
    // Rank 1 nudges one parameter after step 6; the comparison after step 8 catches it.
    let mut child = mpirun_cmd(&mpi.0)
        .args(["-np", "1"])
        .arg(&mpi.1)
        .args(&args)
        .args([":", "-np", "1", "env", "ANETRAIN_PERTURB_AT=6"])
        .arg(&mpi.1)
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (st, _) = wait_within(
        &mut child,
        Duration::from_secs(60),
        "mpirun with diverged ranks",
    );
    let err = stderr_of(&mut child);
    assert!(!st.success());
    assert!(
        err.contains("after step 8 the ranks' parameters differ"),
        "{err}"
    );
    // Rank 0's last checkpoint (step 5) is the one from before the divergence was seen.
    let ck = anetrain::train::checkpoint::load(&r.path("d").join("model.ckpt")).unwrap();
    assert_eq!(ck.header.step, 5);
}
