// kiln-init: process 1 of every Kiln instance, linked statically so it needs nothing from the
// image (no libc, no shell).
//   kiln-init            reaps orphans; on SIGTERM or SIGINT stops everything and exits.
//   kiln-init run CMD…   runs CMD in a new session (so Kiln can kill its whole process group),
//                        looked up in PATH, and exits with its status (128+n for signal n).
//   kiln-init http-get PORT PATH
//                        GET http://127.0.0.1:PORT/PATH; prints the status line and exits 0,
//                        or 1 if no connection, so health checks need no tool in the image.
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
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
    // runc hands process 1 its own output pipes; holding them open would make Kiln wait for
    // them to close after `runc run --detach` exits. Execs get their own pipes.
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null >= 0) {
        dup2(null, 0);
        dup2(null, 1);
        dup2(null, 2);
        if (null > 2) close(null);
    }
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

static int http_get(const char *port, const char *path) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(port))};
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, (struct sockaddr *)&address, sizeof address) != 0) {
        fprintf(stderr, "kiln-init: nothing listens on 127.0.0.1:%s: %s\n", port, strerror(errno));
        return 1;
    }
    char request[1024];
    int length = snprintf(request, sizeof request, "GET %s HTTP/1.0\r\nHost: 127.0.0.1:%s\r\nConnection: close\r\n\r\n", path, port);
    if (length <= 0 || length >= (int)sizeof request || write(fd, request, (size_t)length) != length) return 1;
    char line[512];
    size_t used = 0;
    while (used < sizeof line - 1) {
        ssize_t count = read(fd, line + used, sizeof line - 1 - used);
        if (count < 0 && errno == EINTR) continue;
        if (count <= 0) break;
        used += (size_t)count;
        if (memchr(line, '\n', used)) break;
    }
    line[used] = 0;
    char *end = strpbrk(line, "\r\n");
    if (end) *end = 0;
    if (used == 0) {
        fprintf(stderr, "kiln-init: 127.0.0.1:%s closed the connection without an answer\n", port);
        return 1;
    }
    printf("%s\n", line);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 3 && strcmp(argv[1], "run") == 0) return run(argv + 2);
    if (argc == 4 && strcmp(argv[1], "http-get") == 0) return http_get(argv[2], argv[3]);
    if (argc == 1) return serve();
    fprintf(stderr, "usage: kiln-init | kiln-init run COMMAND [ARGUMENT...] | kiln-init http-get PORT PATH\n");
    return 2;
}
