//! The bundle's OCI runtime spec (config.json, as containerd wrote it) converted to the agent's
//! `oci::Spec` (Kata's oci.proto). Parsed as JSON so that fields this shim does not know about
//! never make a container fail; type errors in fields it uses are reported with the field path.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use agent_proto::oci;
use protobuf::MessageField;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not valid JSON: {source}")]
    Json {
        path: String,
        source: serde_json::Error,
    },
    #[error("{path}: field {field}: {reason}")]
    Field {
        path: String,
        field: String,
        reason: String,
    },
}

/// Annotations, sysctls and the like.
type StringMap = HashMap<String, String>;

/// A parsed config.json with its origin (for error messages).
pub struct BundleSpec {
    pub path: String,
    pub json: Value,
}

impl BundleSpec {
    pub fn read(bundle: &Path) -> Result<Self, SpecError> {
        let path = bundle.join("config.json");
        let text = std::fs::read(&path).map_err(|source| SpecError::Read {
            path: path.clone(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn parse(bytes: &[u8], path: &str) -> Result<Self, SpecError> {
        let json: Value = serde_json::from_slice(bytes).map_err(|source| SpecError::Json {
            path: path.to_string(),
            source,
        })?;
        if !json.is_object() {
            return Err(field_err(path, "(root)", "not a JSON object"));
        }
        Ok(Self {
            path: path.to_string(),
            json,
        })
    }

    pub fn annotations(&self) -> HashMap<String, String> {
        self.json
            .get("annotations")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `linux.resources`, typed for the sizing code.
    pub fn linux_resources(&self) -> Result<Option<oci_spec::runtime::LinuxResources>, SpecError> {
        match self.json.get("linux").and_then(|l| l.get("resources")) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => serde_json::from_value(v.clone())
                .map(Some)
                .map_err(|e| field_err(&self.path, "linux.resources", e.to_string())),
        }
    }

    pub fn to_agent(&self) -> Result<oci::Spec, SpecError> {
        spec_to_agent(&self.json, &self.path)
    }
}

fn field_err(path: &str, field: &str, reason: impl Into<String>) -> SpecError {
    SpecError::Field {
        path: path.to_string(),
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// Typed access to one JSON object with field paths for errors.
struct Obj<'a> {
    src: &'a str,
    at: String,
    v: &'a Value,
}

impl<'a> Obj<'a> {
    fn new(src: &'a str, at: &str, v: &'a Value) -> Result<Self, SpecError> {
        if !v.is_object() {
            return Err(field_err(src, at, "expected an object"));
        }
        Ok(Self {
            src,
            at: at.to_string(),
            v,
        })
    }
    fn name(&self, k: &str) -> String {
        if self.at.is_empty() {
            k.to_string()
        } else {
            format!("{}.{}", self.at, k)
        }
    }
    fn get(&self, k: &str) -> Option<&'a Value> {
        match self.v.get(k) {
            None | Some(Value::Null) => None,
            Some(v) => Some(v),
        }
    }
    fn child(&self, k: &str) -> Result<Option<Obj<'a>>, SpecError> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => Obj::new(self.src, &self.name(k), v).map(Some),
        }
    }
    fn err(&self, k: &str, reason: &str) -> SpecError {
        field_err(self.src, &self.name(k), reason)
    }
    fn str(&self, k: &str) -> Result<String, SpecError> {
        match self.get(k) {
            None => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(self.err(k, "expected a string")),
        }
    }
    fn bool(&self, k: &str) -> Result<bool, SpecError> {
        match self.get(k) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(self.err(k, "expected a boolean")),
        }
    }
    fn u64(&self, k: &str) -> Result<u64, SpecError> {
        match self.get(k) {
            None => Ok(0),
            Some(v) => v
                .as_u64()
                .ok_or_else(|| self.err(k, "expected an unsigned integer")),
        }
    }
    fn i64(&self, k: &str) -> Result<i64, SpecError> {
        match self.get(k) {
            None => Ok(0),
            Some(v) => v.as_i64().ok_or_else(|| self.err(k, "expected an integer")),
        }
    }
    fn u32(&self, k: &str) -> Result<u32, SpecError> {
        let v = self.u64(k)?;
        u32::try_from(v).map_err(|_| self.err(k, "out of range for 32 bits"))
    }
    fn strings(&self, k: &str) -> Result<Vec<String>, SpecError> {
        match self.get(k) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| self.err(k, "expected an array of strings"))
                })
                .collect(),
            Some(_) => Err(self.err(k, "expected an array of strings")),
        }
    }
    fn u32s(&self, k: &str) -> Result<Vec<u32>, SpecError> {
        match self.get(k) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_u64()
                        .and_then(|n| u32::try_from(n).ok())
                        .ok_or_else(|| self.err(k, "expected an array of 32-bit integers"))
                })
                .collect(),
            Some(_) => Err(self.err(k, "expected an array of integers")),
        }
    }
    fn objects(&self, k: &str) -> Result<Vec<Obj<'a>>, SpecError> {
        match self.get(k) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .enumerate()
                .map(|(i, v)| Obj::new(self.src, &format!("{}[{i}]", self.name(k)), v))
                .collect(),
            Some(_) => Err(self.err(k, "expected an array")),
        }
    }
    fn string_map(&self, k: &str) -> Result<StringMap, SpecError> {
        match self.get(k) {
            None => Ok(HashMap::new()),
            Some(Value::Object(m)) => m
                .iter()
                .map(|(key, v)| {
                    v.as_str()
                        .map(|s| (key.clone(), s.to_string()))
                        .ok_or_else(|| self.err(k, "expected a map of strings"))
                })
                .collect(),
            Some(_) => Err(self.err(k, "expected a map of strings")),
        }
    }
}

