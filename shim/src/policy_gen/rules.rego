# kata-cc's rules for a generated policy (`kata-cc policy gen`).
#
# They allow the agent requests kata-cc's shim sends for one pod (docs/kubernetes.md), as
# described by `policy_data` below them (genpolicy's schema, with kata-cc's additions under
# `kata_cc` keys), and nothing else. A denied request prints one line: the request, the
# container, and each field that is not the policy's.
#
# State (data.pstate, written with the ops of allowed requests): the sandbox's id and hostname
# (CreateSandbox), its name and namespace (the sandbox container), and for each container id
# the index of its policy container (genpolicy's layout).

package agent_policy

import future.keywords.contains
import future.keywords.every
import future.keywords.if
import future.keywords.in

default AllowRequestsFailingPolicy := false

# Requests of a pod's life that carry nothing to check.
default DestroySandboxRequest := true
default GetOOMEventRequest := true
default GuestDetailsRequest := true
default OnlineCPUMemRequest := true
default RemoveStaleVirtiofsShareMountsRequest := true

# Requests kata-cc's shim does not send for a pod, or that this policy keeps off.
default AddARPNeighborsRequest := false
default AddSwapPathRequest := false
default AddSwapRequest := false
default CloseStdinRequest := false
default CopyFileRequest := false
default CreateSandboxRequest := false
default ExecProcessRequest := false
default GetDiagnosticDataRequest := false
default GetIPTablesRequest := false
default GetMetricsRequest := false
default ListInterfacesRequest := false
default ListRoutesRequest := false
default MemAgentCompactConfig := false
default MemAgentMemcgConfig := false
default MemHotplugByProbeRequest := false
default PauseContainerRequest := false
default ReadStreamRequest := false
default ReseedRandomDevRequest := false
default ResizeVolumeRequest := false
default ResumeContainerRequest := false
default SetGuestDateTimeRequest := false
default SetIPTablesRequest := false
default SetPolicyRequest := false
default SignalProcessRequest := false
default StartContainerRequest := false
default StartTracingRequest := false
default StatsContainerRequest := false
default StopTracingRequest := false
default TtyWinResizeRequest := false
default UpdateContainerRequest := false
default UpdateEphemeralMountsRequest := false
default UpdateInterfaceRequest := false
default UpdateRoutesRequest := false
default VolumeStatsRequest := false
default WaitProcessRequest := false
default WriteStreamRequest := false

S_TYPE := "io.kubernetes.cri.container-type"
S_NAME := "io.kubernetes.cri.sandbox-name"
S_NAMESPACE := "io.kubernetes.cri.sandbox-namespace"
S_ID := "io.kubernetes.cri.sandbox-id"
C_NAME := "io.kubernetes.cri.container-name"

######################################################################
# State

pstate := s if {
	s := data.pstate
} else := {}

# The ops that record `adds` ({key: value}), creating the state object if needed.
state_ops(adds) := ops if {
	data.pstate
	ops := [{"op": "add", "path": concat("/", ["/pstate", k]), "value": v} | some k, v in adds]
} else := ops if {
	ops := [{"op": "add", "path": "/pstate", "value": adds}]
}

# The policy container of a created container id, and its name for messages.
known(cid) := policy_data.containers[pstate[cid]]

label(cid) := name if {
	name := sprintf("\"%v\"", [known(cid).kata_cc.name])
} else := sprintf("id %v (not created under this policy)", [cid])

# A name escaped for a regex (DNS names: only '.' is special).
esc(s) := replace(s, ".", "\\.")

# A policy regex with the pod's actual name, namespace and hostname put in.
pod_regex(re, name, namespace) := out if {
	r1 := replace(re, "$(sandbox-name)", esc(name))
	r2 := replace(r1, "$(sandbox-namespace)", esc(namespace))
	out := replace(r2, "$(host-name)", esc(object.get(pstate, "hostname", "")))
}

######################################################################
# CreateSandboxRequest: the pod's hostname, its shm, once.

CreateSandboxRequest := {"allowed": true, "ops": ops} if {
	count(sandbox_violations) == 0
	ops := state_ops({"sandbox_id": input.sandbox_id, "hostname": input.hostname})
} else := {"allowed": false} if {
	print(sprintf("CreateSandboxRequest: %v", [concat("; ", sandbox_violations)]))
}

sandbox_violations contains "a sandbox was already created under this policy" if {
	pstate.sandbox_id
}

sandbox_violations contains msg if {
	not regex.match(policy_data.sandbox.hostname, input.hostname)
	msg := sprintf("hostname \"%v\" is not the pod's (%v)", [input.hostname, policy_data.sandbox.hostname])
}

