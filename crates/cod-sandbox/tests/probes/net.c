/* Network reach: which socket families open, whether a host abstract AF_UNIX socket (name in
 * argv[1]) is reachable, which interfaces and routes exist, and whether lo is up. */
#include <errno.h>
#include <net/if.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static void try_socket(const char *name, int domain, int type) {
    int fd = socket(domain, type, 0);
    if (fd < 0) {
        printf("%s=%d\n", name, errno);
    } else {
        printf("%s=ok\n", name);
        close(fd);
    }
}

/* Lines of a /proc/net file after its header (an empty file has none); minus the errno if
 * it cannot be opened. */
static int lines_after_header(const char *path) {
    FILE *f = fopen(path, "r");
    char line[512];
    int n = 0;
    if (!f) return -errno;
    while (fgets(line, sizeof line, f)) n++;
    fclose(f);
    return n > 0 ? n - 1 : 0;
}

int main(int argc, char **argv) {
    try_socket("inet_stream", AF_INET, SOCK_STREAM);
    try_socket("inet_dgram", AF_INET, SOCK_DGRAM);
    try_socket("inet6_stream", AF_INET6, SOCK_STREAM);
    try_socket("netlink", AF_NETLINK, SOCK_RAW);
    try_socket("packet", AF_PACKET, SOCK_RAW);
    try_socket("unix_stream", AF_UNIX, SOCK_STREAM);
    int sv[2];
    if (socketpair(AF_INET, SOCK_STREAM, 0, sv) < 0) printf("inet_socketpair=%d\n", errno);
    else printf("inet_socketpair=ok\n");
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0) printf("unix_socketpair=%d\n", errno);
    else printf("unix_socketpair=ok\n");

    if (argc > 1) {
        /* Abstract AF_UNIX names belong to a network namespace. */
        struct sockaddr_un a = {.sun_family = AF_UNIX};
        size_t len = strlen(argv[1]);
        memcpy(a.sun_path + 1, argv[1], len);
        int fd = socket(AF_UNIX, SOCK_STREAM, 0);
        if (connect(fd, (struct sockaddr *)&a, sizeof(sa_family_t) + 1 + len) < 0)
            printf("abstract_connect=%d\n", errno);
        else
            printf("abstract_connect=ok\n");
        close(fd);
    }

    FILE *f = fopen("/proc/net/dev", "r");
    char line[512], name[64];
    printf("ifaces=");
    for (int i = 0; f && fgets(line, sizeof line, f); i++)
        if (i >= 2 && sscanf(line, " %63[^:]:", name) == 1) printf("%s,", name);
    printf("\n");
    if (f) fclose(f);

    int fd = socket(AF_UNIX, SOCK_DGRAM, 0);
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strcpy(ifr.ifr_name, "lo");
    if (ioctl(fd, SIOCGIFFLAGS, &ifr) < 0) printf("lo_flags_errno=%d\n", errno);
    else printf("lo_up=%d\n", (ifr.ifr_flags & IFF_UP) ? 1 : 0);
    close(fd);

    printf("routes=%d\n", lines_after_header("/proc/net/route"));
    printf("tcp_sockets=%d\n", lines_after_header("/proc/net/tcp"));
    printf("tcp6_sockets=%d\n", lines_after_header("/proc/net/tcp6"));
    return 0;
}
