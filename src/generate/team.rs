//! A fixed team of threads for the one-token forward pass, in the manner of OpenMP's
//! `parallel for`: each stage is cut into a fixed number of static shares (share `j` of `S`
//! is rows `j·R/S..(j+1)·R/S`), and the caller and `size − 1` helper threads claim shares
//! from an atomic counter until none is left.
//!
//! Why not rayon here: decoding one token is ~30 short parallel regions (5 per layer plus
//! the classifier), each a few microseconds of memory-bound work. With a work-stealing pool
//! the idle worker yields and then sleeps between regions, and waking it costs a futex and a
//! scheduler pass per region; on stories15m that was ~10% of the time per token. A spinning
//! helper picks a stage up within a few hundred nanoseconds.
//!
//! When the cores are shared (another process busy, a trainer beside the dashboard) a helper
//! may not be running when a stage starts. Two rules keep that from stalling generation:
//!
//! - **Claiming, not assignment.** No share belongs to a thread: the caller claims shares
//!   too, so a stage whose helpers are descheduled is finished by the caller alone, at
//!   single-thread speed, instead of waiting a scheduler slice for each absent helper. The
//!   shares and their arithmetic do not depend on who runs them, so the output is the same.
//! - **Spin briefly, yield, then park.** An idle helper spins for [`SPIN_FOR`] (longer than
//!   the gap between stages), then calls `yield_now` until [`YIELD_UNTIL`], then parks until
//!   [`Team::run`] unparks it, so it does not hold a core that other work needs. The caller,
//!   once every share is claimed, waits for helpers still running one the same way, parking on
//!   a condition variable that the last helper signals.
//!
//! [`Team::stats`] counts parks and who ran the shares.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a waiting thread spins (re-checking with `spin_loop`) before it starts yielding.
pub const SPIN_FOR: Duration = Duration::from_micros(50);

/// Until when (from the start of the wait) a waiting thread yields its core between checks;
/// after this it parks.
pub const YIELD_UNTIL: Duration = Duration::from_micros(500);

/// Shares per member of a stage: finer than one per thread, so that a helper descheduled in
/// the middle of a share holds back only a small part of the stage.
const SHARES_PER_MEMBER: usize = 4;

/// One stage's job: called once per share with the share's index.
type Job<'a> = &'a (dyn Fn(usize) + Sync);

/// Counters of a [`Team`] since it was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TeamStats {
    /// Stages run with helpers (stages of a one-member team are not counted).
    pub stages: u64,
    /// Shares the caller ran.
    pub caller_shares: u64,
    /// Shares the helpers ran.
    pub helper_shares: u64,
    /// Times a helper parked because no stage came within [`YIELD_UNTIL`].
    pub helper_parks: u64,
    /// Times the caller parked waiting for a helper to finish a share.
    pub caller_parks: u64,
}

/// Where a waiting thread is: spinning, yielding, or due to park.
struct Backoff {
    since: Instant,
    spins: u32,
}

enum Wait {
    Spin,
    Yield,
    Park,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff {
            since: Instant::now(),
            spins: 0,
        }
    }

    /// Spins once (most calls), or says to yield or to park once the windows have passed.
    fn step(&mut self) -> Wait {
        self.spins = self.spins.wrapping_add(1);
        // Reading the clock costs ~20 ns: every 64th check.
        if !self.spins.is_multiple_of(64) {
            std::hint::spin_loop();
            return Wait::Spin;
        }
        let waited = self.since.elapsed();
        if waited < SPIN_FOR {
            std::hint::spin_loop();
            Wait::Spin
        } else if waited < YIELD_UNTIL {
            std::thread::yield_now();
            Wait::Yield
        } else {
            Wait::Park
        }
    }
}

struct Shared {
    /// Shares per stage.
    shares: usize,
    /// Bumped by [`Team::run`] to start a stage (or to wake helpers for exit).
    epoch: AtomicU64,
    /// The next share to claim; `≥ shares` when all are claimed.
    next: AtomicUsize,
    /// Shares of the current stage finished.
    done: AtomicUsize,
    /// Points at the current stage's [`Job`] (a fat reference on the caller's stack),
    /// valid from the stage's start until `done` reaches `shares`.
    job: AtomicPtr<()>,
    /// A helper's share panicked in the current stage.
    panicked: AtomicBool,
    quit: AtomicBool,
    /// Helpers claim nothing while set (tests: a helper the OS does not schedule).
    held: AtomicBool,
    /// The caller is parked (or about to park) on `wake` until `done` reaches `shares`.
    caller_waiting: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
    helper_shares: AtomicU64,
    helper_parks: AtomicU64,
}