/// A faithful conversion: every field the agent's `oci::Spec` has is carried over as
/// containerd wrote it (host paths, namespaces' paths, all mounts). What the guest must not
/// see is taken out afterwards, as Kata's runtime does (`shape`, `volumes`).
pub fn spec_to_agent(json: &Value, src: &str) -> Result<oci::Spec, SpecError> {
    let root = Obj::new(src, "", json)?;
    let mut spec = oci::Spec {
        Version: root.str("ociVersion")?,
        Hostname: root.str("hostname")?,
        Annotations: root.string_map("annotations")?,
        ..Default::default()
    };
    let process = root
        .child("process")?
        .ok_or_else(|| field_err(src, "process", "missing"))?;
    let p = process_from(&process)?;
    if p.Args.is_empty() {
        return Err(field_err(src, "process.args", "empty: nothing to run"));
    }
    spec.Process = MessageField::some(p);
    if let Some(r) = root.child("root")? {
        spec.Root = MessageField::some(oci::Root {
            Path: r.str("path")?,
            Readonly: r.bool("readonly")?,
            ..Default::default()
        });
    }
    for m in root.objects("mounts")? {
        spec.Mounts.push(oci::Mount {
            destination: m.str("destination")?,
            source: m.str("source")?,
            type_: m.str("type")?,
            options: m.strings("options")?,
            ..Default::default()
        });
    }
    // Hooks are host programs: never converted (Kata drops them too).
    if root.get("hooks").is_some() {
        log::info!("{src}: OCI hooks refer to host programs: not run in the guest");
    }
    if let Some(l) = root.child("linux")? {
        spec.Linux = MessageField::some(linux_from(&l)?);
    }
    Ok(spec)
}

/// `linux.resources` as runtime-spec JSON (UpdateTaskRequest's `resources`), converted.
pub fn resources_to_agent(bytes: &[u8], src: &str) -> Result<oci::LinuxResources, SpecError> {
    let json: Value = serde_json::from_slice(bytes).map_err(|source| SpecError::Json {
        path: src.to_string(),
        source,
    })?;
    resources_from(&Obj::new(src, "resources", &json)?)
}

