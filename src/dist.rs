//! Data parallelism across processes: `mpirun -n N contrastive train …` runs N ranks, each on its
//! own adapter and its slice of every global batch, with the gradients averaged over the ranks
//! before the optimiser runs (see [`crate::train::record_step`]).
//!
//! MPI is process-wide state, so this module is too: [`rank`] and [`size`] answer for the
//! process, and are 0 and 1 when it is not an MPI job (built without the `mpi` feature, started
//! without `mpirun`, or a library user that never called [`Session::join`]). Every collective here
//! is a no-op, or the identity, on one rank; every rank must call the same collectives in the
//! same order, which the trainer guarantees by agreeing on every decision that could differ
//! between ranks (a non-finite step, a stop request).
//!
//! The collectives are host-staged: the caller reads the GPU's values back, reduces them here
//! and writes them back. Large reductions go in buckets ([`BUCKET`]), so that no single message
//! needs a second copy of a whole parameter arena in MPI's buffers.

use std::ops::Range;

use crate::error::{Error, Result};

/// Floats per all-reduce message (4 MiB).
pub const BUCKET: usize = 1 << 20;

/// Environment variables a launcher (Open MPI's `mpirun`, MPICH's Hydra, Slurm's PMI) sets in
/// every rank it starts.
const LAUNCHED_BY: [&str; 4] = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "PMI_RANK"];

/// Membership of the MPI job for the duration of a run: joined when the process was started by
/// an MPI launcher (and built with the `mpi` feature), left — `MPI_Finalize` — when dropped.
pub struct Session {
    #[cfg(feature = "mpi")]
    _universe: Option<mpi::environment::Universe>,
}

impl Session {
    /// Joins the job this process was launched into, if any. Launched by `mpirun` without the
    /// `mpi` feature, every rank would train the whole run alone: that is refused.
    pub fn join() -> Result<Session> {
        let launched = LAUNCHED_BY.iter().any(|v| std::env::var_os(v).is_some());
        #[cfg(feature = "mpi")]
        {
            let universe = if launched && !mpi::environment::is_initialized() {
                Some(mpi::initialize().ok_or_else(|| {
                    Error::Config("MPI could not be initialised (already finalised?)".into())
                })?)
            } else {
                None
            };
            Ok(Session {
                _universe: universe,
            })
        }
        #[cfg(not(feature = "mpi"))]
        {
            if launched && launched_size() > 1 {
                return Err(Error::Config(
                    "started by an MPI launcher, but this build has no MPI support: every rank \
                     would train alone; rebuild with `cargo build --release --features mpi`"
                        .into(),
                ));
            }
            Ok(Session {})
        }
    }
}

/// The job size the launcher announced (1 when it announced none).
#[cfg(not(feature = "mpi"))]
fn launched_size() -> usize {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse().ok())
        .unwrap_or(1)
}

#[cfg(feature = "mpi")]
mod world {
    use mpi::collective::SystemOperation;
    use mpi::topology::SimpleCommunicator;
    use mpi::traits::*;

    /// The world communicator while the job runs (none outside a job).
    pub fn get() -> Option<SimpleCommunicator> {
        (mpi::environment::is_initialized() && !mpi::environment::is_finalized())
            .then(SimpleCommunicator::world)
    }

    pub fn rank() -> usize {
        get().map_or(0, |w| w.rank() as usize)
    }

    pub fn size() -> usize {
        get().map_or(1, |w| w.size() as usize)
    }

    pub fn sum(w: &SimpleCommunicator, data: &mut [f32]) {
        let send = data.to_vec();
        w.all_reduce_into(&send[..], data, SystemOperation::sum());
    }

    pub fn gather(w: &SimpleCommunicator, local: &[f32], out: &mut [f32]) {
        w.all_gather_into(local, out);
    }

    pub fn abort(w: &SimpleCommunicator, code: i32) -> ! {
        w.abort(code)
    }
}

/// This process's rank in the job (0 outside a job).
pub fn rank() -> usize {
    #[cfg(feature = "mpi")]
    return world::rank();
    #[cfg(not(feature = "mpi"))]
    0
}

/// Ranks in the job (1 outside a job).
pub fn size() -> usize {
    #[cfg(feature = "mpi")]
    return world::size();
    #[cfg(not(feature = "mpi"))]
    1
}

/// Whether this rank writes the run's files and talks to the user (rank 0).
pub fn is_root() -> bool {
    rank() == 0
}

/// This rank's part of `len` items cut into [`size`] equal contiguous parts (`len` a multiple of
/// the size, as the trainer checks).
pub fn shard(len: usize) -> Range<usize> {
    let part = len / size();
    rank() * part..(rank() + 1) * part
}

/// BatchNorm groups per rank for `groups` groups over the global batch (the setting `flag`):
/// each rank normalises its own slice, so N ranks are at least N groups; 1 means plain per-rank
/// BatchNorm, and more must be a multiple of the ranks.
pub fn local_groups(groups: usize, flag: &str) -> Result<usize> {
    let n = size();
    match groups {
        1 => Ok(1),
        g if g.is_multiple_of(n) => Ok(g / n),
        g => Err(Error::Config(format!(
            "{flag} {g} must be 1 or a multiple of the {n} ranks (each rank normalises its own \
             slice of the batch)"
        ))),
    }
}

/// Sums `data` element-wise over the ranks, in place, in messages of at most [`BUCKET`] floats.
pub fn all_reduce_sum(data: &mut [f32]) {
    #[cfg(feature = "mpi")]
    if let Some(w) = world::get().filter(|_| size() > 1) {
        for bucket in data.chunks_mut(BUCKET) {
            world::sum(&w, bucket);
        }
    }
    #[cfg(not(feature = "mpi"))]
    let _ = data;
}

/// Every rank's `local` (all of one length), concatenated in rank order.
pub fn all_gather(local: &[f32]) -> Vec<f32> {
    #[cfg(feature = "mpi")]
    if let Some(w) = world::get().filter(|_| size() > 1) {
        let mut out = vec![0.0; local.len() * size()];
        world::gather(&w, local, &mut out);
        return out;
    }
    local.to_vec()
}

/// Whether `flag` holds on any rank: every rank gets the same answer.
pub fn any(flag: bool) -> bool {
    let mut v = [f32::from(u8::from(flag))];
    all_reduce_sum(&mut v);
    v[0] > 0.0
}

/// Ends the job on an error met by this rank. Alone, it hands the error back; in a job of several
/// ranks it names the rank and the error on stderr and aborts the whole job (`MPI_Abort`), so
/// that no other rank waits forever in a collective this one will never join.
pub fn fail(e: Error) -> Error {
    #[cfg(feature = "mpi")]
    if let Some(w) = world::get().filter(|_| size() > 1) {
        eprintln!("error on rank {} of {}: {e}", rank(), size());
        world::abort(&w, 1);
    }
    e
}
