//! Data-parallel training: every rank holds the whole model, computes the gradients of its
//! share of the global batch, and the ranks sum them so that every rank takes the same
//! optimizer step. The engine is MPI (cargo feature `mpi`, the `mpi` crate over the system's
//! Open MPI or MPICH); the default build has no MPI and [`join`] says how to get it.
//!
//! What a step exchanges, and in which order (docs/DISTRIBUTED.md has the cost model):
//!
//! * gradient buckets — the final norm with the untied classifier, each layer from the last to
//!   the first, the embedding — each handed over as soon as the backward pass has finished it
//!   ([`crate::train::step::GradHook`]) to a communication thread, which reduces it while the
//!   backward goes on;
//! * one `f64` per rank: the loss sums;
//! * one flag per rank: whether a stop was requested (a signal reaches ranks at different
//!   moments; all stop after the same step);
//! * every `--check-every` steps and at the end, a checksum of the parameters and moments.
//!
//! The reduction sums in rank order: bucket values are cut into one chunk per rank, an
//! all-to-all brings chunk j of every rank to rank j, which adds them as
//! `((g₀ + g₁) + g₂) + …`, and an all-gather returns the sums to everyone. That is exactly
//! the order in which one process accumulates micro-steps (see [`super::stepper`]), so
//! W ranks × `--accum 1` give bit for bit the result of one process with `--accum W`. The
//! traffic is that of a ring all-reduce, 2·(W−1)/W of the bucket per rank.

use anyhow::Result;

/// The engine of `--distributed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// MPI: start with `mpirun -np N anetrain ...` (or `srun`); needs a build with
    /// `--features mpi`.
    Mpi,
}

/// Cumulative communication time of one process.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SyncStats {
    /// Milliseconds the communication thread spent reducing buckets (overlapped or not).
    pub reduce_ms: f64,
    /// Milliseconds the step waited for the reductions after its backward pass: the part
    /// of `reduce_ms` not hidden behind computation.
    pub wait_ms: f64,
    /// Gradient values reduced.
    pub values: u64,
    /// Buckets reduced.
    pub buckets: u64,
}

/// A process's place in a data-parallel run and the collective operations training needs.
/// Every rank must make the same calls in the same order.
pub trait Group: Send {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    /// A bucket of the current step's gradients is final: `pieces` are (arena offset,
    /// values) of this rank's last micro-step; `acc`, when given, holds the sum of its
    /// earlier micro-steps (the whole arena), added first. The reduction starts at once.
    fn bucket_ready(&mut self, pieces: &[(usize, &[f32])], acc: Option<&[f32]>);
    /// Waits for every bucket handed over since the last call and writes the sums over
    /// the ranks into `grads` (the whole arena). Returns the milliseconds waited.
    fn finish(&mut self, grads: &mut [f32]) -> Result<f64>;
    /// The sum over the ranks of one value each, in rank order, the same on every rank.
    fn sum_f64(&mut self, x: f64) -> f64;
    /// Every rank's value, by rank.
    fn gather_u64(&mut self, x: u64) -> Vec<u64>;
    /// Whether any rank passed true.
    fn any(&mut self, flag: bool) -> bool {
        self.gather_u64(flag as u64).iter().any(|&v| v != 0)
    }
    /// Returns when every rank has called it.
    fn barrier(&mut self);
    /// Communication time so far.
    fn stats(&self) -> SyncStats;
}

/// Joins the run this process was started in (by `mpirun`/`srun`; a process started alone
/// is a run of one rank).
pub fn join(kind: Kind) -> Result<Box<dyn Group>> {
    match kind {
        #[cfg(feature = "mpi")]
        Kind::Mpi => Ok(Box::new(mpi_group::MpiGroup::join()?)),
        #[cfg(not(feature = "mpi"))]
        Kind::Mpi => anyhow::bail!(
            "--distributed mpi: this anetrain was built without MPI; build it with \
             `cargo build --release --features mpi` (needs an MPI library such as Open MPI, \
             and libclang; see docs/DISTRIBUTED.md)"
        ),
    }
}

/// Ends the whole run from this rank: prints `why` naming the rank, then `MPI_Abort`, which
/// makes the launcher stop every other rank. Returns (doing nothing) when MPI is not running.
pub fn abort(why: &str) {
    #[cfg(feature = "mpi")]
    mpi_group::abort(why);
    #[cfg(not(feature = "mpi"))]
    let _ = why;
}

