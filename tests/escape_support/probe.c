/* Escape probes that need a system call rather than a shell tool.
 * Prints one line per probe: NAME RESULT, where RESULT is 0 on success or
 * the errno. Every probe is harmless when it succeeds (see each comment). */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/klog.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static void report(const char *name, long rc) {
    printf("%s %d\n", name, rc < 0 ? errno : 0);
    fflush(stdout);
}

/* Runs fn in a child so that what it changes (namespaces) dies with it. */
static void in_child(const char *name, int (*fn)(void)) {
    int pipefd[2];
    if (pipe(pipefd) != 0) { perror("pipe"); exit(2); }
    pid_t pid = fork();
    if (pid == 0) {
        int rc = fn();
        int err = rc < 0 ? errno : 0;
        if (write(pipefd[1], &err, sizeof err) != sizeof err) _exit(3);
        _exit(0);
    }
    int err = -1;
    close(pipefd[1]);
    if (read(pipefd[0], &err, sizeof err) != sizeof err) err = -1;
    waitpid(pid, NULL, 0);
    printf("%s %d\n", name, err);
    fflush(stdout);
}

static int new_user_and_mount_ns(void) { return unshare(CLONE_NEWUSER | CLONE_NEWNS); }

int main(int argc, char **argv) {
    int init = argc > 1 && strcmp(argv[1], "init") == 0;

    /* NULL image: EFAULT/ENOSYS at worst, never loads anything. */
    report("init_module", syscall(SYS_init_module, NULL, 0UL, ""));
    /* Invalid flags: EINVAL after the permission check; never loads. */
    report("kexec_load", syscall(SYS_kexec_load, 0UL, 0UL, NULL, 0xffff0000UL));
    /* SYSLOG_ACTION_SIZE_BUFFER: reads nothing, only asks. */
    report("syslog", klogctl(10, NULL, 0));
    /* NULL args: EFAULT/EINVAL when the kernel has clone3. */
    report("clone3", syscall(SYS_clone3, NULL, 0UL));
    /* bpf(BPF_PROG_LOAD) with a NULL attribute: EFAULT/EINVAL past the filter. */
    report("bpf", syscall(SYS_bpf, 5, NULL, 0UL));
    /* Joining a namespace: fd -1 is EBADF past the filter. */
    report("setns", syscall(SYS_setns, -1, 0));
    in_child("unshare_user_mount", new_user_and_mount_ns);

    /* ptrace of our own child: the harmless control of ptrace. */
    pid_t child = fork();
    if (child == 0) { pause(); _exit(0); }
    long rc = ptrace(PTRACE_ATTACH, child, NULL, NULL);
    report("ptrace_child", rc);
    if (rc == 0) { waitpid(child, NULL, 0); ptrace(PTRACE_DETACH, child, NULL, NULL); }
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);

    /* Only in the sandbox: PID 1 is kiln's init there, the host's init here. */
    if (init) {
        rc = ptrace(PTRACE_ATTACH, 1, NULL, NULL);
        report("ptrace_init", rc);
        if (rc == 0) ptrace(PTRACE_DETACH, 1, NULL, NULL);
    }
    return 0;
}
