/* devmesh's health probe for engines the host cannot reach into (transport tcp): run by
 * the engine as the pod owner's HEALTHCHECK, inside the pod's network namespace.
 *   probe -tMS PORT        healthy when 127.0.0.1:PORT accepts a connection
 *   probe -tMS PORT PATH   healthy when GET PATH answers 2xx or 3xx (as the host's probes)
 * MS: the health check's timeout, for the app's answer (connect, send, receive each).
 * Exit 0 healthy, 1 not (the reason on stdout: Docker keeps it in the health log).
 * Built static into devmesh/pause-probe beside pause. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    long ms = 5000;
    if (argc > 1 && strncmp(argv[1], "-t", 2) == 0) {
        ms = atol(argv[1] + 2);
        argv++;
        argc--;
    }
    if (argc < 2 || ms <= 0) {
        puts("usage: probe [-tMS] PORT [PATH]");
        return 2;
    }
    int port = atoi(argv[1]);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) {
        perror("socket");
        return 1;
    }
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        printf("port %d: cannot connect\n", port);
        return 1;
    }
    if (argc < 3) return 0;
    char request[1200];
    int n = snprintf(request, sizeof request,
                     "GET %.1000s HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: devmesh-health\r\n"
                     "Connection: close\r\n\r\n",
                     argv[2]);
    if (write(fd, request, (size_t)n) != n) {
        printf("GET %s: cannot send\n", argv[2]);
        return 1;
    }
    char answer[64];
    size_t got = 0;
    while (got < sizeof answer - 1) {
        ssize_t r = read(fd, answer + got, sizeof answer - 1 - got);
        if (r <= 0) break;
        got += (size_t)r;
        if (memchr(answer, '\n', got)) break;
    }
    answer[got] = 0;
    int status = 0;
    if (sscanf(answer, "HTTP/%*d.%*d %d", &status) != 1) {
        printf("GET %s: no HTTP answer\n", argv[2]);
        return 1;
    }
    if (status >= 200 && status < 400) return 0;
    printf("GET %s answered %d\n", argv[2], status);
    return 1;
}
