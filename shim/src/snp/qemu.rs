//! The QEMU arguments of an SEV-SNP guest. QEMU (>= 9.1) takes an `sev-snp-guest` object as the
//! machine's `confidential-guest-support`; with it KVM backs private guest memory with
//! guest_memfd by itself, so the shared memfd backend (which the vhost-user vsock backend maps)
//! stays as it is. `kernel-hashes=on` makes QEMU put the kernel/initrd/command line hashes into
//! the firmware's hash table page, so they are part of the launch measurement.

use thiserror::Error;

use super::measure::DEFAULT_VCPU_TYPE;

/// Default SNP guest policy: SMT allowed (bit 16), reserved bit 17 set; no debug, no migration.
pub const DEFAULT_GUEST_POLICY: u64 = 0x30000;
/// The id of the `sev-snp-guest` object.
pub const SNP_OBJECT_ID: &str = "snp0";

/// Everything the SNP part of the command line depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnpLaunch {
    /// Page-table bit that marks encrypted memory (CPUID 0x8000001F EBX[5:0]).
    pub cbitpos: u32,
    /// Physical address bits lost to memory encryption (CPUID 0x8000001F EBX[11:6]).
    pub reduced_phys_bits: u32,
    pub policy: u64,
    /// HOST_DATA: the pod policy's digest, copied into every report.
    pub host_data: Option<[u8; 32]>,
    /// Optional ID block and its authentication structure (base64, as QEMU takes them).
    pub id_block: Option<String>,
    pub id_auth: Option<String>,
    /// QEMU `-cpu` model; the expected measurement assumes the same one.
    pub vcpu_type: String,
}

