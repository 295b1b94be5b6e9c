# kata-cc baked default policy "no-exec-no-logs": like allow-all, but the host can neither
# exec into containers nor read or write their stdio (ReadStream covers ReadStdout and
# ReadStderr; WriteStream is WriteStdin). Selected with:
#   hack/bake-image.sh --default-policy no-exec-no-logs
# Installed at /etc/kata-cc/policy.rego in the measured rootfs.

package agent_policy

default AddARPNeighborsRequest := true
default AddSwapRequest := true
default CopyFileRequest := true
default CreateContainerRequest := true
default CreateSandboxRequest := true
default DestroySandboxRequest := true
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

# Exec and the container's stdio stay closed to the host (the product's default for
# confidential pods: exec and logs need the policy's permission).
default CloseStdinRequest := false
default ExecProcessRequest := false
default ReadStreamRequest := false
default WriteStreamRequest := false