sandbox_violations contains msg if {
	not regex.match("^[0-9a-f]{64}$", input.sandbox_id)
	msg := sprintf("sandbox_id \"%v\" is not a CRI id", [input.sandbox_id])
}

sandbox_violations contains "sandbox_pidns is true (the pod's pid namespace is the pause's)" if {
	input.sandbox_pidns == true
}

sandbox_violations contains "guest_hook_path is set" if {
	count(input.guest_hook_path) > 0
}

sandbox_violations contains "kernel_modules are requested" if {
	count(input.kernel_modules) > 0
}

sandbox_violations contains "guest_userns is set" if {
	input.guest_userns == true
}

sandbox_violations contains msg if {
	count(input.storages) != count(policy_data.sandbox.storages)
	msg := sprintf("storages: %v given, the policy has %v (the shm)", [count(input.storages), count(policy_data.sandbox.storages)])
}

sandbox_violations contains msg if {
	some s in input.storages
	not sandbox_storage_allowed(s)
	msg := sprintf("storage %v is not the policy's", [s])
}

sandbox_storage_allowed(s) if {
	some p in policy_data.sandbox.storages
	storage_fields_equal(p, s)
}

storage_fields_equal(p, s) if {
	p.driver == s.driver
	p.driver_options == s.driver_options
	p.source == s.source
	p.fstype == s.fstype
	p.options == s.options
	p.mount_point == s.mount_point
	p.fs_group == s.fs_group
	object.get(s, "shared", false) == p.shared
}

######################################################################
# CreateContainerRequest: the sandbox (pause) container or a container of the pod.

cc_type := input.OCI.Annotations[S_TYPE]

cc_index := i if {
	cc_type == "sandbox"
	some i, c in policy_data.containers
	c.OCI.Annotations[S_TYPE] == "sandbox"
}

cc_index := i if {
	cc_type == "container"
	some i, c in policy_data.containers
	c.OCI.Annotations[S_TYPE] == "container"
	c.kata_cc.name == input.OCI.Annotations[C_NAME]
}

cc := policy_data.containers[cc_index]

cc_label := cc.kata_cc.name if {
	cc.kata_cc.name
} else := input.OCI.Annotations[C_NAME] if {
	input.OCI.Annotations[C_NAME]
} else := "?"

# The pod's name and namespace as this request gives them.
cc_name := object.get(input.OCI.Annotations, S_NAME, "")

cc_namespace := object.get(input.OCI.Annotations, S_NAMESPACE, "")

CreateContainerRequest := {"allowed": true, "ops": ops} if {
	count(cc_violations) == 0
	ops := state_ops(cc_state)
} else := {"allowed": false} if {
	print(sprintf("CreateContainerRequest: container \"%v\": %v", [cc_label, concat("; ", cc_violations)]))
}

cc_state := {input.container_id: cc_index, "sandbox_name": cc_name, "namespace": cc_namespace} if {
	cc_type == "sandbox"
} else := {input.container_id: cc_index}

# The pod's order: CreateSandbox, the sandbox container, then the others.
cc_violations contains "no CreateSandboxRequest came before it" if {
	not pstate.sandbox_id
}

cc_violations contains "annotation io.kubernetes.cri.container-type is missing" if {
	not cc_type
}

cc_violations contains msg if {
	cc_type
	not cc_index
	names := [c.kata_cc.name | some c in policy_data.containers]
	msg := sprintf("not a container of the policy (%v, type %v; the policy's: %v)", [object.get(input.OCI.Annotations, C_NAME, "no name"), cc_type, names])
}

cc_violations contains "the sandbox container was already created" if {
	cc_type == "sandbox"
	pstate.sandbox_name
}

cc_violations contains "the sandbox container was not created before it" if {
	cc_type == "container"
	not pstate.sandbox_name
}

cc_violations contains msg if {
	cc_type == "sandbox"
	pstate.sandbox_id
	input.container_id != pstate.sandbox_id
	msg := sprintf("container_id %v is not the sandbox's id %v", [input.container_id, pstate.sandbox_id])
}

cc_violations contains msg if {
	not regex.match("^[0-9a-f]{64}$", input.container_id)
	msg := sprintf("container_id \"%v\" is not a CRI id", [input.container_id])
}

cc_violations contains msg if {
	some old, _ in pstate
	old == input.container_id
	msg := sprintf("container_id %v was already created", [input.container_id])
}

# Kata's shape: what the runtime removes before a spec goes to the guest.
cc_violations contains msg if {
	some field, v in {
		"string_user": input.string_user,
		"OCI.Hooks": input.OCI.Hooks,
		"OCI.Solaris": object.get(input.OCI, "Solaris", null),
		"OCI.Windows": object.get(input.OCI, "Windows", null),
		"OCI.Linux.IntelRdt": object.get(input.OCI.Linux, "IntelRdt", null),
		"OCI.Linux.Seccomp": input.OCI.Linux.Seccomp,
		"OCI.Linux.Resources.Pids": input.OCI.Linux.Resources.Pids,
		"OCI.Linux.Resources.BlockIO": input.OCI.Linux.Resources.BlockIO,
		"OCI.Linux.Resources.Network": input.OCI.Linux.Resources.Network,
	}
	v != null
	msg := sprintf("%v is set", [field])
}

