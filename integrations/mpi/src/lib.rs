//! ZeRO-1 sharded [`wgpu_adamw`] across processes: each MPI rank runs one shard
//! ([`wgpu_adamw::GpuAdamW::shard`]) on its own device, and the step's global quantities (the
//! gradient norm's sum of squares and the found-inf flags) are exchanged with an MPI
//! all-gather, staged through the host.
//!
//! The all-gather moves each rank's 16-byte entry to every rank unchanged; every rank's
//! device then folds the entries in rank order, so the result is the same on every rank and
//! independent of MPI's timing or algorithm (an `MPI_Allreduce` would sum in an order MPI
//! chooses). See `wgpu_adamw::shard` for the rule that makes the run bit-identical to one
//! process.

use mpi::datatype::PartitionMut;
use mpi::traits::*;
use mpi::Count;
use std::time::{Duration, Instant};
use wgpu_adamw::{read_buffer, ShardExchange};

/// Errors of the MPI side.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The optimizer's own error (reading the entry back, say).
    #[error(transparent)]
    Optimizer(#[from] wgpu_adamw::Error),
    /// The communicator does not match the shard layout.
    #[error("{0}")]
    Layout(String),
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;

/// Where the time of one host-staged exchange went.
#[derive(Clone, Copy, Debug, Default)]
pub struct ExchangeTiming {
    /// Waiting for the device to finish the partial sums and reading the entry back.
    pub read_back: Duration,
    /// The MPI all-gather.
    pub all_gather: Duration,
    /// Writing the gathered entries into the device's exchange area (queued, not waited).
    pub write: Duration,
}

/// All-gathers the ranks' gradient-norm entries of a step: reads this rank's entry back
/// (waiting for the submitted [`wgpu_adamw::GpuAdamW::encode_partials`]), gathers every
/// rank's in rank order, and writes them into the exchange area, ready for
/// [`wgpu_adamw::GpuAdamW::encode_apply`]. `comm`'s ranks must be the layout's.
pub fn exchange<C: Communicator>(
    comm: &C,
    device: &wgpu_adamw::wgpu::Device,
    queue: &wgpu_adamw::wgpu::Queue,
    ex: &ShardExchange,
) -> Result<ExchangeTiming> {
    if comm.size() as usize != ex.ranks {
        return Err(Error::Layout(format!(
            "{} MPI ranks for a layout of {} shards",
            comm.size(),
            ex.ranks
        )));
    }
    let t0 = Instant::now();
    let local = read_buffer(
        device,
        queue,
        &ex.buffer,
        ex.local,
        ShardExchange::ENTRY_BYTES,
    )?;
    let t1 = Instant::now();
    let mut gathered = vec![0u32; 4 * ex.ranks];
    comm.all_gather_into(&local[..], &mut gathered[..]);
    let t2 = Instant::now();
    queue.write_buffer(&ex.buffer, ex.gathered, bytemuck::cast_slice(&gathered));
    Ok(ExchangeTiming {
        read_back: t1 - t0,
        all_gather: t2 - t1,
        write: t2.elapsed(),
    })
}

/// Gathers each rank's values (`local`, this rank's part) into the whole vector on every
/// rank, in rank order: the parameters' all-gather of ZeRO-1, or a check's gather.
pub fn all_gather_varcount<C: Communicator, T: Equivalence + Default + Clone>(
    comm: &C,
    local: &[T],
) -> Result<Vec<T>> {
    let n = comm.size() as usize;
    let mut counts = vec![0 as Count; n];
    let count = Count::try_from(local.len())
        .map_err(|_| Error::Layout(format!("{} values exceed MPI's count", local.len())))?;
    comm.all_gather_into(&count, &mut counts[..]);
    let displs: Vec<Count> = counts
        .iter()
        .scan(0, |at, &c| {
            let d = *at;
            *at += c;
            Some(d)
        })
        .collect();
    let total: usize = counts.iter().map(|&c| c as usize).sum();
    let mut out = vec![T::default(); total];
    {
        let mut part = PartitionMut::new(&mut out[..], &counts[..], &displs[..]);
        comm.all_gather_varcount_into(local, &mut part);
    }
    Ok(out)
}
