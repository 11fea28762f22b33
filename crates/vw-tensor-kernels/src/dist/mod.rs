//! Collective communication for data-parallel training: one process per GPU, gradients summed
//! across processes by NCCL (the `nccl` feature), the way torchrun + DDP do it.
//!
//! A process learns its place from torchrun's environment variables ([`DistEnv`]: `RANK`,
//! `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`); rank 0 creates the NCCL unique id
//! and hands it to the others over one TCP connection each ([`rendezvous`]). The training loop
//! only sees the [`Collective`] trait, so the same code runs on:
//! - [`Solo`]: world size 1, every collective is the identity (the default everywhere);
//! - [`NcclGroup`]: the real multi-GPU / multi-host path (CUDA tensors, `--features nccl`);
//! - [`ThreadGroup`]: N ranks as threads of one process on CPU tensors. It is a test double that
//!   lets CI check the data-parallel logic (sharding, averaging, rank-0 checkpoints) without GPUs;
//!   it is not a transport for real training.

mod rendezvous;
mod threads;

#[cfg(feature = "nccl")]
mod nccl;

pub use rendezvous::{free_port, share_bytes};
pub use threads::ThreadGroup;

#[cfg(feature = "nccl")]
pub use nccl::NcclGroup;

use crate::{Error, Result};
use candle_core::{Device, Tensor};
use std::sync::Arc;

/// Whether this build can run multi-process groups over NCCL (`--features nccl`).
pub const NCCL_ENABLED: bool = cfg!(feature = "nccl");

/// A group of ranks that sum and broadcast tensors together. Every rank must call the same
/// collectives in the same order with tensors of the same shape and dtype.
pub trait Collective: Send + Sync {
    /// This process's rank, `0..world_size`.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn world_size(&self) -> usize;
    /// The element-wise sum of `t` over all ranks (a new tensor, same shape and dtype).
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor>;
    /// Rank `root`'s `t` on every rank (the argument of the other ranks gives shape and dtype).
    fn broadcast(&self, t: &Tensor, root: usize) -> Result<Tensor>;
    /// Whether this rank writes checkpoints, logs and reports.
    fn is_main(&self) -> bool {
        self.rank() == 0
    }
}

/// The world of one process: every collective is the identity.
#[derive(Debug, Clone, Copy, Default)]
pub struct Solo;

impl Collective for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        Ok(t.clone())
    }
    fn broadcast(&self, t: &Tensor, _root: usize) -> Result<Tensor> {
        Ok(t.clone())
    }
}

/// Where this process sits in a multi-process group, read from torchrun's variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistEnv {
    /// Global rank (`RANK`).
    pub rank: usize,
    /// Number of processes (`WORLD_SIZE`).
    pub world_size: usize,
    /// Rank on this host (`LOCAL_RANK`): the GPU this process drives.
    pub local_rank: usize,
    /// Host of rank 0's rendezvous socket (`MASTER_ADDR`).
    pub master_addr: String,
    /// Port of rank 0's rendezvous socket (`MASTER_PORT`).
    pub master_port: u16,
}

impl DistEnv {
    /// Reads the process environment; `None` when `WORLD_SIZE` is unset (a single process).
    pub fn from_env() -> Result<Option<Self>> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// Same as [`DistEnv::from_env`] over any variable lookup. Malformed or inconsistent values
    /// are an error naming the variable.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Option<Self>> {
        let Some(world) = get("WORLD_SIZE") else { return Ok(None) };
        let num = |key: &str, default: Option<usize>| -> Result<usize> {
            match (get(key), default) {
                (Some(v), _) => v.trim().parse().map_err(|_| dist_err(format!("{key}={v:?} is not a number"))),
                (None, Some(d)) => Ok(d),
                (None, None) => Err(dist_err(format!("WORLD_SIZE is set but {key} is not"))),
            }
        };
        let world_size: usize =
            world.trim().parse().map_err(|_| dist_err(format!("WORLD_SIZE={world:?} is not a number")))?;
        if world_size == 0 {
            return Err(dist_err("WORLD_SIZE must be at least 1".into()));
        }
        let rank = num("RANK", Some(0))?;
        if rank >= world_size {
            return Err(dist_err(format!("RANK={rank} is not below WORLD_SIZE={world_size}")));
        }
        let local_rank = num("LOCAL_RANK", Some(rank))?;
        let master_addr = get("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into());
        let port = num("MASTER_PORT", if world_size == 1 { Some(29500) } else { None })?;
        let master_port = u16::try_from(port).map_err(|_| dist_err(format!("MASTER_PORT={port} is not a port")))?;
        Ok(Some(Self { rank, world_size, local_rank, master_addr, master_port }))
    }
}

