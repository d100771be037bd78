// kiln-init: process 1 of every Kiln instance, linked statically so it needs nothing from the
// image (no libc, no shell).
//   kiln-init            reaps orphans; on SIGTERM or SIGINT stops everything and exits.
//   kiln-init run CMD…   runs CMD in a new session (so Kiln can kill its whole process group),
//                        looked up in PATH, and exits with its status (128+n for signal n).
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static int run(char **command) {
    setsid();
    pid_t child = fork();
    if (child < 0) {
        fprintf(stderr, "kiln-init: cannot start %s: %s\n", command[0], strerror(errno));
        return 126;
    }
    if (child == 0) {
        execvp(command[0], command);
        int code = errno == ENOENT ? 127 : 126;
        fprintf(stderr, "kiln-init: cannot run %s: %s\n", command[0], strerror(errno));
        _exit(code);
    }
    int status = 0;
    while (waitpid(child, &status, 0) < 0) {
        if (errno != EINTR) return 126;
    }
    if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
    return WEXITSTATUS(status);
}

static int serve(void) {
    sigset_t all;
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, NULL);
    for (;;) {
        int signal_number = 0;
        if (sigwait(&all, &signal_number) != 0) continue;
        if (signal_number == SIGCHLD) {
            while (waitpid(-1, NULL, WNOHANG) > 0) {}
        } else if (signal_number == SIGTERM || signal_number == SIGINT) {
            kill(-1, SIGKILL);
            while (waitpid(-1, NULL, 0) > 0) {}
            return 0;
        }
    }
}

int main(int argc, char **argv) {
    if (argc >= 3 && strcmp(argv[1], "run") == 0) return run(argv + 2);
    if (argc == 1) return serve();
    fprintf(stderr, "usage: kiln-init | kiln-init run COMMAND [ARGUMENT...]\n");
    return 2;
}