/// The end of a data-parallel command, once every rank got there: `MPI_Finalize` (nothing
/// when MPI is not running). [`join`]ed groups may be dropped before or after.
pub fn finalize() {
    #[cfg(feature = "mpi")]
    mpi_group::finalize();
}

/// Ends a data-parallel command: [`finalize`] on success; on an error, [`abort`] with it
/// (so that no rank waits forever for this one). Without `distributed`, `r` as it is.
pub fn conclude<T>(distributed: bool, r: Result<T>) -> Result<T> {
    if distributed {
        match &r {
            Ok(_) => finalize(),
            Err(e) => abort(&format!("{e:#}")),
        }
    }
    r
}

/// The checksum the ranks compare: CRC-32 of each array's little-endian bytes, folded into
/// 64 bits with the lengths.
pub fn checksum(arrays: &[&[f32]]) -> u64 {
    let mut h = 0u64;
    for a in arrays {
        let mut c = crc32fast::Hasher::new();
        #[cfg(target_endian = "little")]
        {
            // SAFETY: any f32 is 4 initialised bytes; the byte view lives as long as `a`
            // and, on a little-endian machine, is its little-endian encoding.
            let bytes = unsafe { std::slice::from_raw_parts(a.as_ptr() as *const u8, a.len() * 4) };
            c.update(bytes);
        }
        #[cfg(not(target_endian = "little"))]
        for v in a.iter() {
            c.update(&v.to_le_bytes());
        }
        h = h.rotate_left(32) ^ c.finalize() as u64 ^ (a.len() as u64).rotate_left(17);
    }
    h
}

/// The rank-ordered sum of `w` equal chunks of `recv` (chunk i from rank i) into `out`:
/// `out[k] = ((recv₀[k] + recv₁[k]) + recv₂[k]) + …`.
pub fn sum_in_rank_order(recv: &[f32], w: usize, out: &mut [f32]) {
    let c = out.len();
    assert_eq!(
        recv.len(),
        w * c,
        "{} values for {w} chunks of {c}",
        recv.len()
    );
    out.copy_from_slice(&recv[..c]);
    for i in 1..w {
        for (o, &v) in out.iter_mut().zip(&recv[i * c..(i + 1) * c]) {
            *o += v;
        }
    }
}

/// Packs `pieces` (plus `acc` at the same offsets, added first) into `buf`.
pub fn pack(buf: &mut Vec<f32>, pieces: &[(usize, &[f32])], acc: Option<&[f32]>) {
    buf.clear();
    for &(off, vals) in pieces {
        match acc {
            Some(a) => buf.extend(
                a[off..off + vals.len()]
                    .iter()
                    .zip(vals)
                    .map(|(&x, &y)| x + y),
            ),
            None => buf.extend_from_slice(vals),
        }
    }
}

/// Writes packed values back to their (offset, length) places in `grads`.
pub fn unpack(grads: &mut [f32], places: &[(usize, usize)], buf: &[f32]) {
    let mut at = 0;
    for &(off, len) in places {
        grads[off..off + len].copy_from_slice(&buf[at..at + len]);
        at += len;
    }
    debug_assert_eq!(at, buf.len());
}

#[cfg(feature = "mpi")]
mod mpi_group {
    use super::{pack, sum_in_rank_order, unpack, Group, SyncStats};
    use anyhow::{bail, Context, Result};
    use mpi::environment::{Threading, Universe};
    use mpi::topology::SimpleCommunicator;
    use mpi::traits::*;
    use std::sync::mpsc::{channel, Receiver, Sender};
    use std::time::Instant;

    enum Job {
        Bucket(Vec<f32>),
        Quit,
    }

    struct Done {
        buf: Vec<f32>,
        ms: f64,
    }

    /// MPI_COMM_WORLD, with a thread that reduces gradient buckets. MPI calls of the main
    /// thread happen only while that thread is idle (between [`Group::finish`] and the next
    /// bucket), so MPI_THREAD_SERIALIZED suffices; MULTIPLE is asked for.
    pub struct MpiGroup {
        world: SimpleCommunicator,
        rank: usize,
        size: usize,
        jobs: Sender<Job>,
        done: Receiver<Done>,
        /// (offset, length) pieces of each bucket in flight, in order.
        in_flight: Vec<Vec<(usize, usize)>>,
        spare: Vec<Vec<f32>>,
        thread: Option<std::thread::JoinHandle<()>>,
        stats: SyncStats,
    }