/// The caller plus helper threads claiming the shares of each stage; see the module docs.
pub struct Team {
    shared: Arc<Shared>,
    helpers: Vec<JoinHandle<()>>,
    stages: AtomicU64,
    caller_shares: AtomicU64,
    caller_parks: AtomicU64,
}

impl Team {
    /// A team of `size` members (the caller counts as one; `size ≤ 1` runs every stage on
    /// the caller alone, as one share).
    pub fn new(size: usize) -> Team {
        let size = size.max(1);
        let shared = Arc::new(Shared {
            shares: if size == 1 {
                1
            } else {
                size * SHARES_PER_MEMBER
            },
            epoch: AtomicU64::new(0),
            next: AtomicUsize::new(usize::MAX / 2),
            done: AtomicUsize::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            panicked: AtomicBool::new(false),
            quit: AtomicBool::new(false),
            held: AtomicBool::new(false),
            caller_waiting: AtomicBool::new(false),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            helper_shares: AtomicU64::new(0),
            helper_parks: AtomicU64::new(0),
        });
        let mut helpers = Vec::new();
        for index in 1..size {
            let sh = shared.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("anetrain-gen-{index}"))
                .spawn(move || helper(&sh));
            match spawned {
                Ok(h) => helpers.push(h),
                // Fewer threads than asked is slower, not wrong.
                Err(_) => break,
            }
        }
        Team {
            shared,
            helpers,
            stages: AtomicU64::new(0),
            caller_shares: AtomicU64::new(0),
            caller_parks: AtomicU64::new(0),
        }
    }

    /// Members, the caller included.
    pub fn size(&self) -> usize {
        self.helpers.len() + 1
    }

    /// Shares per stage: the job of [`run`](Self::run) is called with `0..shares()`.
    pub fn shares(&self) -> usize {
        self.shared.shares
    }

    /// The counters so far.
    pub fn stats(&self) -> TeamStats {
        TeamStats {
            stages: self.stages.load(Ordering::Relaxed),
            caller_shares: self.caller_shares.load(Ordering::Relaxed),
            helper_shares: self.shared.helper_shares.load(Ordering::Relaxed),
            helper_parks: self.shared.helper_parks.load(Ordering::Relaxed),
            caller_parks: self.caller_parks.load(Ordering::Relaxed),
        }
    }

    /// While `held`, the helpers claim no share (they wait, and park, as if the OS did not
    /// run them), so every stage is the caller's alone. For tests of that situation.
    #[doc(hidden)]
    pub fn hold_helpers(&self, held: bool) {
        self.shared.held.store(held, Ordering::SeqCst);
    }

    /// Runs `job(j)` for every share index `j` in `0..shares()`, each exactly once, on the
    /// caller and whichever helpers are running, and returns when all have finished. A panic
    /// in any share is re-raised here (after the stage has finished).
    pub fn run(&self, job: &(dyn Fn(usize) + Sync)) {
        let sh = &*self.shared;
        if self.helpers.is_empty() {
            for j in 0..sh.shares {
                job(j);
            }
            return;
        }
        self.stages.fetch_add(1, Ordering::Relaxed);
        let job_ref: Job = job;
        sh.job
            .store(&job_ref as *const Job as *mut (), Ordering::Relaxed);
        sh.done.store(0, Ordering::Relaxed);
        // Release: a helper whose claim reads this value (or a later one of the same stage)
        // sees the job pointer and the reset `done`.
        sh.next.store(0, Ordering::Release);
        sh.epoch.fetch_add(1, Ordering::Release);
        for h in &self.helpers {
            h.thread().unpark();
        }
        // Claim shares until none is left; a panic in one is kept until the stage is over,
        // since helpers may still be reading `job_ref`.
        let mut mine = 0;
        let mut panic = None;
        loop {
            let j = sh.next.fetch_add(1, Ordering::AcqRel);
            if j >= sh.shares {
                break;
            }
            if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(j))) {
                panic.get_or_insert(p);
            }
            mine += 1;
        }
        self.caller_shares.fetch_add(mine as u64, Ordering::Relaxed);
        if sh.done.fetch_add(mine, Ordering::AcqRel) + mine != sh.shares {
            self.wait_for_helpers();
        }
        if let Some(p) = panic {
            std::panic::resume_unwind(p);
        }
        if sh.panicked.swap(false, Ordering::Relaxed) {
            panic!("a generation worker thread panicked");
        }
    }

    /// Waits until every share of the stage is done: spins, yields, then parks on the
    /// condition variable the helper finishing the last share signals.
    fn wait_for_helpers(&self) {
        let sh = &*self.shared;
        let finished = || sh.done.load(Ordering::Acquire) == sh.shares;
        let mut backoff = Backoff::new();
        while !finished() {
            if let Wait::Park = backoff.step() {
                self.caller_parks.fetch_add(1, Ordering::Relaxed);
                sh.caller_waiting.store(true, Ordering::SeqCst);
                let mut g = sh.lock.lock().unwrap_or_else(|e| e.into_inner());
                while sh.done.load(Ordering::SeqCst) != sh.shares {
                    // The timeout only bounds a wake-up lost to a bug; the helper signals.
                    g = sh
                        .wake
                        .wait_timeout(g, Duration::from_millis(10))
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                sh.caller_waiting.store(false, Ordering::SeqCst);
                break;
            }
        }
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        self.shared.quit.store(true, Ordering::Release);
        self.shared.epoch.fetch_add(1, Ordering::Release);
        for h in self.helpers.drain(..) {
            h.thread().unpark();
            let _ = h.join();
        }
    }
}

