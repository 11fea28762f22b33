//! VideoWorld 2 in Rust: the root package ties the layered crates into the `vw` command, the
//! examples, cross-crate integration tests and benches. Library users depend on the crates below
//! directly (`vw-dldm` most of all); this re-export is for examples and tests.

pub use vw_ar_policy as ar_policy;
pub use vw_data as data;
pub use vw_diffusion as diffusion;
pub use vw_dldm as dldm;
pub use vw_eval as eval;
pub use vw_tensor_kernels as kernels;