cc_violations contains msg if {
	some field, v in {
		"shared_mounts": input.shared_mounts,
		"devices": input.devices,
		"OCI.Linux.UIDMappings": input.OCI.Linux.UIDMappings,
		"OCI.Linux.GIDMappings": input.OCI.Linux.GIDMappings,
		"OCI.Linux.Devices": input.OCI.Linux.Devices,
		"OCI.Linux.Resources.Devices": input.OCI.Linux.Resources.Devices,
		"OCI.Linux.MountLabel": input.OCI.Linux.MountLabel,
		"OCI.Linux.RootfsPropagation": input.OCI.Linux.RootfsPropagation,
		"OCI.Process.SelinuxLabel": input.OCI.Process.SelinuxLabel,
		"OCI.Process.User.Username": input.OCI.Process.User.Username,
	}
	count(v) > 0
	msg := sprintf("%v is not empty: %v", [field, v])
}

# Annotations.
cc_violations contains msg if {
	cc
	some k, v in input.OCI.Annotations
	not annotation_allowed(k, v)
	msg := sprintf("annotation %v=\"%v\" is not allowed by the policy", [k, v])
}

cc_violations contains msg if {
	cc
	some k in [S_TYPE, S_NAME, S_NAMESPACE, S_ID, "io.katacontainers.pkg.oci.container_type"]
	not input.OCI.Annotations[k]
	msg := sprintf("annotation %v is missing", [k])
}

cc_violations contains msg if {
	cc_type == "container"
	pstate.sandbox_name
	cc_name != pstate.sandbox_name
	msg := sprintf("sandbox name \"%v\" is not the sandbox's \"%v\"", [cc_name, pstate.sandbox_name])
}

cc_violations contains msg if {
	cc_type == "container"
	pstate.sandbox_name
	cc_namespace != pstate.namespace
	msg := sprintf("namespace \"%v\" is not the sandbox's \"%v\"", [cc_namespace, pstate.namespace])
}

cc_violations contains msg if {
	pstate.sandbox_id
	id := input.OCI.Annotations[S_ID]
	id != pstate.sandbox_id
	msg := sprintf("annotation %v=%v is not the sandbox's id %v", [S_ID, id, pstate.sandbox_id])
}

annotation_allowed(k, v) if {
	k in {"io.katacontainers.config.agent.policy", "io.katacontainers.config.hypervisor.cc_init_data"}
}

annotation_allowed(k, v) if {
	k == "io.katacontainers.pkg.oci.bundle_path"
	startswith(v, "/")
	endswith(v, concat("", ["/io.containerd.runtime.v2.task/k8s.io/", input.container_id]))
}

annotation_allowed(k, v) if {
	k == S_NAME
	regex.match(cc.OCI.Annotations[S_NAME], v)
}

annotation_allowed(k, v) if {
	k == S_NAMESPACE
	cc.OCI.Annotations[S_NAMESPACE] in {"", v}
	regex.match("^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", v)
}

annotation_allowed(k, v) if {
	k == S_ID
	regex.match(cc.OCI.Annotations[S_ID], v)
}

annotation_allowed(k, v) if {
	k == "io.kubernetes.cri.image-name"
	v in cc.kata_cc.image_names
}

annotation_allowed(k, v) if {
	k == "io.kubernetes.cri.sandbox-log-directory"
	regex.match(concat("", ["^/.*/", esc(cc_namespace), "_", esc(cc_name), "_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"]), v)
}

annotation_allowed(k, v) if {
	k == "io.kubernetes.cri.sandbox-uid"
	regex.match("^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", v)
}

annotation_allowed(k, v) if {
	k in {"io.kubernetes.cri.sandbox-cpu-period", "io.kubernetes.cri.sandbox-cpu-quota", "io.kubernetes.cri.sandbox-cpu-shares", "io.kubernetes.cri.sandbox-memory"}
	cc_type == "sandbox"
	regex.match("^-?[0-9]+$", v)
}

annotation_allowed(k, v) if {
	k == "nerdctl/network-namespace"
	cc_type == "sandbox"
	regex.match("^/[^ ]*$", v)
}

# Keys whose value the policy names.
annotation_allowed(k, v) if {
	not k in {S_NAME, S_NAMESPACE, S_ID, "io.kubernetes.cri.image-name", "io.katacontainers.pkg.oci.bundle_path", "io.kubernetes.cri.sandbox-log-directory", "nerdctl/network-namespace"}
	cc.OCI.Annotations[k] == v
}

