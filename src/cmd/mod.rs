//! Command-line interface: argument types shared by subcommands and the dispatch.

mod bench_ar;
mod bench_dit;
mod bench_stage2;
mod data;
mod demo;
mod dist_check;
mod download;
mod encode_codes;
mod eval;
mod generate;
mod generate_policy;
mod info;
mod kernel_bench;
mod kernel_check;
mod launch;
mod parity;
mod train_dldm;
mod train_policy;

use clap::{Args, Parser, Subcommand};
use vw_tensor_kernels::{DeviceSpec, DtypeSpec};

/// VideoWorld 2: learn transferable task knowledge from unlabeled videos.
#[derive(Debug, Parser)]
#[command(name = "vw", version, about, propagate_version = true)]
pub struct Cli {
    /// More log output (-v info, -vv debug); `VW_LOG` overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole VideoWorld 2 loop on the built-in CraftWorld (no downloads, CPU).
    Demo(demo::DemoArgs),
    /// Generate a video from an image with the diffusion model, or roll out a policy.
    Generate(generate::GenerateArgs),
    /// Train the dLDM (stage 1 warm-up or stage 2 with the video diffusion model).
    TrainDldm(train_dldm::TrainDldmArgs),
    /// Write the dLDM codes of every clip of a dataset (with episode ids and action labels).
    EncodeCodes(encode_codes::EncodeCodesArgs),
    /// Train the autoregressive policy over latent codes (or the action decoder).
    TrainPolicy(train_policy::TrainPolicyArgs),
    /// Evaluate checkpoints and write a report folder.
    Eval(eval::EvalArgs),
    /// Fetch a model from the Hugging Face Hub into the local cache.
    Download(download::DownloadArgs),
    /// Print features, devices and versions.
    Info(info::InfoArgs),
    /// Check every custom kernel against its CPU reference on random inputs (prints a table).
    KernelCheck(kernel_check::KernelCheckArgs),
    /// Time the custom kernels against the composed candle ops and the device ceilings.
    KernelBench(kernel_bench::KernelBenchArgs),
    /// Write datasets to disk (CraftWorld expert episodes).
    Data(data::DataArgs),
    /// Run one diffusion component on named tensors, for comparison with PyTorch.
    Parity(parity::ParityArgs),
    /// Time one Cosmos DiT forward (random weights).
    BenchDit(bench_dit::BenchDitArgs),
    /// Time full stage-2 training steps (control branch + frozen 2B DiT, random weights).
    BenchStage2(bench_stage2::BenchStage2Args),
    /// Time one Wan VAE decode (random weights).
    BenchVaeDecode(bench_dit::BenchVaeArgs),
    /// Time KV-cached decoding of the AR policy transformer (random weights).
    BenchAr(bench_ar::BenchArArgs),
    /// Check NCCL collectives across the GPUs of this host and time the all-reduce.
    DistCheck(dist_check::DistCheckArgs),
}

/// `--device` / `--dtype`, shared by every subcommand that computes.
#[derive(Debug, Clone, Args)]
pub struct DeviceArgs {
    /// Where to compute: cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
    /// Floating-point type of the model weights and activations: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    pub dtype: DtypeSpec,
}

impl DeviceArgs {
    /// Opens the device, with the spec in the error.
    pub fn open(&self) -> anyhow::Result<candle_core::Device> {
        Ok(self.device.open()?)
    }
}

/// Makes Ctrl-C (and SIGTERM, as `timeout` sends) stop training cleanly: the first one raises
/// the process-wide [`vw_dldm::train::StopSignal`], so every training loop writes the checkpoint
/// of the step it reached and returns, and the same command resumes; a second one quits at once.
/// For the training commands only: elsewhere Ctrl-C keeps its default (quit).
pub fn stop_training_on_ctrl_c() {
    let installed = ctrlc::set_handler(|| {
        let stop = vw_dldm::train::StopSignal::process();
        if stop.is_raised() {
            std::process::exit(130);
        }
        stop.raise();
        eprintln!("\nstopping after the step in progress, with its checkpoint written (Ctrl-C again quits now)");
    });
    if let Err(e) = installed {
        tracing::warn!("Ctrl-C will not stop training cleanly: {e}");
    }
}

/// Whether an error is a training stopped on request (the run can be resumed).
pub fn interrupted(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(c.downcast_ref::<vw_eval::Error>(), Some(vw_eval::Error::Interrupted(_)))
            || matches!(c.downcast_ref::<vw_dldm::Error>(), Some(vw_dldm::Error::Interrupted { .. }))
            || matches!(
                c.downcast_ref::<vw_ar_policy::Error>(),
                Some(vw_ar_policy::Error::Dldm(vw_dldm::Error::Interrupted { .. }))
            )
    })
}

/// Dispatches to the subcommand.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Demo(a) => demo::run(a),
        Command::Generate(a) => generate::run(a),
        Command::TrainDldm(a) => train_dldm::run(a),
        Command::EncodeCodes(a) => encode_codes::run(a),
        Command::TrainPolicy(a) => train_policy::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Download(a) => download::run(a),
        Command::Info(a) => info::run(a),
        Command::KernelCheck(a) => kernel_check::run(a),
        Command::KernelBench(a) => kernel_bench::run(a),
        Command::Data(a) => data::run(a),
        Command::BenchAr(a) => bench_ar::run(a),
        Command::Parity(a) => parity::run(a),
        Command::BenchDit(a) => bench_dit::run(a),
        Command::BenchVaeDecode(a) => bench_dit::run_vae(a),
        Command::BenchStage2(a) => bench_stage2::run(a),
        Command::DistCheck(a) => dist_check::run(a),
    }
}
