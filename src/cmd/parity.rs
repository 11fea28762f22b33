//! `vw parity`: run one diffusion component on named input tensors, for comparison with PyTorch
//! (docs/parity.md).

use clap::Args;
use std::path::PathBuf;
use vw_diffusion::parity::{self, ParityComponent};

/// Arguments of `vw parity`.
#[derive(Debug, Args)]
pub struct ParityArgs {
    #[command(flatten)]
    pub device: super::DeviceArgs,
    /// vae-encode, vae-decode, dit, t5 or pipeline.
    #[arg(long)]
    pub component: String,
    /// Model folder (diffusers layout, or the component's own folder).
    #[arg(long)]
    pub model: PathBuf,
    /// Input tensors (safetensors, names per docs/parity.md).
    #[arg(long)]
    pub inputs: PathBuf,
    /// Where to write the outputs (safetensors).
    #[arg(long)]
    pub out: PathBuf,
    /// Reference outputs to compare with (prints the relative error per tensor).
    #[arg(long)]
    pub reference: Option<PathBuf>,
}

/// Runs `vw parity`.
pub fn run(args: ParityArgs) -> anyhow::Result<()> {
    let device = args.device.open()?;
    let component: ParityComponent = args.component.parse()?;
    let inputs = vw_diffusion::weights::load_tensors(&args.inputs, &device)?;
    let outputs = parity::run(component, &args.model, &inputs, &args.inputs, args.device.dtype.dtype(), &device)?;
    let cpu: std::collections::HashMap<_, _> = outputs
        .iter()
        .map(|(k, v)| Ok((k.clone(), v.to_dtype(candle_core::DType::F32)?.to_device(&candle_core::Device::Cpu)?)))
        .collect::<anyhow::Result<_>>()?;
    vw_diffusion::weights::save_tensors(&cpu, &args.out)?;
    println!("wrote {} ({} tensors)", args.out.display(), cpu.len());
    if let Some(r) = &args.reference {
        let reference = vw_diffusion::weights::load_tensors(r, &candle_core::Device::Cpu)?;
        for (name, err) in parity::compare(&cpu, &reference)? {
            println!("{name}: relative error {err:.3e}");
        }
    }
    Ok(())
}