# CRI's own keys not named above (newer containerd versions add some): metadata only.
annotation_allowed(k, v) if {
	startswith(k, "io.kubernetes.cri.")
	not k in {S_TYPE, C_NAME, S_NAME, S_NAMESPACE, S_ID, "io.kubernetes.cri.image-name", "io.kubernetes.cri.sandbox-log-directory", "io.kubernetes.cri.sandbox-uid", "io.kubernetes.cri.sandbox-cpu-period", "io.kubernetes.cri.sandbox-cpu-quota", "io.kubernetes.cri.sandbox-cpu-shares", "io.kubernetes.cri.sandbox-memory"}
}

# Root, namespaces, pid namespace.
cc_root := replace(policy_data.common.root_path, "$(bundle-id)", input.container_id)

cc_violations contains msg if {
	cc
	input.OCI.Root.Path != cc_root
	msg := sprintf("Root.Path %v is not %v", [input.OCI.Root.Path, cc_root])
}

cc_violations contains msg if {
	cc
	input.OCI.Root.Readonly != cc.OCI.Root.Readonly
	msg := sprintf("Root.Readonly is %v, the policy's %v", [input.OCI.Root.Readonly, cc.OCI.Root.Readonly])
}

cc_violations contains msg if {
	cc
	input.sandbox_pidns != cc.sandbox_pidns
	msg := sprintf("sandbox_pidns is %v, the policy's %v (shareProcessNamespace)", [input.sandbox_pidns, cc.sandbox_pidns])
}

cc_violations contains msg if {
	cc
	i_ns := {{"Type": n.Type, "Path": n.Path} | some n in input.OCI.Linux.Namespaces}
	p_ns := {{"Type": n.Type, "Path": n.Path} | some n in cc.OCI.Linux.Namespaces}
	i_ns != p_ns
	msg := sprintf("Linux.Namespaces %v are not the policy's %v", [input.OCI.Linux.Namespaces, cc.OCI.Linux.Namespaces])
}

cc_violations contains msg if {
	cc
	some p in cc.OCI.Linux.MaskedPaths
	not p in input.OCI.Linux.MaskedPaths
	msg := sprintf("Linux.MaskedPaths lacks %v", [p])
}

cc_violations contains msg if {
	cc
	some p in cc.OCI.Linux.ReadonlyPaths
	not p in input.OCI.Linux.ReadonlyPaths
	not p in input.OCI.Linux.MaskedPaths
	msg := sprintf("Linux.ReadonlyPaths lacks %v", [p])
}

cc_violations contains msg if {
	cc
	some k, v in input.OCI.Linux.Sysctl
	object.get(cc.OCI.Linux.Sysctl, k, null) != v
	msg := sprintf("Linux.Sysctl %v=%v is not allowed by the policy", [k, v])
}

cc_violations contains msg if {
	cc_type == "sandbox"
	pstate.hostname
	input.OCI.Hostname != pstate.hostname
	msg := sprintf("Hostname \"%v\" is not the sandbox's \"%v\"", [input.OCI.Hostname, pstate.hostname])
}

cc_violations contains msg if {
	cc_type == "container"
	input.OCI.Hostname != ""
	msg := sprintf("Hostname \"%v\" is set (a container has the sandbox's)", [input.OCI.Hostname])
}

# The image: one storage in the shape of Kata's guest-pull storage, its layers pinned.
cc_violations contains msg if {
	cc
	count(input.storages) != 1
	msg := sprintf("storages: %v given, the policy has one (the image)", [count(input.storages)])
}

cc_storage := input.storages[0]

cc_violations contains msg if {
	cc
	some field in ["driver", "fstype", "options", "fs_group"]
	object.get(cc_storage, field, null) != cc.storages[0][field]
	msg := sprintf("image storage %v %v is not the policy's %v", [field, object.get(cc_storage, field, null), cc.storages[0][field]])
}

cc_violations contains msg if {
	cc
	object.get(cc_storage, "shared", false) != false
	msg := "image storage shared is true"
}

cc_violations contains msg if {
	cc
	cc_storage.mount_point != cc_root
	msg := sprintf("image storage mount_point %v is not %v", [cc_storage.mount_point, cc_root])
}

cc_violations contains msg if {
	cc
	not cc_storage.source in cc.kata_cc.image_names
	msg := sprintf("image %v is not the policy's %v", [cc_storage.source, cc.kata_cc.image.name])
}

cc_violations contains msg if {
	cc
	some o in cc_storage.driver_options
	not startswith(o, "kata-cc.layer=")
	msg := sprintf("image storage driver option %v is not a layer", [o])
}