/// An exec's process spec (the JSON of runtime-spec `Process` that containerd sends).
pub fn exec_process_to_agent(bytes: &[u8], src: &str) -> Result<oci::Process, SpecError> {
    let json: Value = serde_json::from_slice(bytes).map_err(|source| SpecError::Json {
        path: src.to_string(),
        source,
    })?;
    let obj = Obj::new(src, "process", &json)?;
    let p = process_from(&obj)?;
    if p.Args.is_empty() {
        return Err(field_err(src, "process.args", "empty: nothing to run"));
    }
    Ok(p)
}

fn process_from(p: &Obj) -> Result<oci::Process, SpecError> {
    let mut out = oci::Process {
        Terminal: p.bool("terminal")?,
        Args: p.strings("args")?,
        Env: p.strings("env")?,
        Cwd: p.str("cwd")?,
        NoNewPrivileges: p.bool("noNewPrivileges")?,
        ApparmorProfile: p.str("apparmorProfile")?,
        OOMScoreAdj: p.i64("oomScoreAdj")?,
        SelinuxLabel: p.str("selinuxLabel")?,
        ..Default::default()
    };
    if out.Cwd.is_empty() {
        out.Cwd = "/".to_string();
    }
    if let Some(cs) = p.child("consoleSize")? {
        out.ConsoleSize = MessageField::some(oci::Box {
            Height: cs.u32("height")?,
            Width: cs.u32("width")?,
            ..Default::default()
        });
    }
    if let Some(u) = p.child("user")? {
        out.User = MessageField::some(oci::User {
            UID: u.u32("uid")?,
            GID: u.u32("gid")?,
            AdditionalGids: u.u32s("additionalGids")?,
            Username: u.str("username")?,
            ..Default::default()
        });
    } else {
        out.User = MessageField::some(oci::User::default());
    }
    if let Some(c) = p.child("capabilities")? {
        out.Capabilities = MessageField::some(oci::LinuxCapabilities {
            Bounding: c.strings("bounding")?,
            Effective: c.strings("effective")?,
            Inheritable: c.strings("inheritable")?,
            Permitted: c.strings("permitted")?,
            Ambient: c.strings("ambient")?,
            ..Default::default()
        });
    }
    for r in p.objects("rlimits")? {
        out.Rlimits.push(oci::POSIXRlimit {
            Type: r.str("type")?,
            Hard: r.u64("hard")?,
            Soft: r.u64("soft")?,
            ..Default::default()
        });
    }
    Ok(out)
}

fn linux_from(l: &Obj) -> Result<oci::Linux, SpecError> {
    let mut out = oci::Linux {
        Sysctl: l.string_map("sysctl")?,
        CgroupsPath: l.str("cgroupsPath")?,
        RootfsPropagation: l.str("rootfsPropagation")?,
        MaskedPaths: l.strings("maskedPaths")?,
        ReadonlyPaths: l.strings("readonlyPaths")?,
        MountLabel: l.str("mountLabel")?,
        ..Default::default()
    };
    for (key, dst) in [
        ("uidMappings", &mut out.UIDMappings),
        ("gidMappings", &mut out.GIDMappings),
    ] {
        for m in l.objects(key)? {
            dst.push(oci::LinuxIDMapping {
                HostID: m.u32("hostID")?,
                ContainerID: m.u32("containerID")?,
                Size: m.u32("size")?,
                ..Default::default()
            });
        }
    }
    for n in l.objects("namespaces")? {
        out.Namespaces.push(oci::LinuxNamespace {
            Type: n.str("type")?,
            Path: n.str("path")?,
            ..Default::default()
        });
    }
    for d in l.objects("devices")? {
        out.Devices.push(oci::LinuxDevice {
            Path: d.str("path")?,
            Type: d.str("type")?,
            Major: d.i64("major")?,
            Minor: d.i64("minor")?,
            FileMode: d.u32("fileMode")?,
            UID: d.u32("uid")?,
            GID: d.u32("gid")?,
            ..Default::default()
        });
    }
    if let Some(r) = l.child("resources")? {
        out.Resources = MessageField::some(resources_from(&r)?);
    }
    if let Some(s) = l.child("seccomp")? {
        let mut sc = oci::LinuxSeccomp {
            DefaultAction: s.str("defaultAction")?,
            Architectures: s.strings("architectures")?,
            Flags: s.strings("flags")?,
            ..Default::default()
        };
        for sys in s.objects("syscalls")? {
            let mut call = oci::LinuxSyscall {
                Names: sys.strings("names")?,
                Action: sys.str("action")?,
                ..Default::default()
            };
            if sys.get("errnoRet").is_some() {
                call.ErrnoRet = Some(oci::linux_syscall::ErrnoRet::Errnoret(sys.u32("errnoRet")?));
            }
            for a in sys.objects("args")? {
                call.Args.push(oci::LinuxSeccompArg {
                    Index: a.u64("index")?,
                    Value: a.u64("value")?,
                    ValueTwo: a.u64("valueTwo")?,
                    Op: a.str("op")?,
                    ..Default::default()
                });
            }
            sc.Syscalls.push(call);
        }
        out.Seccomp = MessageField::some(sc);
    }
    Ok(out)
}