/// The part of each global batch that one rank computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This rank.
    pub rank: usize,
    /// Number of ranks.
    pub world_size: usize,
}

impl Default for Shard {
    fn default() -> Self {
        Self { rank: 0, world_size: 1 }
    }
}

impl Shard {
    /// The shard of `c`.
    pub fn of(c: &dyn Collective) -> Self {
        Self { rank: c.rank(), world_size: c.world_size() }
    }

    /// This rank's rows of a global batch of `global` rows. Every rank draws the same global batch
    /// from the same seeded RNG and keeps its slice, so the data order does not depend on the world
    /// size. The global batch must split evenly (else the averaged gradient would not be the
    /// gradient of the global mean).
    pub fn range(&self, global: usize) -> Result<std::ops::Range<usize>> {
        if !global.is_multiple_of(self.world_size) {
            return Err(dist_err(format!(
                "the global batch of {global} does not split evenly over {} ranks",
                self.world_size
            )));
        }
        let per = global / self.world_size;
        Ok(self.rank * per..(self.rank + 1) * per)
    }
}

/// The collective of this process: [`Solo`] without `env` (or with world size 1); with world size
/// above 1, an NCCL group on `device` (a CUDA device, `--features nccl`), joined through rank 0's
/// rendezvous socket within `timeout`.
pub fn init(env: Option<&DistEnv>, device: &Device, timeout: std::time::Duration) -> Result<Arc<dyn Collective>> {
    let Some(env) = env.filter(|e| e.world_size > 1) else { return Ok(Arc::new(Solo)) };
    if !device.is_cuda() {
        return Err(dist_err(format!(
            "WORLD_SIZE={} needs one CUDA device per process (got {device:?}); multi-process CPU training is not supported",
            env.world_size
        )));
    }
    init_nccl(env, device, timeout)
}

#[cfg(feature = "nccl")]
fn init_nccl(env: &DistEnv, device: &Device, timeout: std::time::Duration) -> Result<Arc<dyn Collective>> {
    Ok(Arc::new(NcclGroup::join(env, device, timeout)?))
}

#[cfg(not(feature = "nccl"))]
fn init_nccl(env: &DistEnv, _device: &Device, _timeout: std::time::Duration) -> Result<Arc<dyn Collective>> {
    Err(dist_err(format!(
        "WORLD_SIZE={}: this build has no NCCL support; rebuild with `--features nccl`",
        env.world_size
    )))
}

fn dist_err(msg: String) -> Error {
    Error::Dist(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn env_reads_torchrun_variables_and_names_bad_ones() -> Result<()> {
        assert_eq!(DistEnv::from_vars(vars(&[]))?, None);
        let e = DistEnv::from_vars(vars(&[
            ("WORLD_SIZE", "4"),
            ("RANK", "2"),
            ("LOCAL_RANK", "0"),
            ("MASTER_ADDR", "10.0.0.7"),
            ("MASTER_PORT", "29511"),
        ]))?
        .ok_or_else(|| dist_err("none".into()))?;
        assert_eq!((e.rank, e.world_size, e.local_rank, e.master_port), (2, 4, 0, 29511));
        assert_eq!(e.master_addr, "10.0.0.7");
        for (bad, word) in [
            (vec![("WORLD_SIZE", "x")], "WORLD_SIZE"),
            (vec![("WORLD_SIZE", "2"), ("RANK", "2"), ("MASTER_PORT", "1")], "RANK=2"),
            (vec![("WORLD_SIZE", "2"), ("RANK", "1")], "MASTER_PORT"),
            (vec![("WORLD_SIZE", "2"), ("MASTER_PORT", "70000")], "70000"),
        ] {
            let err = DistEnv::from_vars(vars(&bad)).unwrap_err().to_string();
            assert!(err.contains(word), "{err}");
        }
        Ok(())
    }

    #[test]
    fn shards_tile_the_global_batch_and_refuse_uneven_splits() -> Result<()> {
        let mut seen = Vec::new();
        for rank in 0..4 {
            seen.extend(Shard { rank, world_size: 4 }.range(12)?);
        }
        assert_eq!(seen, (0..12).collect::<Vec<_>>());
        assert!(Shard { rank: 0, world_size: 5 }.range(12).is_err());
        Ok(())
    }

    #[test]
    fn multi_process_on_cpu_is_a_clear_error() {
        let env = DistEnv { rank: 0, world_size: 2, local_rank: 0, master_addr: "127.0.0.1".into(), master_port: 1 };
        let err = init(Some(&env), &Device::Cpu, std::time::Duration::from_millis(10)).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("CUDA")));
        let solo = init(None, &Device::Cpu, std::time::Duration::from_millis(10)).map(|c| c.world_size());
        assert_eq!(solo.ok(), Some(1));
    }
}
