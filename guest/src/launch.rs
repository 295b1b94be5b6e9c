//! What the agent knows about its own launch: the TEE it runs in and, under SEV-SNP, the
//! HOST_DATA the host put into the measured launch. A policy the host sends later is enforced
//! only if it is the one HOST_DATA names (the AKS model: sha256 of the policy text; the
//! init-data model: the init-data document's digest, with the document copied in by the shim).

use std::sync::{Arc, Mutex};

use kata_cc_policy::{initdata, tee};
use thiserror::Error;

/// The policy in force under SNP until the launch's own policy is set (see
/// [`Launch::initial_policy`]).
pub const GATE_POLICY: &str = concat!(
    "package agent_policy\n\n",
    "# Until the policy this launch is bound to (HOST_DATA) is set, nothing else may happen.\n",
    "default SetPolicyRequest := true\n",
    "default GuestDetailsRequest := true\n",
    "default CopyFileRequest := false\n",
    "CopyFileRequest { input.path == \"/run/kata-cc/initdata.toml\" }\n",
);

/// Why an init-data chunk or a policy is refused.
#[derive(Debug, Error)]
pub enum LaunchError {
    #[error("init-data lock poisoned")]
    Poisoned,
    #[error("negative offset {0}")]
    NegativeOffset(i64),
    #[error(
        "{}: chunk at offset {offset}, expected {expected}",
        initdata::GUEST_PATH
    )]
    ChunkOffset { offset: usize, expected: usize },
    #[error("{}: larger than {} bytes", initdata::GUEST_PATH, initdata::MAX_LEN)]
    TooLarge,
    /// Shared with [`Launch`], which keeps the error for every later SetPolicy.
    #[error("the SNP report could not be read: {0}")]
    NoReport(#[source] Arc<tee::TeeError>),
    /// The policy is not the one HOST_DATA names.
    #[error(transparent)]
    Unbound(tee::TeeError),
}

pub struct Launch {
    pub tee: tee::Tee,
    /// HOST_DATA of this launch (SNP only). `Err` when the report could not be read: every
    /// SetPolicy is then refused, as the binding cannot be checked.
    host_data: Option<Result<[u8; tee::HOST_DATA_LEN], Arc<tee::TeeError>>>,
    /// The init-data document the shim copied to [`initdata::GUEST_PATH`].
    initdata: Mutex<Option<Vec<u8>>>,
}

impl Launch {
    /// Detects the TEE and, under SNP, reads HOST_DATA from a fresh report (said once in the
    /// log either way).
    pub fn detect() -> Launch {
        let t = tee::Tee::detect();
        let host_data = match &t {
            tee::Tee::None => {
                log::warn!(
                    "tee: none (no {} and no {}): not a confidential VM; the policy is not \
                     bound to a measured launch",
                    tee::SEV_GUEST_DEVICE,
                    tee::SEV_GUEST_PLATFORM
                );
                None
            }
            snp => Some(match snp.report(&[]).and_then(|r| tee::host_data(&r)) {
                Ok(h) => {
                    log::info!("tee: sev-snp ({snp:?}), HOST_DATA {}", tee::hex(&h));
                    Ok(h)
                }
                Err(e) => {
                    log::error!("tee: sev-snp, but no report: {e}; SetPolicy will be refused");
                    Err(Arc::new(e))
                }
            }),
        };
        Launch {
            tee: t,
            host_data,
            initdata: Mutex::new(None),
        }
    }

    /// A launch without a TEE (host tests).
    #[cfg(test)]
    pub fn none() -> Launch {
        Launch {
            tee: tee::Tee::None,
            host_data: None,
            initdata: Mutex::new(None),
        }
    }