# The diff_id of each layer (`kata-cc.layer=<digest>,<diff_id>,<media type>`), lowest first.
diff_ids(options) := [parts[1] |
	some o in options
	startswith(o, "kata-cc.layer=")
	parts := split(substring(o, count("kata-cc.layer="), -1), ",")
]

cc_layers := diff_ids(cc_storage.driver_options)

cc_policy_layers := diff_ids(cc.storages[0].driver_options)

cc_violations contains msg if {
	cc
	count(cc_layers) != count(cc_policy_layers)
	msg := sprintf("image %v has %v layers, the policy's image %v has %v (another image under the same name?)", [cc_storage.source, count(cc_layers), cc.kata_cc.image.name, count(cc_policy_layers)])
}

cc_violations contains msg if {
	cc
	count(cc_layers) == count(cc_policy_layers)
	differ := [i | some i, d in cc_layers; d != cc_policy_layers[i]]
	count(differ) > 0
	i := min(differ)
	msg := sprintf("image layer %v of %v: diff_id %v is not the policy's %v (image %v)", [i + 1, count(cc_layers), cc_layers[i], cc_policy_layers[i], cc.kata_cc.image.name])
}

# The process.
cc_violations contains msg if {
	cc
	input.OCI.Process.Terminal != cc.OCI.Process.Terminal
	msg := sprintf("process.Terminal is %v, the policy's %v", [input.OCI.Process.Terminal, cc.OCI.Process.Terminal])
}

cc_violations contains msg if {
	cc
	not args_allowed(cc, input.OCI.Process.Args, cc_name, cc_namespace)
	msg := sprintf("process.Args %v are not the policy's %v", [input.OCI.Process.Args, cc.OCI.Process.Args])
}

args_allowed(p, args, name, namespace) if {
	count(args) == count(p.OCI.Process.Args)
	every i, a in args {
		arg_allowed(p, i, a, name, namespace)
	}
}

arg_allowed(p, i, a, name, namespace) if {
	not p.kata_cc.args_regex[sprintf("%v", [i])]
	a == p.OCI.Process.Args[i]
}

arg_allowed(p, i, a, name, namespace) if {
	re := p.kata_cc.args_regex[sprintf("%v", [i])]
	regex.match(pod_regex(re, name, namespace), a)
}

cc_violations contains msg if {
	cc
	some v in input.OCI.Process.Env
	not env_allowed(cc, v, cc_name, cc_namespace)
	msg := sprintf("process.Env \"%v\" is not allowed by the policy", [v])
}

cc_violations contains msg if {
	cc
	some p in cc.OCI.Process.Env
	not env_present(cc, p, input.OCI.Process.Env, cc_name, cc_namespace)
	msg := sprintf("process.Env has no %v (the policy's \"%v\")", [split(p, "=")[0], p])
}

env_allowed(p, v, name, namespace) if {
	v in p.OCI.Process.Env
	not p.kata_cc.env_regex[v]
}

env_allowed(p, v, name, namespace) if {
	some _, re in p.kata_cc.env_regex
	regex.match(pod_regex(re, name, namespace), v)
}

env_allowed(p, v, name, namespace) if {
	some re in policy_data.request_defaults.CreateContainerRequest.allow_env_regex
	regex.match(common_regex(re), v)
}

env_present(p, pv, env, name, namespace) if {
	split(pv, "=")[0] in p.kata_cc.env_optional
}

env_present(p, pv, env, name, namespace) if {
	not p.kata_cc.env_regex[pv]
	pv in env
}

env_present(p, pv, env, name, namespace) if {
	re := p.kata_cc.env_regex[pv]
	some v in env
	regex.match(pod_regex(re, name, namespace), v)
}

common_regex(re) := out if {
	c := policy_data.common
	r1 := replace(re, "$(ipv4_a)", c.ipv4_a)
	r2 := replace(r1, "$(ip_p)", c.ip_p)
	r3 := replace(r2, "$(svc_name_downward_env)", c.svc_name_downward_env)
	out := replace(r3, "$(dns_label)", c.dns_label)
}

cc_violations contains msg if {
	cc
	some field in ["Cwd", "NoNewPrivileges"]
	input.OCI.Process[field] != cc.OCI.Process[field]
	msg := sprintf("process.%v %v is not the policy's %v", [field, input.OCI.Process[field], cc.OCI.Process[field]])
}

cc_violations contains msg if {
	cc
	some m in user_violations(cc, input.OCI.Process.User)
	msg := m
}

user_violations(p, u) := {m |
	some field in ["UID", "GID"]
	u[field] != p.OCI.Process.User[field]
	m := sprintf("process.User.%v %v is not the policy's %v", [field, u[field], p.OCI.Process.User[field]])
} | {m |
	not gids_allowed(p, u.AdditionalGids)
	m := sprintf("process.User.AdditionalGids %v are not the policy's %v%v", [u.AdditionalGids, p.OCI.Process.User.AdditionalGids, gids_note(p)])
}

