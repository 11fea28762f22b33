//! `--nproc N`: starts this same command line as N processes on this host, one per GPU, with
//! torchrun's variables (`RANK`, `LOCAL_RANK`, `WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`), and
//! waits for them. An external launcher (torchrun, slurm, a script per host) may set the same
//! variables instead; then each process is one rank and `--nproc` is not given.

use anyhow::{bail, Context};
use std::process::{Child, Command};
use std::time::Duration;
use vw_tensor_kernels::dist::{self, Collective, DistEnv};
use vw_tensor_kernels::DeviceSpec;

/// How long ranks wait for each other at start-up.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(300);

/// This process's rank, if it was launched as one, and its device: in a multi-process run rank
/// `LOCAL_RANK` drives `cuda:LOCAL_RANK` (a `--device cuda:K` only says "CUDA").
pub fn rank_device(device: DeviceSpec) -> anyhow::Result<(Option<DistEnv>, candle_core::Device)> {
    let env = DistEnv::from_env()?;
    let spec = match (&env, device) {
        (Some(e), DeviceSpec::Cuda(_)) if e.world_size > 1 => DeviceSpec::Cuda(e.local_rank),
        (Some(e), DeviceSpec::Cpu) if e.world_size > 1 => {
            bail!("WORLD_SIZE={} needs --device cuda (one GPU per process)", e.world_size)
        }
        _ => device,
    };
    Ok((env, spec.open()?))
}

/// The collective of this process (see [`dist::init`]).
pub fn join(env: Option<&DistEnv>, device: &candle_core::Device) -> anyhow::Result<std::sync::Arc<dyn Collective>> {
    Ok(dist::init(env, device, JOIN_TIMEOUT)?)
}

/// Runs this command line again as `nproc` ranks (without `--nproc`) and waits for all of them;
/// when one fails the others are stopped and the error names the rank.
pub fn spawn_ranks(nproc: usize) -> anyhow::Result<()> {
    if DistEnv::from_env()?.is_some() {
        bail!("--nproc given inside a launched rank (WORLD_SIZE is already set)");
    }
    let exe = std::env::current_exe().context("finding the vw executable")?;
    let args = strip_nproc(std::env::args().skip(1));
    let port = dist::free_port()?;
    let mut children: Vec<(usize, Child)> = Vec::with_capacity(nproc);
    for rank in 0..nproc {
        let mut cmd = Command::new(&exe);
        cmd.args(&args)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", nproc.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string());
        if std::env::var_os("NCCL_NVLS_ENABLE").is_none() {
            // NVLink multicast off: on shared hosts it can take the GPUs out of service.
            cmd.env("NCCL_NVLS_ENABLE", "0");
        }
        let child = cmd.spawn().with_context(|| format!("starting rank {rank}"))?;
        children.push((rank, child));
    }
    let mut failed: Option<(usize, std::process::ExitStatus)> = None;
    while !children.is_empty() {
        let mut still = Vec::with_capacity(children.len());
        for (rank, mut child) in children {
            match child.try_wait().with_context(|| format!("waiting for rank {rank}"))? {
                Some(status) if !status.success() && failed.is_none() => failed = Some((rank, status)),
                Some(_) => {}
                None => still.push((rank, child)),
            }
        }
        children = still;
        if failed.is_some() {
            for (_, child) in &mut children {
                let _ = child.kill();
            }
            for (_, child) in &mut children {
                let _ = child.wait();
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    match failed {
        Some((rank, status)) => bail!("rank {rank} of {nproc} failed ({status}); the other ranks were stopped"),
        None => Ok(()),
    }
}

/// The arguments without `--nproc N` / `--nproc=N`.
fn strip_nproc(args: impl Iterator<Item = String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut skip = false;
    for a in args {
        if skip {
            skip = false;
        } else if a == "--nproc" {
            skip = true;
        } else if !a.starts_with("--nproc=") {
            out.push(a);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nproc_is_removed_in_both_spellings() {
        let a = |v: &[&str]| strip_nproc(v.iter().map(|s| s.to_string()));
        assert_eq!(a(&["train-dldm", "--nproc", "4", "--out", "x"]), ["train-dldm", "--out", "x"]);
        assert_eq!(a(&["train-dldm", "--nproc=2", "--device", "cuda"]), ["train-dldm", "--device", "cuda"]);
    }
}