    /// The MPI environment, from [`MpiGroup::join`] to [`finalize`] (not tied to the group:
    /// a rank that fails must abort, not finalize, when its state is dropped).
    struct Held(#[allow(dead_code)] Universe);
    // SAFETY: only moved into and out of the mutex, and dropped by `finalize` while no other
    // thread calls MPI.
    unsafe impl Send for Held {}
    static UNIVERSE: std::sync::Mutex<Option<Held>> = std::sync::Mutex::new(None);

    pub fn finalize() {
        let held = UNIVERSE.lock().map(|mut u| u.take()).unwrap_or(None);
        drop(held);
    }

    // SAFETY: the handles inside are MPI_COMM_WORLD and the MPI library's state, which any
    // thread may use under MPI_THREAD_SERIALIZED (checked in `join`) as long as no two
    // threads call MPI at once. The group is used by one thread at a time: the training
    // thread, or (through `bucket_ready`, which calls no MPI function, only a channel) a
    // worker of the step's pool while the training thread waits for it.
    unsafe impl Send for MpiGroup {}

    impl MpiGroup {
        pub fn join() -> Result<MpiGroup> {
            let (universe, got) = mpi::initialize_with_threading(Threading::Multiple)
                .context("--distributed mpi: MPI is already initialised in this process")?;
            if got < Threading::Serialized {
                bail!(
                    "--distributed mpi: the MPI library offers thread level {got:?}; \
                     anetrain needs MPI_THREAD_SERIALIZED or better (use an Open MPI or \
                     MPICH built with thread support)"
                );
            }
            let world = universe.world();
            let (rank, size) = (world.rank() as usize, world.size() as usize);
            if let Ok(mut u) = UNIVERSE.lock() {
                *u = Some(Held(universe));
            }
            let (jobs, job_rx) = channel::<Job>();
            let (done_tx, done) = channel::<Done>();
            let thread = std::thread::Builder::new()
                .name("anetrain-allreduce".into())
                .spawn(move || reduce_loop(job_rx, done_tx))
                .context("cannot start the all-reduce thread")?;
            Ok(MpiGroup {
                world,
                rank,
                size,
                jobs,
                done,
                in_flight: Vec::new(),
                spare: Vec::new(),
                thread: Some(thread),
                stats: SyncStats::default(),
            })
        }
    }

    /// The communication thread: each bucket is cut in one chunk per rank (zero padded),
    /// all-to-all, summed in rank order by its owner, all-gathered.
    fn reduce_loop(jobs: Receiver<Job>, done: Sender<Done>) {
        let world = SimpleCommunicator::world();
        let w = world.size() as usize;
        let (mut recv, mut own) = (Vec::<f32>::new(), Vec::<f32>::new());
        while let Ok(Job::Bucket(mut buf)) = jobs.recv() {
            let t = Instant::now();
            let n = buf.len();
            let c = n.div_ceil(w).max(1);
            buf.resize(c * w, 0.0);
            recv.resize(c * w, 0.0);
            own.resize(c, 0.0);
            world.all_to_all_into(&buf[..], &mut recv[..]);
            sum_in_rank_order(&recv, w, &mut own);
            world.all_gather_into(&own[..], &mut buf[..]);
            buf.truncate(n);
            let ms = t.elapsed().as_secs_f64() * 1e3;
            if done.send(Done { buf, ms }).is_err() {
                return;
            }
        }
    }

    impl Group for MpiGroup {
        fn rank(&self) -> usize {
            self.rank
        }

        fn size(&self) -> usize {
            self.size
        }

        fn bucket_ready(&mut self, pieces: &[(usize, &[f32])], acc: Option<&[f32]>) {
            let mut buf = self.spare.pop().unwrap_or_default();
            pack(&mut buf, pieces, acc);
            self.in_flight
                .push(pieces.iter().map(|&(o, v)| (o, v.len())).collect());
            self.stats.values += buf.len() as u64;
            self.stats.buckets += 1;
            // The thread lives as long as `self`; a failed send means it panicked, which
            // `finish` reports.
            let _ = self.jobs.send(Job::Bucket(buf));
        }

        fn finish(&mut self, grads: &mut [f32]) -> Result<f64> {
            let t = Instant::now();
            for places in std::mem::take(&mut self.in_flight) {
                let d = self
                    .done
                    .recv()
                    .context("the all-reduce thread of this rank stopped")?;
                unpack(grads, &places, &d.buf);
                self.stats.reduce_ms += d.ms;
                self.spare.push(d.buf);
            }
            let ms = t.elapsed().as_secs_f64() * 1e3;
            self.stats.wait_ms += ms;
            Ok(ms)
        }

        fn sum_f64(&mut self, x: f64) -> f64 {
            let mut all = vec![0f64; self.size];
            self.world.all_gather_into(&x, &mut all[..]);
            all.iter().fold(0.0, |s, &v| s + v)
        }

        fn gather_u64(&mut self, x: u64) -> Vec<u64> {
            let mut all = vec![0u64; self.size];
            self.world.all_gather_into(&x, &mut all[..]);
            all
        }

        fn barrier(&mut self) {
            self.world.barrier();
        }

        fn stats(&self) -> SyncStats {
            self.stats
        }
    }

    impl Drop for MpiGroup {
        fn drop(&mut self) {
            let _ = self.jobs.send(Job::Quit);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    pub fn abort(why: &str) {
        if !mpi::environment::is_initialized() || mpi::environment::is_finalized() {
            return;
        }
        let world = SimpleCommunicator::world();
        let (r, w) = (world.rank(), world.size());
        eprintln!("error: rank {r} of {w}: {why}");
        eprintln!("rank {r} of {w}: stopping every rank (MPI_Abort)");
        world.abort(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_order_sum_is_the_accumulation_order() {
        // Values whose sum depends on the grouping in f32.
        let g = [
            [1.0e8f32, 3.0, -7.5e-3],
            [-1.0e8, 1.0e-8, 2.5],
            [0.5, -3.0, 1.0e8],
        ];
        let recv: Vec<f32> = g.iter().flatten().copied().collect();
        let mut out = [0f32; 3];
        sum_in_rank_order(&recv, 3, &mut out);
        for k in 0..3 {
            // One process accumulating micro-steps: a zeroed arena, then += each in order.
            let mut acc = 0f32;
            for gi in &g {
                acc += gi[k];
            }
            assert_eq!(out[k].to_bits(), acc.to_bits(), "{k}");
        }
        assert_eq!(out[0], 0.5, "((1e8 + -1e8) + 0.5)");
    }

    #[test]
    fn pack_then_unpack_places_every_piece() {
        let acc: Vec<f32> = (0..10).map(|i| i as f32 * 100.0).collect();
        let a = [1.0f32, 2.0];
        let b = [3.0f32, 4.0, 5.0];
        let pieces = [(7usize, &a[..]), (1usize, &b[..])];
        let mut buf = Vec::new();
        pack(&mut buf, &pieces, None);
        assert_eq!(buf, [1.0, 2.0, 3.0, 4.0, 5.0]);
        pack(&mut buf, &pieces, Some(&acc));
        assert_eq!(buf, [701.0, 802.0, 103.0, 204.0, 305.0]);
        let mut grads = vec![0f32; 10];
        unpack(&mut grads, &[(7, 2), (1, 3)], &buf);
        assert_eq!(
            grads,
            [0.0, 103.0, 204.0, 305.0, 0.0, 0.0, 0.0, 701.0, 802.0, 0.0]
        );
    }

    #[test]
    fn checksum_sees_one_flipped_bit() {
        let a: Vec<f32> = (0..1000).map(|i| (i as f32).sin()).collect();
        let le: Vec<u8> = a.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(
            checksum(&[&a]),
            crc32fast::hash(&le) as u64 ^ 1000u64.rotate_left(17)
        );
        let mut b = a.clone();
        assert_eq!(checksum(&[&a, &a]), checksum(&[&b, &a]));
        b[500] = f32::from_bits(b[500].to_bits() ^ 1);
        assert_ne!(checksum(&[&a, &a]), checksum(&[&b, &a]));
        assert_ne!(checksum(&[&a, &b]), checksum(&[&b, &a]));
    }

    /// The backward's hook hands over every gradient exactly once, each piece already
    /// final: the values it saw equal the arena after the call, and the pieces tile the arena.
    #[test]
    fn hook_pieces_are_final_and_tile_the_arena() {
        use crate::kernels::cpu::CpuKernels;
        use crate::model::{Config, Params};
        use crate::train::step::Workspace;
        use crate::train::timing::Timings;
        for (tied, qk_norm) in [(true, false), (false, false), (false, true)] {
            let mut c = Config::llama(16, 24, 3, 2, 1, 20, 8);
            c.tied = tied;
            c.qk_norm = qk_norm; // Qwen3's per-head q/k norm gains, after the classifier
            let p = Params::init_random(&c, 3);
            let mut g = Params::zeros(&c);
            let mut ws = Workspace::new(&c, 2, 6);
            let ids: Vec<u32> = (0..12).map(|i| (i * 7 % 20) as u32).collect();
            let tg: Vec<u32> = (0..12).map(|i| (i * 3 % 20) as u32).collect();
            let mut seen: Vec<(usize, Vec<f32>)> = Vec::new();
            let mut calls = 0;
            let mut hook = |pieces: &[(usize, &[f32])]| {
                calls += 1;
                seen.extend(pieces.iter().map(|&(o, v)| (o, v.to_vec())));
            };
            ws.forward_backward_hooked(
                &mut CpuKernels::new(crate::kernels::Spec::new(&c, 2, 6)),
                &p,
                &mut g,
                &ids,
                &tg,
                1.0,
                &mut Timings::default(),
                Some(&mut hook),
            )
            .unwrap();
            // head, 3 layers, (the q/k norm gains,) embedding
            assert_eq!(calls, 5 + qk_norm as usize, "tied {tied}");
            let mut covered = vec![0u8; g.data.len()];
            for (off, vals) in &seen {
                assert_eq!(&g.data[*off..off + vals.len()], &vals[..], "offset {off}");
                covered[*off..off + vals.len()]
                    .iter_mut()
                    .for_each(|c| *c += 1);
            }
            assert!(covered.iter().all(|&c| c == 1), "tied {tied}: {covered:?}");
            assert!(g.data.iter().any(|&x| x != 0.0));
        }
    }

    /// One process's accumulation is the rank-order sum: `--accum 2` leaves in the arena
    /// exactly g₁ + g₂ of two separate passes into zeroed arenas.
    #[test]
    fn accumulation_adds_separate_micro_steps_in_order() {
        use crate::kernels::cpu::CpuKernels;
        use crate::model::{Config, Params};
        use crate::train::loss_scale::LossScaler;
        use crate::train::optim::{AdamW, AdamWConfig};
        use crate::train::step::Workspace;
        use crate::train::stepper::Stepper;
        use crate::train::timing::Timings;
        let c = Config::llama(16, 24, 2, 2, 1, 20, 8);
        let p = Params::init_random(&c, 4);
        let batches: Vec<(Vec<u32>, Vec<u32>)> = (0..2)
            .map(|b| {
                (
                    (0..12).map(|i| ((i * 7 + b * 5) % 20) as u32).collect(),
                    (0..12).map(|i| ((i * 3 + b) % 20) as u32).collect(),
                )
            })
            .collect();
        let mut ws = Workspace::new(&c, 2, 6);
        let mut k = CpuKernels::new(crate::kernels::Spec::new(&c, 2, 6));
        let mut t = Timings::default();
        let mut want = vec![0f32; p.data.len()];
        for (i, tg) in &batches {
            let mut g = Params::zeros(&c);
            ws.forward_backward(&mut k, &p, &mut g, i, tg, 0.5, &mut t)
                .unwrap();
            for (w, x) in want.iter_mut().zip(&g.data) {
                *w += x;
            }
        }
        let cfg = AdamWConfig {
            lr: 1e-3,
            min_lr: 0.0,
            warmup: 0,
            total_steps: 10,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.0,
            grad_clip: 0.0,
        };
        let opt = AdamW::new(&p.layout);
        let mut st = Stepper::new(p, opt, LossScaler::fixed(1.0), 12);
        let mut next = 0;
        st.step(
            &mut k,
            &mut ws,
            &cfg,
            0,
            2,
            &mut |i, tg| {
                i.copy_from_slice(&batches[next].0);
                tg.copy_from_slice(&batches[next].1);
                next += 1;
            },
            &mut t,
        )
        .unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&st.grads.data), bits(&want));
    }

    #[cfg(not(feature = "mpi"))]
    #[test]
    fn without_the_feature_join_says_how_to_build() {
        let e = join(Kind::Mpi)
            .err()
            .expect("no MPI in this build")
            .to_string();
        assert!(e.contains("--features mpi"), "{e}");
    }
}
