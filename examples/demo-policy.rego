# The demo pod's agent policy (examples/demo-pod.yaml carries it base64-encoded in the annotation
# io.katacontainers.config.agent.policy). Every agent request is allowed, as in the shipped
# allow-all policy, except one: the host may run commands in the pod's containers (exec, probes),
# but never a shell, so nobody on the node gets an interactive shell inside the VM.
# Rego v0, as Kata's genpolicy writes policies. Encode it with: base64 -w0 examples/demo-policy.rego

package agent_policy

default AddARPNeighborsRequest := true
default AddSwapRequest := true
default CloseStdinRequest := true
default CopyFileRequest := true
default CreateContainerRequest := true
default CreateSandboxRequest := true
default DestroySandboxRequest := true
default ExecProcessRequest := false
default GetMetricsRequest := true
default GetOOMEventRequest := true
default GuestDetailsRequest := true
default ListInterfacesRequest := true
default ListRoutesRequest := true
default MemHotplugByProbeRequest := true
default OnlineCPUMemRequest := true
default PauseContainerRequest := true
default PullImageRequest := true
default ReadContainerTerminationMessage := true
default ReadStreamRequest := true
default RemoveContainerRequest := true
default RemoveStaleVirtiofsShareMountsRequest := true
default ReseedRandomDevRequest := true
default ResumeContainerRequest := true
default SetGuestDateTimeRequest := true
default SetPolicyRequest := true
default SignalProcessRequest := true
default StartContainerRequest := true
default StartTracingRequest := true
default StatsContainerRequest := true
default StopTracingRequest := true
default TtyWinResizeRequest := true
default UpdateContainerRequest := true
default UpdateEphemeralMountsRequest := true
default UpdateInterfaceRequest := true
default UpdateRoutesRequest := true
default WaitProcessRequest := true
default WriteStreamRequest := true

# Exec: allowed unless the program is a shell (or busybox, which is one too).
shells := {"sh", "/bin/sh", "ash", "/bin/ash", "bash", "/bin/bash", "busybox", "/bin/busybox"}

ExecProcessRequest {
    not shells[input.process.Args[0]]
}
