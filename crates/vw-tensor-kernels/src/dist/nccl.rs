//! [`NcclGroup`]: one rank of a multi-process NCCL communicator on candle's CUDA stream, so
//! collectives are ordered with the model's kernels and need no extra synchronisation.

use super::{dist_err, rendezvous, Collective, DistEnv};
use crate::Result;
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::nccl::safe::{Comm, Id, ReduceOp};
use candle_core::cuda_backend::{CudaDevice, CudaStorage};
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};
use std::sync::Mutex;
use std::time::Duration;

/// The communicator behind a lock: cudarc's `Comm` holds a raw NCCL handle and is not `Send`.
struct CommCell(Comm);
// SAFETY: an NCCL communicator may be used from any thread as long as calls on it are not
// concurrent; every use goes through the Mutex of `NcclGroup`.
unsafe impl Send for CommCell {}

/// One rank of an NCCL group (one process per GPU).
pub struct NcclGroup {
    comm: Mutex<CommCell>,
    rank: usize,
    world_size: usize,
}

impl NcclGroup {
    /// Joins the group described by `env` on `device` (the GPU of this rank): rank 0 makes the
    /// NCCL id and hands it out through the rendezvous socket, then every rank initialises.
    /// NVLink multicast (NVLS) is switched off unless the environment says otherwise: on shared
    /// hosts it can take the GPUs out of service.
    pub fn join(env: &DistEnv, device: &Device, timeout: Duration) -> Result<Self> {
        let Device::Cuda(dev) = device else {
            return Err(dist_err(format!("NCCL needs a CUDA device, got {device:?}")));
        };
        if std::env::var_os("NCCL_NVLS_ENABLE").is_none() {
            // Before NCCL reads its environment (at the first init of this process).
            std::env::set_var("NCCL_NVLS_ENABLE", "0");
        }
        let bytes = rendezvous::share_bytes(
            env,
            || {
                let id = Id::new().map_err(|e| dist_err(format!("ncclGetUniqueId: {e:?}")))?;
                Ok(id.internal().iter().map(|c| *c as u8).collect())
            },
            timeout,
        )?;
        let internal: [std::ffi::c_char; 128] = bytes
            .iter()
            .map(|b| *b as std::ffi::c_char)
            .collect::<Vec<_>>()
            .try_into()
            .map_err(|_| dist_err(format!("rendezvous: got an id of {} bytes, expected 128", bytes.len())))?;
        let stream = dev.cuda_stream();
        stream.context().bind_to_thread().map_err(|e| dist_err(format!("binding the CUDA context: {e:?}")))?;
        let comm = Comm::from_rank(stream, env.rank, env.world_size, Id::uninit(internal))
            .map_err(|e| dist_err(format!("ncclCommInitRank (rank {} of {}): {e:?}", env.rank, env.world_size)))?;
        Ok(Self { comm: Mutex::new(CommCell(comm)), rank: env.rank, world_size: env.world_size })
    }

    fn with_comm<T>(&self, f: impl FnOnce(&Comm) -> candle_core::Result<T>) -> candle_core::Result<T> {
        let cell = self.comm.lock().map_err(|_| candle_core::Error::Msg("NCCL communicator lock poisoned".into()))?;
        f(&cell.0)
    }
}

enum Coll {
    Sum,
    Broadcast(usize),
}

/// One collective as a candle op: reads the input's CUDA buffer, writes a fresh output.
struct CollOp<'a> {
    group: &'a NcclGroup,
    what: Coll,
}

impl CustomOp1 for CollOp<'_> {
    fn name(&self) -> &'static str {
        "nccl-collective"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("NCCL collectives run on CUDA tensors only")
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let dev: CudaDevice = s.device().clone();
        let (start, end) =
            l.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("NCCL input must be contiguous".into()))?;
        if s.dtype() != DType::F32 {
            candle_core::bail!("NCCL collectives here take f32 (got {:?})", s.dtype());
        }
        let src = s.as_cuda_slice::<f32>()?.slice(start..end);
        // SAFETY: the collective below writes all end - start elements.
        let mut dst = unsafe { dev.alloc::<f32>(end - start)? };
        let nccl = |e| candle_core::Error::Msg(format!("NCCL: {e:?}"));
        self.group.with_comm(|comm| {
            match self.what {
                Coll::Sum => comm.all_reduce(&src, &mut dst, &ReduceOp::Sum).map_err(nccl)?,
                Coll::Broadcast(root) => comm.broadcast(Some(&src), &mut dst, root as i32).map_err(nccl)?,
            };
            Ok(())
        })?;
        Ok((CudaStorage::wrap_cuda_slice(dst, dev), l.shape().clone()))
    }
}

impl NcclGroup {
    fn apply(&self, t: &Tensor, what: Coll) -> Result<Tensor> {
        let x = t.to_dtype(DType::F32)?.contiguous()?;
        let y = x.apply_op1_no_bwd(&CollOp { group: self, what })?;
        Ok(y.to_dtype(t.dtype())?)
    }
}

impl Collective for NcclGroup {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.world_size
    }
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        self.apply(t, Coll::Sum)
    }
    fn broadcast(&self, t: &Tensor, root: usize) -> Result<Tensor> {
        if root >= self.world_size {
            return Err(dist_err(format!("broadcast from rank {root} of {}", self.world_size)));
        }
        self.apply(t, Coll::Broadcast(root))
    }
}