# How the policy's AdditionalGids bind: "exact" (the image's /etc/group was read), "include"
# (they must be there; the image's supplementary groups, not read, may be too), "within" (the
# pause: containerd versions differ on whether it gets the primary group; nothing may be
# beyond the policy's).
gids_note(p) := "" if {
	p.kata_cc.additional_gids == "exact"
} else := " (at least)" if {
	p.kata_cc.additional_gids == "include"
} else := " (at most)"

gids_allowed(p, gids) if {
	p.kata_cc.additional_gids == "exact"
	{g | some g in gids} == {g | some g in p.OCI.Process.User.AdditionalGids}
}

gids_allowed(p, gids) if {
	p.kata_cc.additional_gids == "include"
	every g in p.OCI.Process.User.AdditionalGids {
		g in gids
	}
}

gids_allowed(p, gids) if {
	p.kata_cc.additional_gids == "within"
	every g in gids {
		g in p.OCI.Process.User.AdditionalGids
	}
}

cc_violations contains msg if {
	cc
	caps := object.get(input.OCI.Process, "Capabilities", null)
	caps == null
	msg := "process.Capabilities is missing"
}

cc_violations contains msg if {
	cc
	caps := input.OCI.Process.Capabilities
	caps != null
	some field in ["Ambient", "Bounding", "Effective", "Inheritable", "Permitted"]
	i_caps := {cap_name(c) | some c in object.get(caps, field, [])}
	p_caps := expand_caps(cc.OCI.Process.Capabilities[field])
	i_caps != p_caps
	msg := sprintf("process.Capabilities.%v %v are not the policy's %v", [field, sort(i_caps), sort(p_caps)])
}

cap_name(c) := c if {
	startswith(c, "CAP_")
} else := concat("", ["CAP_", c])

expand_caps(list) := {cap_name(c) | some c in policy_data.common.default_caps} if {
	list == ["$(default_caps)"]
} else := {cap_name(c) | some c in policy_data.common.privileged_caps} if {
	list == ["$(privileged_caps)"]
} else := {cap_name(c) | some c in list}

# Mounts: each one is one of the policy's.
cc_violations contains msg if {
	cc
	some m in input.OCI.Mounts
	not mount_allowed(cc, m)
	msg := sprintf("mount %v (%v from %v, options %v) is not allowed by the policy", [m.destination, m.type_, m.source, m.options])
}

cc_violations contains msg if {
	cc
	dests := [m.destination | some m in input.OCI.Mounts]
	count(dests) != count({d | some d in dests})
	msg := "two mounts have the same destination"
}

mount_allowed(p, m) if {
	some pm in p.OCI.Mounts
	pm.destination == m.destination
	pm.type_ == m.type_
	mount_options_allowed(pm.options, m.options)
	mount_source_allowed(pm.source, m.source)
}

# The policy's options, plus at most flags that only restrict the mount (containerd versions
# differ: 1.6 binds the pause's resolv.conf "rbind, ro", 2.x adds nosuid, nodev, noexec).
mount_options_allowed(po, io) if po == io

mount_options_allowed(po, io) if {
	count({o | some o in po; not o in io}) == 0
	count({o | some o in io; not o in po; not o in {"ro", "nosuid", "nodev", "noexec"}}) == 0
}

# A policy source is a regex when it starts with ^ or a placeholder ($(sfprefix)).
regex_source(ps) if startswith(ps, "^")

regex_source(ps) if startswith(ps, "$(")

mount_source_allowed(ps, s) if {
	not regex_source(ps)
	ps == s
}

mount_source_allowed(ps, s) if {
	regex_source(ps)
	r1 := replace(ps, "$(sfprefix)", policy_data.common.sfprefix)
	r2 := replace(r1, "$(cpath)", policy_data.common.cpath)
	r3 := replace(r2, "$(bundle-id)", input.container_id)
	r4 := replace(r3, "$(sandbox-id)", object.get(pstate, "sandbox_id", "-"))
	regex.match(r4, s)
}

######################################################################
# Requests on a created container.

StartContainerRequest if {
	known(input.container_id)
} else := false if {
	print(sprintf("StartContainerRequest: container %v", [label(input.container_id)]))
}

WaitProcessRequest if {
	known(input.container_id)
} else := false if {
	print(sprintf("WaitProcessRequest: container %v", [label(input.container_id)]))
}

SignalProcessRequest if {
	known(input.container_id)
} else := false if {
	print(sprintf("SignalProcessRequest: container %v", [label(input.container_id)]))
}