    /// The policy to start with instead of the baked one, if any. Under SNP, a HOST_DATA that is
    /// set (not all zeros) and is not the baked policy's sha256 means the pod was launched bound
    /// to a policy of its own: until a SetPolicy with that policy succeeds, only the gate holds
    /// (SetPolicy, which [`Launch::check_policy`] binds to HOST_DATA; the init-data copy; guest
    /// details), so a host that skips or delays SetPolicy gets nothing done. An unreadable
    /// report gets the gate too, and every SetPolicy is then refused.
    pub fn initial_policy(&self, baked: &str) -> Option<&'static str> {
        match &self.host_data {
            None => None,
            Some(Err(_)) => Some(GATE_POLICY),
            Some(Ok(h)) if *h == [0u8; tee::HOST_DATA_LEN] => None,
            Some(Ok(h)) if *h == tee::policy_digest(baked) => None,
            Some(Ok(_)) => Some(GATE_POLICY),
        }
    }

    /// GetGuestDetails' extra feature naming the TEE.
    pub fn feature(&self) -> String {
        format!("tee: {}", self.tee.name())
    }

    /// CopyFile of the init-data document: kept in memory (it is small), replacing any earlier
    /// copy when `offset` is 0.
    pub fn store_initdata(&self, offset: i64, data: &[u8]) -> Result<(), LaunchError> {
        let mut slot = self.initdata.lock().map_err(|_| LaunchError::Poisoned)?;
        let buf = slot.get_or_insert_with(Vec::new);
        let offset = usize::try_from(offset).map_err(|_| LaunchError::NegativeOffset(offset))?;
        if offset == 0 {
            buf.clear();
        }
        if offset != buf.len() {
            return Err(LaunchError::ChunkOffset {
                offset,
                expected: buf.len(),
            });
        }
        if buf.len() + data.len() > initdata::MAX_LEN {
            return Err(LaunchError::TooLarge);
        }
        buf.extend_from_slice(data);
        Ok(())
    }

    /// Whether `policy` may be enforced in this launch. Without a TEE every policy may (the
    /// development mode said so at start); under SNP it must be the one HOST_DATA names.
    pub fn check_policy(&self, policy: &str) -> Result<(), LaunchError> {
        let host_data = match &self.host_data {
            None => return Ok(()),
            Some(Err(e)) => return Err(LaunchError::NoReport(e.clone())),
            Some(Ok(h)) => h,
        };
        // The init-data document counts only if it carries exactly this policy.
        let from_initdata = self
            .initdata
            .lock()
            .ok()
            .and_then(|d| d.clone())
            .and_then(|raw| match initdata::bound_policy(&raw) {
                Ok((p, digest)) if p == policy => Some(digest),
                Ok(_) => None,
                Err(e) => {
                    log::warn!("{}: {e}", initdata::GUEST_PATH);
                    None
                }
            });
        tee::check_policy(host_data, policy, from_initdata.as_ref()).map_err(LaunchError::Unbound)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A report that could not be read.
    fn no_report() -> Arc<tee::TeeError> {
        Arc::new(tee::TeeError::NoTee)
    }

    fn snp_launch(host_data: [u8; 32]) -> Launch {
        Launch {
            tee: tee::Tee::SnpDevice {
                path: tee::SEV_GUEST_DEVICE.into(),
            },
            host_data: Some(Ok(host_data)),
            initdata: Mutex::new(None),
        }
    }

    #[test]
    fn snp_launch_bound_elsewhere_starts_behind_the_gate() {
        let baked = "package agent_policy\ndefault CreateContainerRequest := true\n";
        assert_eq!(Launch::none().initial_policy(baked), None);
        assert_eq!(
            snp_launch([0u8; 32]).initial_policy(baked),
            None,
            "no HOST_DATA"
        );
        assert_eq!(
            snp_launch(tee::policy_digest(baked)).initial_policy(baked),
            None,
            "bound to the baked policy"
        );
        let gate = snp_launch([9u8; 32]).initial_policy(baked).expect("gate");
        let broken = Launch {
            host_data: Some(Err(no_report())),
            ..Launch::none()
        };
        assert_eq!(broken.initial_policy(baked), Some(gate));
        // The gate allows only SetPolicy, guest details and the init-data copy.
        let mut p = kata_cc_policy::PolicyEngine::new(gate).unwrap();
        let ok = |p: &mut kata_cc_policy::PolicyEngine, r: &str, i: serde_json::Value| {
            p.evaluate(r, &i).unwrap().allowed
        };
        assert!(ok(
            &mut p,
            "SetPolicyRequest",
            serde_json::json!({"policy": ""})
        ));
        assert!(ok(&mut p, "GuestDetailsRequest", serde_json::json!({})));
        assert!(ok(
            &mut p,
            "CopyFileRequest",
            serde_json::json!({"path": initdata::GUEST_PATH})
        ));
        assert!(!ok(
            &mut p,
            "CopyFileRequest",
            serde_json::json!({"path": "/run/kata-cc/layers/x"})
        ));
        for r in [
            "CreateSandboxRequest",
            "CreateContainerRequest",
            "ExecProcessRequest",
        ] {
            assert!(!ok(&mut p, r, serde_json::json!({})), "{r}");
        }
    }

    #[test]
    fn without_tee_any_policy_is_taken() {
        let l = Launch::none();
        assert_eq!(l.feature(), "tee: none");
        l.check_policy("package agent_policy\n").unwrap();
    }

    #[test]
    fn snp_takes_only_the_bound_policy() {
        let policy = "package agent_policy\ndefault SetPolicyRequest := true\n";
        let l = snp_launch(tee::policy_digest(policy));
        l.check_policy(policy).unwrap();
        let e = l.check_policy("package agent_policy\n").unwrap_err();
        assert!(
            e.to_string().contains("is not the launch's HOST_DATA"),
            "{e}"
        );
        let broken = Launch {
            host_data: Some(Err(no_report())),
            ..Launch::none()
        };
        assert!(broken.check_policy(policy).is_err());
    }

    #[test]
    fn snp_takes_the_policy_of_bound_initdata() {
        let policy = "package agent_policy\n";
        let doc = format!(
            "version = \"0.1.0\"\nalgorithm = \"sha384\"\n[data]\n\"policy.rego\" = '''\n{policy}'''\n"
        );
        let (_, hd) = initdata::bound_policy(doc.as_bytes()).unwrap();
        let l = snp_launch(hd);
        assert!(l.check_policy(policy).is_err(), "no init-data copied yet");
        let (a, b) = doc.as_bytes().split_at(10);
        l.store_initdata(0, a).unwrap();
        assert!(l.store_initdata(3, b).is_err(), "out-of-order chunk");
        assert_eq!(
            l.store_initdata(3, b).unwrap_err().to_string(),
            format!("{}: chunk at offset 3, expected 10", initdata::GUEST_PATH)
        );
        l.store_initdata(10, b).unwrap();
        l.check_policy(policy).unwrap();
        // The same document does not vouch for another policy.
        assert!(l.check_policy("package agent_policy\n# other\n").is_err());
    }

    /// What SetPolicy and CopyFile answer (after their request name).
    #[test]
    fn refusals_read_as_before() {
        let l = Launch::none();
        assert_eq!(
            l.store_initdata(-1, b"x").unwrap_err().to_string(),
            "negative offset -1"
        );
        let big = vec![0u8; initdata::MAX_LEN + 1];
        assert_eq!(
            l.store_initdata(0, &big).unwrap_err().to_string(),
            format!(
                "{}: larger than {} bytes",
                initdata::GUEST_PATH,
                initdata::MAX_LEN
            )
        );
        let broken = Launch {
            host_data: Some(Err(no_report())),
            ..Launch::none()
        };
        let e = broken.check_policy("package agent_policy\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("the SNP report could not be read: {}", tee::TeeError::NoTee)
        );
    }
}
