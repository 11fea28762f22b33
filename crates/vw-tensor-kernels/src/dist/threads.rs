//! [`ThreadGroup`]: N ranks as threads of one process, on CPU tensors. CI uses it to check the
//! data-parallel training logic without GPUs; real runs use [`super::NcclGroup`].

use super::{dist_err, Collective};
use crate::Result;
use candle_core::{DType, Tensor};
use std::sync::{Arc, Barrier, Mutex};

struct Shared {
    slots: Mutex<Vec<Vec<f32>>>,
    barrier: Barrier,
}

/// One rank of an in-process group. A rank that stops calling collectives while the others go on
/// leaves them waiting forever (as NCCL would): use it in tests only.
pub struct ThreadGroup {
    shared: Arc<Shared>,
    rank: usize,
    world_size: usize,
}

impl ThreadGroup {
    /// The `world_size` ranks of a new group, rank `i` at index `i`; move each into its thread.
    pub fn new(world_size: usize) -> Vec<ThreadGroup> {
        let shared = Arc::new(Shared {
            slots: Mutex::new(vec![Vec::new(); world_size]),
            barrier: Barrier::new(world_size.max(1)),
        });
        (0..world_size).map(|rank| ThreadGroup { shared: shared.clone(), rank, world_size }).collect()
    }

    fn slots(&self) -> Result<std::sync::MutexGuard<'_, Vec<Vec<f32>>>> {
        self.shared.slots.lock().map_err(|_| dist_err("thread group: a rank panicked".into()))
    }

    /// Every rank posts `mine`; then `combine` reads all posts (in rank order) on every rank.
    fn exchange(&self, mine: Option<Vec<f32>>, combine: impl FnOnce(&[Vec<f32>]) -> Vec<f32>) -> Result<Vec<f32>> {
        if let Some(v) = mine {
            self.slots()?[self.rank] = v;
        }
        self.shared.barrier.wait();
        let out = combine(&self.slots()?);
        // Nobody posts the next collective's data before everyone has read this one's.
        self.shared.barrier.wait();
        Ok(out)
    }
}

fn host(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}

impl Collective for ThreadGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        let n = t.elem_count();
        let sum = self.exchange(Some(host(t)?), |all| {
            // Rank order, so every rank gets bit-identical sums.
            let mut acc = vec![0f32; n];
            for v in all {
                acc.iter_mut().zip(v).for_each(|(a, b)| *a += b);
            }
            acc
        })?;
        if sum.len() != n {
            return Err(dist_err("thread group: ranks reduced tensors of different sizes".into()));
        }
        Ok(Tensor::from_vec(sum, t.shape(), t.device())?.to_dtype(t.dtype())?)
    }

    fn broadcast(&self, t: &Tensor, root: usize) -> Result<Tensor> {
        if root >= self.world_size {
            return Err(dist_err(format!("broadcast from rank {root} of {}", self.world_size)));
        }
        let mine = (self.rank == root).then(|| host(t)).transpose()?;
        let v = self.exchange(mine, |all| all[root].clone())?;
        if v.len() != t.elem_count() {
            return Err(dist_err("thread group: broadcast tensors differ in size across ranks".into()));
        }
        Ok(Tensor::from_vec(v, t.shape(), t.device())?.to_dtype(t.dtype())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn all_reduce_and_broadcast_agree_on_every_rank() -> Result<()> {
        let handles: Vec<_> = ThreadGroup::new(3)
            .into_iter()
            .map(|g| {
                std::thread::spawn(move || -> Result<(Vec<f32>, Vec<f32>)> {
                    let r = g.rank() as f32;
                    let t = Tensor::new(&[[r, 1.0], [2.0 * r, -r]], &Device::Cpu)?;
                    let s = g.all_reduce_sum(&t)?.flatten_all()?.to_vec1::<f32>()?;
                    let b = g.broadcast(&t, 2)?.flatten_all()?.to_vec1::<f32>()?;
                    Ok((s, b))
                })
            })
            .collect();
        for h in handles {
            let (s, b) = h.join().map_err(|_| dist_err("rank panicked".into()))??;
            assert_eq!(s, vec![3.0, 3.0, 6.0, -3.0]);
            assert_eq!(b, vec![2.0, 1.0, 4.0, -2.0]);
        }
        Ok(())
    }
}
