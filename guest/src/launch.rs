//! What the agent knows about its own launch: the TEE it runs in and, under SEV-SNP, the
//! HOST_DATA the host put into the measured launch. A policy the host sends later is enforced
//! only if it is the one HOST_DATA names (the AKS model: sha256 of the policy text; the
//! init-data model: the init-data document's digest, with the document copied in by the shim).

use std::sync::Mutex;

use kata_cc_guest::{initdata, tee};

pub struct Launch {
    pub tee: tee::Tee,
    /// HOST_DATA of this launch (SNP only). `Err` when the report could not be read: every
    /// SetPolicy is then refused, as the binding cannot be checked.
    host_data: Option<Result<[u8; tee::HOST_DATA_LEN], String>>,
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
                    tee::TSM_REPORT_DIR,
                    tee::SEV_GUEST_DEVICE
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
                    Err(e.to_string())
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

    /// GetGuestDetails' extra feature naming the TEE.
    pub fn feature(&self) -> String {
        format!("tee: {}", self.tee.name())
    }

    /// CopyFile of the init-data document: kept in memory (it is small), replacing any earlier
    /// copy when `offset` is 0.
    pub fn store_initdata(&self, offset: i64, data: &[u8]) -> Result<(), String> {
        let mut slot = self
            .initdata
            .lock()
            .map_err(|_| "init-data lock poisoned")?;
        let buf = slot.get_or_insert_with(Vec::new);
        let offset = usize::try_from(offset).map_err(|_| format!("negative offset {offset}"))?;
        if offset == 0 {
            buf.clear();
        }
        if offset != buf.len() {
            return Err(format!(
                "{}: chunk at offset {offset}, expected {}",
                initdata::GUEST_PATH,
                buf.len()
            ));
        }
        if buf.len() + data.len() > initdata::MAX_LEN {
            return Err(format!(
                "{}: larger than {} bytes",
                initdata::GUEST_PATH,
                initdata::MAX_LEN
            ));
        }
        buf.extend_from_slice(data);
        Ok(())
    }

    /// Whether `policy` may be enforced in this launch. Without a TEE every policy may (the
    /// development mode said so at start); under SNP it must be the one HOST_DATA names.
    pub fn check_policy(&self, policy: &str) -> Result<(), String> {
        let host_data = match &self.host_data {
            None => return Ok(()),
            Some(Err(e)) => return Err(format!("the SNP report could not be read: {e}")),
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
        tee::check_policy(host_data, policy, from_initdata.as_ref()).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(e.contains("is not the launch's HOST_DATA"), "{e}");
        let broken = Launch {
            host_data: Some(Err("no report".into())),
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
        l.store_initdata(10, b).unwrap();
        l.check_policy(policy).unwrap();
        // The same document does not vouch for another policy.
        assert!(l.check_policy("package agent_policy\n# other\n").is_err());
    }
}
