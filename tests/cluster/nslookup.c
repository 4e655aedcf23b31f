/* `nslookup NAME` through the C library's resolver, as busybox 1.28's nslookup did: it follows
 * resolv.conf's search domains and succeeds once one of them answers. Later busybox versions
 * (Debian's is 1.35) query every search domain themselves and fail when any has no answer,
 * which is why the Dagster chart pins busybox 1.28 for its `until nslookup <service>` loops. */
#include <arpa/inet.h>
#include <netdb.h>
#include <stdio.h>

int main(int argc, char **argv) {
    struct addrinfo hints = {.ai_family = AF_INET}, *found;
    char address[INET_ADDRSTRLEN];
    int error;

    if (argc != 2) {
        fprintf(stderr, "usage: nslookup NAME\n");
        return 2;
    }
    error = getaddrinfo(argv[1], NULL, &hints, &found);
    if (error) {
        fprintf(stderr, "nslookup: can't resolve '%s': %s\n", argv[1], gai_strerror(error));
        return 1;
    }
    inet_ntop(AF_INET, &((struct sockaddr_in *)found->ai_addr)->sin_addr, address, sizeof address);
    printf("Name:      %s\nAddress 1: %s\n", argv[1], address);
    freeaddrinfo(found);
    return 0;
}
