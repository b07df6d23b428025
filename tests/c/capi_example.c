/*
 * capi_example.c - libipc_client in one page: a mailbox used as a priority queue.
 *
 * Build:  cc capi_example.c $(pkg-config --cflags --libs ipc_client) -o capi_example
 * Run:    ./capi_example [SOCKET]     (default: $IPCD_SOCKET, else the usual daemon)
 *
 * Exits 0 when every step worked, 1 at the first that failed (saying which, and why).
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "ipc_client.h"

/* Reports a failed step; `c` NULL for a failure without a client (connecting). */
static int failed(const ipc_client *c, const char *step, int rc)
{
    fprintf(stderr, "capi_example: %s: %s: %s\n", step, ipc_strerror(rc), ipc_last_error(c));
    return 1;
}

int main(int argc, char **argv)
{
    ipc_client *c;
    int rc = ipc_connect(argc > 1 ? argv[1] : NULL, &c);
    if (rc != IPC_OK)
        return failed(NULL, "connect", rc);

    char name[64];
    snprintf(name, sizeof name, "capi-example-%ld", (long)getpid());
    ipc_create_options opts = {0};
    opts.mode = 0600;
    if ((rc = ipc_create(c, name, &opts)) != IPC_OK)
        return failed(c, "create", rc);

    /* Three messages, sent in this order; their types are their priorities. */
    const char *texts[] = {"low", "urgent", "normal"};
    const int64_t types[] = {3, 1, 2};
    for (int i = 0; i < 3; i++) {
        rc = ipc_send(c, name, types[i], texts[i], strlen(texts[i]), -1, 0, NULL);
        if (rc != IPC_OK)
            return failed(c, "send", rc);
    }

    /* msgtyp -3: the lowest type at most 3 first, whatever the order they came in. */
    for (int i = 0; i < 2; i++) {
        ipc_message m;
        if ((rc = ipc_recv(c, name, -3, 0, 0, &m)) != IPC_OK)
            return failed(c, "recv", rc);
        printf("received type %" PRId64 ": %.*s\n", m.mtype, (int)m.len, (const char *)m.data);
        ipc_message_free(&m);
    }

    /* A peek copies the oldest message left and leaves it where it is. */
    ipc_message m;
    if ((rc = ipc_peek_at(c, name, 0, &m)) != IPC_OK)
        return failed(c, "peek", rc);
    printf("left in place: type %" PRId64 ": %.*s\n", m.mtype, (int)m.len, (const char *)m.data);
    ipc_message_free(&m);

    ipc_mailbox_info info;
    if ((rc = ipc_stat(c, name, &info)) != IPC_OK)
        return failed(c, "stat", rc);
    printf("%s: %" PRIu64 " message(s) queued, %" PRIu64 " sent, %" PRIu64 " received\n",
           info.name, info.messages, info.total_sent, info.total_received);

    if ((rc = ipc_remove(c, name)) != IPC_OK)
        return failed(c, "remove", rc);
    ipc_close(c);
    return 0;
}