StatsContainerRequest if {
	known(input.container_id)
} else := false if {
	print(sprintf("StatsContainerRequest: container %v", [label(input.container_id)]))
}

TtyWinResizeRequest if {
	known(input.container_id)
} else := false if {
	print(sprintf("TtyWinResizeRequest: container %v", [label(input.container_id)]))
}

RemoveContainerRequest := {"allowed": true, "ops": ops} if {
	pstate[input.container_id]
	ops := [{"op": "remove", "path": concat("/", ["/pstate", input.container_id])}]
} else := {"allowed": true, "ops": []}

UpdateContainerRequest := false if {
	print(sprintf("UpdateContainerRequest: container %v: resource updates are off (as under genpolicy's policies)", [label(input.container_id)]))
}

SetPolicyRequest := false if {
	print("SetPolicyRequest: the pod's policy cannot be replaced")
}

# ExecProcessRequest: the container's probe and hook commands, the commands given with
# --allow-exec-command, anything with --allow-exec.
ExecProcessRequest if {
	count(exec_violations) == 0
} else := false if {
	print(sprintf("ExecProcessRequest: container %v: %v", [label(input.container_id), concat("; ", exec_violations)]))
}

exec_c := known(input.container_id)

# An interactive exec: allowed by --allow-exec-command or --allow-exec.
exec_interactive if {
	input.process.Args in policy_data.request_defaults.ExecProcessRequest.allowed_commands
}

exec_interactive if {
	some re in policy_data.request_defaults.ExecProcessRequest.regex
	regex.match(re, concat(" ", input.process.Args))
}

exec_probe if {
	input.process.Args in exec_c.exec_commands
}

exec_violations contains "the container was not created under this policy" if {
	not exec_c
}

exec_violations contains msg if {
	exec_c
	not exec_probe
	not exec_interactive
	msg := sprintf("command %v is not one of the policy's exec commands for it %v (kata-cc policy gen --allow-exec-command or --allow-exec allow others)", [input.process.Args, exec_c.exec_commands])
}

exec_violations contains "process.Terminal is true (a probe or hook command has none)" if {
	exec_c
	not exec_interactive
	input.process.Terminal == true
}

exec_violations contains msg if {
	exec_c
	caps := object.get(input.process, "Capabilities", null)
	caps != null
	some field, v in caps
	count(v) > 0
	msg := sprintf("process.Capabilities.%v is set (an exec gets none)", [field])
}

exec_violations contains "string_user is set" if {
	input.string_user != null
}

exec_violations contains "process.SelinuxLabel is set" if {
	count(input.process.SelinuxLabel) > 0
}

exec_violations contains msg if {
	exec_c
	some field in ["Cwd", "NoNewPrivileges"]
	input.process[field] != exec_c.OCI.Process[field]
	msg := sprintf("process.%v %v is not the container's %v", [field, input.process[field], exec_c.OCI.Process[field]])
}

exec_violations contains msg if {
	exec_c
	some m in user_violations(exec_c, input.process.User)
	msg := m
}

exec_violations contains msg if {
	exec_c
	some v in input.process.Env
	not env_allowed(exec_c, v, pstate.sandbox_name, pstate.namespace)
	msg := sprintf("process.Env \"%v\" is not allowed by the policy", [v])
}

# Streams: a container's output is its log (--allow-logs); an exec's output and input go with
# interactive exec; a container's stdin with `stdin: true`.
interactive_exec_enabled if {
	count(policy_data.request_defaults.ExecProcessRequest.allowed_commands) > 0
}

interactive_exec_enabled if {
	count(policy_data.request_defaults.ExecProcessRequest.regex) > 0
}

is_init(exec_id) if {
	exec_id in {"", input.container_id}
}

ReadStreamRequest if {
	count(read_violations) == 0
} else := false if {
	print(sprintf("ReadStreamRequest: container %v: %v", [label(input.container_id), concat("; ", read_violations)]))
}

read_violations contains "the container was not created under this policy" if {
	not known(input.container_id)
}

read_violations contains "reading its output (logs) is off: kata-cc policy gen --allow-logs allows it" if {
	is_init(input.exec_id)
	policy_data.request_defaults.ReadStreamRequest != true
}

read_violations contains "reading an exec's output is off: kata-cc policy gen --allow-exec, --allow-exec-command or --allow-logs allow it" if {
	not is_init(input.exec_id)
	policy_data.request_defaults.ReadStreamRequest != true
	not interactive_exec_enabled
}

WriteStreamRequest if {
	count(stdin_violations) == 0
} else := false if {
	print(sprintf("WriteStreamRequest: container %v: %v", [label(input.container_id), concat("; ", stdin_violations)]))
}

