//! `--device cpu|cuda:N` and `--dtype f32|bf16|f16` parsing, shared by every command.

use crate::{Error, Result};
use candle_core::{DType, Device};
use std::str::FromStr;

/// A device the user named; opened with [`DeviceSpec::open`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// The host CPU.
    #[default]
    Cpu,
    /// CUDA device with this ordinal.
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = |reason: &str| Error::Device { spec: s.to_string(), reason: reason.to_string() };
        match s.trim() {
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            t => match t.strip_prefix("cuda:") {
                Some(n) => n.parse().map(Self::Cuda).map_err(|_| bad("expected cuda:N with N a GPU index")),
                None => Err(bad("expected 'cpu' or 'cuda:N'")),
            },
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceSpec {
    /// Opens the device; a CUDA device on a CPU-only build is a clear error, not a panic.
    pub fn open(self) -> Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(n) => {
                if !crate::CUDA_ENABLED {
                    return Err(Error::Device {
                        spec: self.to_string(),
                        reason: "this build has no CUDA support; rebuild with `--features cuda`".into(),
                    });
                }
                Device::new_cuda(n).map_err(|e| Error::Device { spec: self.to_string(), reason: e.to_string() })
            }
        }
    }
}

/// A dtype the user named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DtypeSpec {
    /// 32-bit float, the CPU default.
    #[default]
    F32,
    /// bfloat16, the GPU default for the big models.
    Bf16,
    /// IEEE half.
    F16,
}

impl FromStr for DtypeSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(Self::F32),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            "f16" | "float16" | "half" => Ok(Self::F16),
            _ => Err(Error::Dtype(s.to_string())),
        }
    }
}

impl DtypeSpec {
    /// The candle dtype.
    pub fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::Bf16 => DType::BF16,
            Self::F16 => DType::F16,
        }
    }
}

/// Parses and opens a device string in one step (for clap value parsers and library users).
pub fn parse_device(s: &str) -> Result<Device> {
    s.parse::<DeviceSpec>()?.open()
}

/// Parses a dtype string.
pub fn parse_dtype(s: &str) -> Result<DType> {
    Ok(s.parse::<DtypeSpec>()?.dtype())
}

/// Names of the visible CUDA devices, e.g. `cuda:0 NVIDIA H100 80GB HBM3 (79.1 GiB, sm_90)`.
#[cfg(feature = "cuda")]
pub fn cuda_device_names() -> Result<Vec<String>> {
    use cudarc::driver::{result, sys::CUdevice_attribute as A, CudaContext};
    let err = |e: cudarc::driver::DriverError| Error::Device { spec: "cuda".into(), reason: e.to_string() };
    result::init().map_err(err)?;
    let n = result::device::get_count().map_err(err)?;
    let mut out = Vec::new();
    for i in 0..n as usize {
        let ctx = CudaContext::new(i).map_err(err)?;
        let name = ctx.name().map_err(err)?;
        let major = ctx.attribute(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR).map_err(err)?;
        let minor = ctx.attribute(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR).map_err(err)?;
        let bytes = unsafe { result::device::total_mem(ctx.cu_device()) }.map_err(err)?;
        out.push(format!("cuda:{i} {name} ({:.1} GiB, sm_{major}{minor})", bytes as f64 / (1u64 << 30) as f64));
    }
    Ok(out)
}

/// Keeps memory freed on `dev` in its CUDA memory pool across synchronisations (release threshold
/// "never", as PyTorch's caching allocator does), so an allocation after a `synchronize` reuses
/// mapped memory instead of mapping it again. A no-op on the CPU. Memory in the pool stays reserved
/// for this process until it exits.
pub fn retain_pool_memory(dev: &Device) -> Result<()> {
    match dev {
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => crate::cuda::retain_pool_memory(d).map_err(Error::from),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices() {
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("cuda:3".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(3));
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        let err = "cuda:x".parse::<DeviceSpec>().unwrap_err().to_string();
        assert!(err.contains("cuda:x"), "{err}");
        assert!("tpu".parse::<DeviceSpec>().is_err());
    }

    #[test]
    fn parses_dtypes() {
        assert_eq!(parse_dtype("bf16").unwrap(), DType::BF16);
        assert_eq!(parse_dtype("F32").unwrap(), DType::F32);
        assert!(parse_dtype("int8").unwrap_err().to_string().contains("int8"));
    }

    #[test]
    fn cuda_on_cpu_build_is_an_error() {
        if !crate::CUDA_ENABLED {
            let err = parse_device("cuda:0").unwrap_err().to_string();
            assert!(err.contains("--features cuda"), "{err}");
        }
    }
}