fn helper(sh: &Shared) {
    let mut seen = 0u64;
    loop {
        let mut backoff = Backoff::new();
        loop {
            if sh.quit.load(Ordering::Acquire) {
                return;
            }
            let e = sh.epoch.load(Ordering::Acquire);
            if e != seen && !sh.held.load(Ordering::Relaxed) {
                seen = e;
                break;
            }
            if let Wait::Park = backoff.step() {
                sh.helper_parks.fetch_add(1, Ordering::Relaxed);
                // Woken by `run` (unpark) or spuriously; either way the loop re-checks.
                std::thread::park();
                backoff = Backoff::new();
            }
        }
        loop {
            let j = sh.next.fetch_add(1, Ordering::AcqRel);
            if j >= sh.shares {
                break;
            }
            // SAFETY: claiming share `j < shares` of a stage (the Acquire above pairs with
            // `run`'s Release store of `next`, made after the job pointer) means the stage's
            // `done` has not reached `shares`, so `run` keeps the `Job` alive until this
            // share is counted below.
            let job: Job = unsafe { *(sh.job.load(Ordering::Relaxed) as *const Job) };
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(j))).is_err() {
                sh.panicked.store(true, Ordering::Relaxed);
            }
            sh.helper_shares.fetch_add(1, Ordering::Relaxed);
            if sh.done.fetch_add(1, Ordering::SeqCst) + 1 == sh.shares
                && sh.caller_waiting.load(Ordering::SeqCst)
            {
                let _g = sh.lock.lock().unwrap_or_else(|e| e.into_inner());
                sh.wake.notify_one();
            }
        }
    }
}

/// A raw pointer to an output buffer whose disjoint parts the shares of a stage write.
#[derive(Clone, Copy)]
pub struct SharedOut(pub *mut f32);
// SAFETY: used only to hand disjoint parts of one buffer to the shares of a stage.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// The pointer (a method, so that closures capture the whole `SharedOut`).
    pub fn ptr(self) -> *mut f32 {
        self.0
    }
}