CloseStdinRequest if {
	count(stdin_violations) == 0
} else := false if {
	print(sprintf("CloseStdinRequest: container %v: %v", [label(input.container_id), concat("; ", stdin_violations)]))
}

stdin_violations contains "the container was not created under this policy" if {
	not known(input.container_id)
}

stdin_violations contains "its stdin is off (stdin: true in the pod spec turns it on)" if {
	is_init(input.exec_id)
	not known(input.container_id).kata_cc.stdin
}

stdin_violations contains "an exec's stdin is off: kata-cc policy gen --allow-exec or --allow-exec-command allow it" if {
	not is_init(input.exec_id)
	not interactive_exec_enabled
}

######################################################################
# CopyFileRequest: the pod's volumes and image layers, under the shared containers dir.

CopyFileRequest if {
	count(copy_violations) == 0
} else := false if {
	print(sprintf("CopyFileRequest: %v: %v", [input.path, concat("; ", copy_violations)]))
}

copy_root_regex(suffix) := [r |
	some root in policy_data.request_defaults.CopyFileRequest
	r := concat("", [replace(root, "$(cpath)", policy_data.common.cpath), suffix])
]

copy_at_root if {
	some r in copy_root_regex("$")
	regex.match(r, input.path)
}

copy_below_root if {
	some r in copy_root_regex("/.+$")
	regex.match(r, input.path)
}

copy_violations contains "not a copy of one of the pod's volumes or image layers" if {
	not copy_at_root
	not copy_below_root
}

copy_violations contains "a path component is .." if {
	regex.match("(^|/)\\.\\.($|/)", input.path)
}

copy_violations contains msg if {
	not input.file_type in {"Regular", "Directory", "Symlink"}
	msg := sprintf("file type %v", [input.file_type])
}

copy_violations contains "a symbolic link at the top of a copy" if {
	input.file_type == "Symlink"
	copy_at_root
}

copy_violations contains msg if {
	input.file_type == "Symlink"
	t := input.symlink_target
	not link_target_ok(t)
	msg := sprintf("symbolic link to %v (absolute or with ..)", [t])
}

link_target_ok(t) if {
	not startswith(t, "/")
	not regex.match("(^|/)\\.\\.($|/)", t)
}

copy_violations contains "a setuid or setgid file" if {
	input.file_type == "Regular"
	bits.and(input.file_mode, 3072) != 0
}

######################################################################
# Network requests (genpolicy's request_defaults).

UpdateInterfaceRequest if {
	count(interface_violations) == 0
} else := false if {
	print(sprintf("UpdateInterfaceRequest: %v", [concat("; ", interface_violations)]))
}

interface_violations contains msg if {
	d := policy_data.request_defaults.UpdateInterfaceRequest
	bits.and(input.interface.raw_flags, bits.negate(d.allow_raw_flags)) != 0
	msg := sprintf("raw_flags %v beyond %v", [input.interface.raw_flags, d.allow_raw_flags])
}

interface_violations contains msg if {
	input.interface.name in policy_data.request_defaults.UpdateInterfaceRequest.forbidden_names
	msg := sprintf("interface %v", [input.interface.name])
}

interface_violations contains msg if {
	input.interface.hwAddr in policy_data.request_defaults.UpdateInterfaceRequest.forbidden_hw_addrs
	msg := sprintf("hardware address %v", [input.interface.hwAddr])
}

UpdateRoutesRequest if {
	count(route_violations) == 0
} else := false if {
	print(sprintf("UpdateRoutesRequest: %v", [concat("; ", route_violations)]))
}

route_violations contains msg if {
	some r in input.routes.Routes
	r.device in policy_data.request_defaults.UpdateRoutesRequest.forbidden_device_names
	msg := sprintf("a route on %v", [r.device])
}

route_violations contains msg if {
	some r in input.routes.Routes
	some re in policy_data.request_defaults.UpdateRoutesRequest.forbidden_source_regex
	regex.match(re, r.source)
	msg := sprintf("a route from %v", [r.source])
}

AddARPNeighborsRequest if {
	count(arp_violations) == 0
} else := false if {
	print(sprintf("AddARPNeighborsRequest: %v", [concat("; ", arp_violations)]))
}

arp_violations contains msg if {
	d := policy_data.request_defaults.AddARPNeighborsRequest
	some n in input.neighbors.ARPNeighbors
	not arp_neighbor_ok(d, n)
	msg := sprintf("neighbor %v on %v", [n.toIPAddress.address, n.device])
}

arp_neighbor_ok(d, n) if {
	not n.device in d.forbidden_device_names
	n.toIPAddress.mask == ""
	every re in d.forbidden_cidrs_regex {
		not regex.match(re, n.toIPAddress.address)
	}
	n.state in d.allowed_states
	bits.or(n.flags, 136) == 136
}