impl SnpLaunch {
    pub fn new(cbitpos: u32, reduced_phys_bits: u32) -> SnpLaunch {
        SnpLaunch {
            cbitpos,
            reduced_phys_bits,
            policy: DEFAULT_GUEST_POLICY,
            host_data: None,
            id_block: None,
            id_auth: None,
            vcpu_type: DEFAULT_VCPU_TYPE.to_string(),
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SnpArgsError {
    #[error("SEV-SNP command line: the base QEMU arguments have no {0} option")]
    Missing(&'static str),
    #[error("SEV-SNP needs a firmware (hypervisor.qemu.firmware): an AMD SEV OVMF build")]
    NoFirmware,
    #[error("hypervisor.qemu.snp_id_auth is required with snp_id_block (and only with it)")]
    IdAuth,
}

/// The host CPU has no AMD memory-encryption leaf.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CpuidError {
    #[error("CPUID leaf 0x8000001F (AMD memory encryption) is absent ({vendor}, highest extended leaf {max_ext:#x})")]
    NoLeaf { vendor: String, max_ext: u32 },
    #[error("CPUID leaf 0x8000001F (AMD memory encryption) is absent: not an x86_64 host")]
    NotX86,
}

/// The `sev-snp-guest` object's option string.
pub fn snp_object(s: &SnpLaunch) -> String {
    let mut o = format!(
        "sev-snp-guest,id={SNP_OBJECT_ID},cbitpos={},reduced-phys-bits={},policy={:#x},kernel-hashes=on",
        s.cbitpos, s.reduced_phys_bits, s.policy
    );
    if let Some(h) = &s.host_data {
        o.push(',');
        o.push_str(&snp_host_data_option(h));
    }
    if let (Some(b), Some(a)) = (&s.id_block, &s.id_auth) {
        o.push_str(&format!(",id-block={b},id-auth={a}"));
    }
    o
}

/// The `host-data` option of QEMU's `sev-snp-guest` object: the 32 HOST_DATA bytes in
/// standard base64, which the SNP firmware copies into every attestation report.
pub fn snp_host_data_option(host_data: &[u8; 32]) -> String {
    use base64::Engine as _;
    format!(
        "host-data={}",
        base64::engine::general_purpose::STANDARD.encode(host_data)
    )
}

/// Turns the ordinary command line (`vm::qemu::qemu_args`) into an SNP one: KVM only, the
/// `sev-snp-guest` object as confidential-guest-support, the measured vCPU model. Pure.
pub fn snp_qemu_args(base: &[String], s: &SnpLaunch) -> Result<Vec<String>, SnpArgsError> {
    if s.id_block.is_some() != s.id_auth.is_some() {
        return Err(SnpArgsError::IdAuth);
    }
    let pos = |opt: &str| {
        base.iter()
            .position(|a| a == opt)
            .filter(|i| i + 1 < base.len())
    };
    let machine = pos("-machine").ok_or(SnpArgsError::Missing("-machine"))?;
    let cpu = pos("-cpu").ok_or(SnpArgsError::Missing("-cpu"))?;
    pos("-bios").ok_or(SnpArgsError::NoFirmware)?;
    let mut out = base.to_vec();
    let mut m: Vec<String> = out[machine + 1]
        .split(',')
        .filter(|part| !part.starts_with("accel="))
        .map(str::to_string)
        .collect();
    // Right after the machine type, where the ordinary command line has it.
    m.insert(1.min(m.len()), "accel=kvm".into());
    out[machine + 1] = format!("{},confidential-guest-support={SNP_OBJECT_ID}", m.join(","));
    out[cpu + 1] = s.vcpu_type.clone();
    // The object right after the machine options (QEMU resolves the link at machine init).
    out.splice(
        machine + 2..machine + 2,
        ["-object".to_string(), snp_object(s)],
    );
    // KVM only: no separate accelerator option; and no balloon (the host cannot take back an
    // SNP guest's pages that way).
    let mut i = 0;
    while i + 1 < out.len() {
        let drop =
            out[i] == "-accel" || (out[i] == "-device" && out[i + 1].starts_with("virtio-balloon"));
        if drop {
            out.drain(i..i + 2);
        } else {
            i += 1;
        }
    }
    Ok(out)
}

/// Reads CPUID 0x8000001F (AMD memory encryption): (SNP supported, cbitpos, reduced phys bits).
pub fn host_cbit() -> Result<(bool, u32, u32), CpuidError> {
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::__cpuid;
        let vendor = __cpuid(0);
        let mut v = Vec::with_capacity(12);
        for r in [vendor.ebx, vendor.edx, vendor.ecx] {
            v.extend_from_slice(&r.to_le_bytes());
        }
        let vendor = String::from_utf8_lossy(&v).to_string();
        // Leaf 0x80000000 reports the highest extended leaf.
        let max_ext = __cpuid(0x8000_0000).eax;
        if vendor != "AuthenticAMD" || max_ext < 0x8000_001F {
            return Err(CpuidError::NoLeaf { vendor, max_ext });
        }
        let l = __cpuid(0x8000_001F);
        Ok((l.eax & (1 << 4) != 0, l.ebx & 0x3f, (l.ebx >> 6) & 0x3f))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        Err(CpuidError::NotX86)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Vec<String> {
        "-name kata-cc-p -machine q35,accel=tcg,memory-backend=mem -cpu max -smp 2 -m 2048M \
         -object memory-backend-memfd,id=mem,size=2048M,share=on -bios /fw/OVMF.fd -kernel /k"
            .split_whitespace()
            .map(String::from)
            .collect()
    }

    #[test]
    fn snp_host_data_golden() {
        // base64 of 0x00..=0x1f, from `printf` of those bytes piped to `base64`.
        let bytes: [u8; 32] = std::array::from_fn(|i| i as u8);
        assert_eq!(
            snp_host_data_option(&bytes),
            "host-data=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
        );
    }

    #[test]
    fn golden_snp_command_line() {
        let mut s = SnpLaunch::new(51, 1);
        s.host_data = Some(std::array::from_fn(|i| i as u8));
        let args = snp_qemu_args(&base(), &s).unwrap();
        assert_eq!(
            args.join(" "),
            "-name kata-cc-p \
             -machine q35,accel=kvm,memory-backend=mem,confidential-guest-support=snp0 \
             -object sev-snp-guest,id=snp0,cbitpos=51,reduced-phys-bits=1,policy=0x30000,kernel-hashes=on,host-data=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8= \
             -cpu EPYC-v4 -smp 2 -m 2048M \
             -object memory-backend-memfd,id=mem,size=2048M,share=on -bios /fw/OVMF.fd -kernel /k"
        );
    }

    /// A TCG command line (accelerator options, balloon) still becomes a KVM-only SNP one.
    #[test]
    fn tcg_options_and_balloon_are_dropped() {
        let tcg: Vec<String> =
            "-name kata-cc-p -machine q35,memory-backend=mem -accel tcg,tb-size=32 \
             -cpu max -smp 1 -m 2048M -bios /fw/OVMF.fd -kernel /k \
             -device virtio-balloon-pci,free-page-reporting=on -qmp unix:/q"
                .split_whitespace()
                .map(String::from)
                .collect();
        let a = snp_qemu_args(&tcg, &SnpLaunch::new(51, 1))
            .unwrap()
            .join(" ");
        assert!(
            a.starts_with(
                "-name kata-cc-p -machine q35,accel=kvm,memory-backend=mem,confidential-guest-support=snp0 -object sev-snp-guest"
            ),
            "{a}"
        );
        assert!(
            !a.contains("-accel") && !a.contains("tcg") && !a.contains("balloon"),
            "{a}"
        );
        assert!(a.ends_with("-kernel /k -qmp unix:/q"), "{a}");
    }

    /// The VM NIC passes through unchanged (QEMU itself turns `iommu_platform` on for virtio
    /// devices of a confidential guest).
    #[test]
    fn nic_is_kept() {
        let mut base = base();
        base.extend(crate::vm::qemu::nic_args(&[crate::vm::qemu::NetDevice {
            id: "net0".into(),
            tap_fd: 9,
            vhost_fd: None,
            mac: "46:7c:91:8d:d4:20".into(),
        }]));
        let a = snp_qemu_args(&base, &SnpLaunch::new(51, 1))
            .unwrap()
            .join(" ");
        assert!(
            a.ends_with(
                "-bios /fw/OVMF.fd -kernel /k -netdev tap,id=net0,fd=9,vhost=off \
                 -device virtio-net-pci,netdev=net0,mac=46:7c:91:8d:d4:20,romfile="
            ),
            "{a}"
        );
        assert!(a.contains("confidential-guest-support=snp0"), "{a}");
    }

    #[test]
    fn id_block_needs_id_auth_and_firmware_is_required() {
        let mut s = SnpLaunch::new(51, 1);
        s.id_block = Some("AAAA".into());
        assert_eq!(snp_qemu_args(&base(), &s), Err(SnpArgsError::IdAuth));
        s.id_auth = Some("BBBB".into());
        s.policy = 0x30001;
        let a = snp_qemu_args(&base(), &s).unwrap().join(" ");
        assert!(
            a.contains("policy=0x30001,kernel-hashes=on,id-block=AAAA,id-auth=BBBB"),
            "{a}"
        );
        let no_bios: Vec<String> = base()
            .into_iter()
            .filter(|a| !a.contains("bios") && !a.contains("OVMF"))
            .collect();
        assert_eq!(
            snp_qemu_args(&no_bios, &SnpLaunch::new(51, 1)),
            Err(SnpArgsError::NoFirmware)
        );
    }

    #[test]
    fn cpuid_error_text() {
        let e = CpuidError::NoLeaf {
            vendor: "GenuineIntel".into(),
            max_ext: 0x8000_0008,
        };
        assert_eq!(
            e.to_string(),
            "CPUID leaf 0x8000001F (AMD memory encryption) is absent (GenuineIntel, highest \
             extended leaf 0x80000008)"
        );
    }

    #[test]
    fn cpuid_answers_or_names_the_leaf() {
        match host_cbit() {
            Ok((_, c, r)) => assert!(c < 64 && r < 64),
            Err(e) => assert!(e.to_string().contains("CPUID leaf 0x8000001F"), "{e}"),
        }
    }
}