/// Share `j`'s part `lo..hi` of `len` items split into `s` near-equal static parts.
pub fn share(j: usize, s: usize, len: usize) -> (usize, usize) {
    (j * len / s, (j + 1) * len / s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Runs 50 stages adding `stage` to every element of its share; checks each share ran
    /// once per stage.
    fn fifty_stages(team: &Team) {
        let s = team.shares();
        let mut out = vec![0usize; 1000];
        for stage in 1..=50 {
            let p = SharedOut(out.as_mut_ptr() as *mut f32);
            let calls = AtomicUsize::new(0);
            team.run(&|j| {
                calls.fetch_add(1, Ordering::Relaxed);
                let (lo, hi) = share(j, s, 1000);
                for k in lo..hi {
                    // SAFETY: shares are disjoint and inside `out`.
                    unsafe { *(p.ptr() as *mut usize).add(k) += stage };
                }
            });
            assert_eq!(calls.load(Ordering::Relaxed), s);
        }
        assert!(out.iter().all(|&v| v == 50 * 51 / 2));
    }

    #[test]
    fn every_share_runs_once_per_stage() {
        for size in [1, 2, 3] {
            let team = Team::new(size);
            assert_eq!(team.size(), size);
            assert_eq!(team.shares(), if size == 1 { 1 } else { 4 * size });
            fifty_stages(&team);
            let st = team.stats();
            if size > 1 {
                assert_eq!(st.stages, 50);
                assert_eq!(
                    st.caller_shares + st.helper_shares,
                    50 * team.shares() as u64
                );
            }
        }
    }

    /// A helper idle for longer than the spin and yield windows parks (and does not hold a
    /// core), and the next stage wakes it.
    #[test]
    fn idle_helpers_park_and_wake() {
        let team = Team::new(3);
        let t0 = Instant::now();
        while team.stats().helper_parks < 2 {
            assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", team.stats());
            std::thread::sleep(YIELD_UNTIL * 4);
        }
        let hits = AtomicUsize::new(0);
        team.run(&|_| {
            hits.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(hits.load(Ordering::Relaxed), team.shares());
    }

    /// Helpers that do not run (as when other processes hold the cores) do not hold a stage
    /// up: the caller claims and runs every share itself, and the results are the same.
    #[test]
    fn the_caller_finishes_a_stage_its_helpers_do_not_run() {
        let team = Team::new(3);
        team.hold_helpers(true);
        let before = team.stats();
        fifty_stages(&team);
        let st = team.stats();
        assert_eq!(st.helper_shares, before.helper_shares);
        assert_eq!(
            st.caller_shares - before.caller_shares,
            50 * team.shares() as u64
        );
        // Released, they take part again.
        team.hold_helpers(false);
        let t0 = Instant::now();
        while team.stats().helper_shares == st.helper_shares {
            assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", team.stats());
            team.run(&|_| std::thread::sleep(Duration::from_micros(200)));
        }
    }

    /// The caller, left waiting for a helper's long share, parks (instead of spinning on a
    /// core the helper may need) and is woken when the share is done.
    #[test]
    fn a_caller_waiting_long_for_a_helper_parks() {
        let team = Team::new(2);
        let caller = std::thread::current().id();
        let t0 = Instant::now();
        loop {
            assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", team.stats());
            let helper_ran = AtomicBool::new(false);
            let caller_slept = AtomicBool::new(false);
            team.run(&|_| {
                if std::thread::current().id() == caller {
                    // The caller's first share gives the helper time to claim one.
                    if !caller_slept.swap(true, Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                } else {
                    helper_ran.store(true, Ordering::Relaxed);
                    std::thread::sleep(YIELD_UNTIL * 20);
                }
            });
            // Only a stage whose last share was a helper's leaves the caller waiting.
            if helper_ran.load(Ordering::Relaxed) && team.stats().caller_parks > 0 {
                break;
            }
        }
    }

    #[test]
    fn a_panic_in_a_helper_reaches_the_caller() {
        let team = Team::new(2);
        let caller = std::thread::current().id();
        let t0 = Instant::now();
        // Until a helper has run (and panicked in) a share.
        loop {
            assert!(t0.elapsed() < Duration::from_secs(20));
            let helper_ran = AtomicBool::new(false);
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                team.run(&|_| {
                    if std::thread::current().id() != caller {
                        helper_ran.store(true, Ordering::Relaxed);
                        panic!("helper share fails");
                    }
                    std::thread::sleep(Duration::from_millis(1));
                })
            }));
            assert_eq!(r.is_err(), helper_ran.load(Ordering::Relaxed));
            if r.is_err() {
                break;
            }
        }
        // The team still works afterwards.
        fifty_stages(&team);
    }

    #[test]
    fn a_panic_in_the_callers_share_is_raised_after_the_stage() {
        let team = Team::new(2);
        team.hold_helpers(true);
        let ran = AtomicUsize::new(0);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            team.run(&|j| {
                ran.fetch_add(1, Ordering::Relaxed);
                assert_ne!(j, 0, "share 0 fails");
            })
        }));
        assert!(r.is_err());
        // Every share still ran (none was left to a helper that might never come).
        assert_eq!(ran.load(Ordering::Relaxed), team.shares());
        team.hold_helpers(false);
        fifty_stages(&team);
    }
}
