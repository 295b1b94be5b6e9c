//! kata-cc guest library: the parts of the agent that the host tool shares (the policy engine,
//! init-data and the SNP report layout).

pub mod initdata;
pub mod policy;
pub mod tee;
