/* Stand-in for /sbin/kata-cc-agent that proves the vsock path (hack/boot-smoke.sh --vsock):
 * as PID 1 it listens on AF_VSOCK port 1024, prints a console marker, answers the first
 * connection with one line and powers the VM off. Built static by boot-smoke.sh. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <linux/vm_sockets.h>

static void off(void) { sync(); reboot(RB_POWER_OFF); _exit(1); }

int main(void) {
	struct sockaddr_vm sa;
	int s = socket(AF_VSOCK, SOCK_STREAM, 0), c;
	char line[] = "kata-cc-test-agent: hello over vsock\n";
	if (s < 0) { perror("kata-cc-test-agent: socket(AF_VSOCK)"); off(); }
	memset(&sa, 0, sizeof(sa));
	sa.svm_family = AF_VSOCK;
	sa.svm_cid = VMADDR_CID_ANY;
	sa.svm_port = 1024;
	if (bind(s, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(s, 1) < 0) {
		perror("kata-cc-test-agent: bind/listen vsock port 1024");
		off();
	}
	printf("kata-cc-test-agent: started, listening on vsock port 1024\n");
	fflush(stdout);
	c = accept(s, NULL, NULL);
	if (c < 0) { perror("kata-cc-test-agent: accept"); off(); }
	if (write(c, line, strlen(line)) < 0) perror("kata-cc-test-agent: write");
	printf("kata-cc-test-agent: answered a vsock connection\n");
	fflush(stdout);
	/* Give the reply time to leave the guest before the VM goes away. */
	sleep(1);
	off();
	return 0;
}
