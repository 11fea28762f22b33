//! Rank 0 hands a few bytes (the NCCL unique id) to every other rank over TCP: rank 0 listens on
//! `MASTER_ADDR:MASTER_PORT`, each other rank connects (retrying until rank 0 is up), says who it
//! is, and reads the bytes. This is the job torchrun's TCP store does for PyTorch.

use super::{dist_err, DistEnv};
use crate::Result;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

const MAGIC: &[u8; 8] = b"VWRDZV01";

/// A TCP port that was free a moment ago on this host (for a launcher that starts every rank).
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| dist_err(format!("finding a free port: {e}")))?;
    Ok(l.local_addr().map_err(|e| dist_err(format!("finding a free port: {e}")))?.port())
}

/// Rank 0 runs `make` and sends its bytes to every rank; every rank returns them. Fails with a
/// message naming the address when the peers do not all meet within `timeout`.
pub fn share_bytes(env: &DistEnv, make: impl FnOnce() -> Result<Vec<u8>>, timeout: Duration) -> Result<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let addr = format!("{}:{}", env.master_addr, env.master_port);
    if env.rank == 0 {
        serve(env, &addr, make()?, deadline)
    } else {
        fetch(env, &addr, deadline, timeout)
    }
}

fn serve(env: &DistEnv, addr: &str, bytes: Vec<u8>, deadline: Instant) -> Result<Vec<u8>> {
    let io = |what: &str, e: std::io::Error| dist_err(format!("rendezvous on {addr}: {what}: {e}"));
    let listener = TcpListener::bind(("0.0.0.0", env.master_port)).map_err(|e| io("binding the port", e))?;
    listener.set_nonblocking(true).map_err(|e| io("listening", e))?;
    let mut seen = vec![false; env.world_size];
    seen[0] = true;
    let mut left = env.world_size - 1;
    while left > 0 {
        match listener.accept() {
            Ok((mut s, _)) => {
                s.set_nonblocking(false).map_err(|e| io("accepting", e))?;
                s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| io("accepting", e))?;
                let mut hello = [0u8; 12];
                s.read_exact(&mut hello).map_err(|e| io("reading a peer's hello", e))?;
                if &hello[..8] != MAGIC {
                    return Err(dist_err(format!("rendezvous on {addr}: a connection that is not a vw rank")));
                }
                let rank = u32::from_le_bytes([hello[8], hello[9], hello[10], hello[11]]) as usize;
                if rank == 0 || rank >= env.world_size || seen[rank] {
                    return Err(dist_err(format!(
                        "rendezvous on {addr}: rank {rank} joined twice or is outside 0..{}",
                        env.world_size
                    )));
                }
                seen[rank] = true;
                left -= 1;
                s.write_all(&(bytes.len() as u32).to_le_bytes())
                    .and_then(|_| s.write_all(&bytes))
                    .map_err(|e| io("sending the id", e))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    let missing: Vec<usize> = (0..env.world_size).filter(|r| !seen[*r]).collect();
                    return Err(dist_err(format!("rendezvous on {addr}: ranks {missing:?} never connected")));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(io("accepting", e)),
        }
    }
    Ok(bytes)
}

fn fetch(env: &DistEnv, addr: &str, deadline: Instant, timeout: Duration) -> Result<Vec<u8>> {
    let io = |what: &str, e: std::io::Error| dist_err(format!("rendezvous with rank 0 at {addr}: {what}: {e}"));
    let target = addr
        .to_socket_addrs()
        .map_err(|e| io("resolving the address", e))?
        .next()
        .ok_or_else(|| dist_err(format!("rendezvous: {addr} resolves to no address")))?;
    let mut stream = loop {
        match TcpStream::connect_timeout(&target, Duration::from_secs(1)) {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline => {
                return Err(io(&format!("rank 0 did not answer within {timeout:?}"), e));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    stream.set_read_timeout(Some(timeout)).map_err(|e| io("connecting", e))?;
    let mut hello = MAGIC.to_vec();
    hello.extend((env.rank as u32).to_le_bytes());
    stream.write_all(&hello).map_err(|e| io("saying hello", e))?;
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).map_err(|e| io("reading the id", e))?;
    let mut bytes = vec![0u8; u32::from_le_bytes(len) as usize];
    stream.read_exact(&mut bytes).map_err(|e| io("reading the id", e))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(rank: usize, world_size: usize, port: u16) -> DistEnv {
        DistEnv { rank, world_size, local_rank: rank, master_addr: "127.0.0.1".into(), master_port: port }
    }

    #[test]
    fn every_rank_receives_rank_zeros_bytes() -> Result<()> {
        let port = free_port()?;
        let t = Duration::from_secs(20);
        // Peers start first: they must retry until rank 0 listens.
        let peers: Vec<_> =
            (1..4).map(|r| std::thread::spawn(move || share_bytes(&env(r, 4, port), || Ok(vec![]), t))).collect();
        std::thread::sleep(Duration::from_millis(100));
        let id: Vec<u8> = (0..128u8).collect();
        let mine = share_bytes(&env(0, 4, port), || Ok(id.clone()), t)?;
        assert_eq!(mine, id);
        for p in peers {
            let got = p.join().map_err(|_| dist_err("peer thread panicked".into()))??;
            assert_eq!(got, id);
        }
        Ok(())
    }

    #[test]
    fn a_missing_rank_times_out_with_its_number() -> Result<()> {
        let port = free_port()?;
        let t = Duration::from_millis(300);
        let peer = std::thread::spawn(move || share_bytes(&env(1, 3, port), || Ok(vec![]), Duration::from_secs(5)));
        let err = share_bytes(&env(0, 3, port), || Ok(vec![7]), t).unwrap_err().to_string();
        assert!(err.contains("never connected") && err.contains("2]"), "{err}");
        let _ = peer.join();
        Ok(())
    }
}
