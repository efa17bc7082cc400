/* devmesh's pod namespace owner: holds the pod's network namespace and does nothing else,
 * so that the app and its sidecar can each restart without disturbing the other.
 * Built static (no libc at run time) into a FROM-scratch image by devmesh itself. */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) { (void)sig; _exit(0); }

static void reap(int sig) {
    (void)sig;
    while (waitpid(-1, 0, WNOHANG) > 0) {
    }
}

int main(void) {
    signal(SIGTERM, stop);
    signal(SIGINT, stop);
    signal(SIGCHLD, reap);
    for (;;) pause();
}