fn resources_from(r: &Obj) -> Result<oci::LinuxResources, SpecError> {
    let mut out = oci::LinuxResources::default();
    for d in r.objects("devices")? {
        out.Devices.push(oci::LinuxDeviceCgroup {
            Allow: d.bool("allow")?,
            Type: d.str("type")?,
            Major: if d.get("major").is_some() {
                d.i64("major")?
            } else {
                -1
            },
            Minor: if d.get("minor").is_some() {
                d.i64("minor")?
            } else {
                -1
            },
            Access: d.str("access")?,
            ..Default::default()
        });
    }
    if let Some(m) = r.child("memory")? {
        out.Memory = MessageField::some(oci::LinuxMemory {
            Limit: m.i64("limit")?,
            Reservation: m.i64("reservation")?,
            Swap: m.i64("swap")?,
            Kernel: m.i64("kernel")?,
            KernelTCP: m.i64("kernelTCP")?,
            Swappiness: m.u64("swappiness")?,
            DisableOOMKiller: m.bool("disableOOMKiller")?,
            ..Default::default()
        });
    }
    if let Some(c) = r.child("cpu")? {
        out.CPU = MessageField::some(oci::LinuxCPU {
            Shares: c.u64("shares")?,
            Quota: c.i64("quota")?,
            Period: c.u64("period")?,
            RealtimeRuntime: c.i64("realtimeRuntime")?,
            RealtimePeriod: c.u64("realtimePeriod")?,
            Cpus: c.str("cpus")?,
            Mems: c.str("mems")?,
            ..Default::default()
        });
    }
    if let Some(p) = r.child("pids")? {
        out.Pids = MessageField::some(oci::LinuxPids {
            Limit: p.i64("limit")?,
            ..Default::default()
        });
    }
    for h in r.objects("hugepageLimits")? {
        out.HugepageLimits.push(oci::LinuxHugepageLimit {
            Pagesize: h.str("pageSize")?,
            Limit: h.u64("limit")?,
            ..Default::default()
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CTR_SPEC: &str = r#"{
      "ociVersion": "1.0.2-dev",
      "process": {
        "terminal": false,
        "user": {"uid": 0, "gid": 0, "additionalGids": [10]},
        "args": ["sh", "-c", "exit 3"],
        "env": ["PATH=/usr/bin:/bin"],
        "cwd": "/",
        "capabilities": {"bounding": ["CAP_CHOWN"], "effective": ["CAP_CHOWN"], "permitted": ["CAP_CHOWN"]},
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
        "noNewPrivileges": true
      },
      "root": {"path": "rootfs"},
      "hostname": "h1",
      "mounts": [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid"]},
        {"destination": "/data", "type": "bind", "source": "/srv/data", "options": ["rbind", "ro"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts"}
      ],
      "hooks": {"prestart": [{"path": "/usr/bin/true"}]},
      "annotations": {"a": "b"},
      "linux": {
        "resources": {
          "devices": [{"allow": false, "access": "rwm"}],
          "memory": {"limit": 536870912},
          "cpu": {"quota": 150000, "period": 100000}
        },
        "cgroupsPath": "/default/id1",
        "namespaces": [{"type": "pid"}, {"type": "network", "path": "/var/run/netns/x"}],
        "maskedPaths": ["/proc/kcore"],
        "readonlyPaths": ["/proc/sys"],
        "seccomp": {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", "errnoRet": 1}]}
      }
    }"#;

    #[test]
    fn converts_ctr_spec() {
        let b = BundleSpec::parse(CTR_SPEC.as_bytes(), "config.json").unwrap();
        let s = b.to_agent().unwrap();
        assert_eq!(s.Version, "1.0.2-dev");
        assert_eq!(s.Hostname, "h1");
        let p = s.Process.as_ref().unwrap();
        assert_eq!(p.Args, vec!["sh", "-c", "exit 3"]);
        assert_eq!(p.User.AdditionalGids, vec![10]);
        assert!(p.NoNewPrivileges);
        assert_eq!(p.Rlimits[0].Type, "RLIMIT_NOFILE");
        assert_eq!(p.Capabilities.Bounding, vec!["CAP_CHOWN"]);
        // Every mount is converted (volumes decides what the guest gets).
        let dests: Vec<_> = s.Mounts.iter().map(|m| m.destination.as_str()).collect();
        assert_eq!(dests, vec!["/proc", "/data", "/dev/pts"]);
        assert_eq!(s.Mounts[1].options, vec!["rbind", "ro"]);
        assert!(s.Hooks.is_none());
        let l = s.Linux.as_ref().unwrap();
        assert_eq!(l.Resources.Memory.Limit, 536870912);
        assert_eq!(l.Resources.CPU.Quota, 150000);
        assert_eq!(l.Resources.Devices[0].Major, -1);
        assert_eq!(l.Namespaces[1].Type, "network");
        assert_eq!(l.Namespaces[1].Path, "/var/run/netns/x");
        assert_eq!(
            l.Seccomp.Syscalls[0].ErrnoRet,
            Some(oci::linux_syscall::ErrnoRet::Errnoret(1))
        );
        let res = b.linux_resources().unwrap().unwrap();
        assert_eq!(res.memory().as_ref().unwrap().limit(), Some(536870912));
        assert_eq!(b.annotations().get("a").map(String::as_str), Some("b"));
    }

    #[test]
    fn type_errors_name_the_field() {
        let bad = CTR_SPEC.replace("\"uid\": 0", "\"uid\": \"root\"");
        let err = BundleSpec::parse(bad.as_bytes(), "/b/config.json")
            .unwrap()
            .to_agent()
            .unwrap_err()
            .to_string();
        assert!(err.contains("/b/config.json"), "{err}");
        assert!(err.contains("process.user.uid"), "{err}");
        let bad = CTR_SPEC.replace("\"args\": [\"sh\", \"-c\", \"exit 3\"]", "\"args\": []");
        let err = BundleSpec::parse(bad.as_bytes(), "c.json")
            .unwrap()
            .to_agent()
            .unwrap_err()
            .to_string();
        assert!(err.contains("process.args"), "{err}");
    }

    #[test]
    fn update_resources() {
        let r = resources_to_agent(
            br#"{"memory":{"limit":268435456},"cpu":{"quota":50000,"period":100000,"cpus":"0-3"},"devices":[{"allow":false,"access":"rwm"}]}"#,
            "update c1",
        )
        .unwrap();
        assert_eq!(r.Memory.Limit, 268435456);
        assert_eq!(r.CPU.Cpus, "0-3");
        assert_eq!(r.Devices.len(), 1);
        let e = resources_to_agent(br#"{"memory":{"limit":"1G"}}"#, "update c1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("resources.memory.limit"), "{e}");
    }

    #[test]
    fn exec_process() {
        let p = exec_process_to_agent(
            br#"{"args":["cat"],"terminal":true,"user":{"uid":1,"gid":2},"cwd":""}"#,
            "exec e1",
        )
        .unwrap();
        assert!(p.Terminal);
        assert_eq!(p.Cwd, "/");
        assert_eq!(p.User.GID, 2);
        assert!(exec_process_to_agent(b"[]", "exec e1").is_err());
    }
}
