/*
 * capi_test.c - libipc_client's contract seen from C: the status of every error path,
 * what a failed call leaves in its outputs, SysV's E2BIG rule for ipc_recv_into, leases,
 * topics, request/reply, and a client shared by mistake between threads.
 *
 * Run by capi/tests/c.rs against a daemon of its own:  capi_test SOCKET
 * (or `capi_test SOCKET disconnect`, the daemon going away under it: see disconnect()).
 * Prints a line per failed check and "N passed, N failed" at the end; exits 0 only when
 * every check passed.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/ipc.h> /* included beside it on purpose: no name may clash with SysV's */
#include <sys/msg.h>
#include <time.h>
#include <unistd.h>

#include "ipc_client.h"

static int passed, failed_checks;

#define CHECK(cond)                                                                     \
    do {                                                                                \
        if (cond) {                                                                     \
            passed++;                                                                   \
        } else {                                                                        \
            failed_checks++;                                                            \
            printf("FAILED line %d: %s\n", __LINE__, #cond);                            \
        }                                                                               \
    } while (0)

/* Checks that `call` returns `want`; on a mismatch, says what came and why. */
#define EXPECT(client, call, want)                                                      \
    do {                                                                                \
        int rc_ = (call);                                                               \
        if (rc_ == (want)) {                                                            \
            passed++;                                                                   \
        } else {                                                                        \
            failed_checks++;                                                            \
            printf("FAILED line %d: %s returned %d (%s: %s), expected %s\n", __LINE__,  \
                   #call, rc_, ipc_strerror(rc_), ipc_last_error(client), #want);       \
        }                                                                               \
    } while (0)

static const char *socket_path;

static ipc_client *connect_or_die(void)
{
    ipc_client *c = NULL;
    int rc = ipc_connect(socket_path, &c);
    if (rc != IPC_OK) {
        printf("cannot connect to %s: %s\n", socket_path, ipc_last_error(NULL));
        _exit(2);
    }
    return c;
}

static uint64_t messages_in(ipc_client *c, const char *name)
{
    ipc_mailbox_info info;
    return ipc_stat(c, name, &info) == IPC_OK ? info.messages : UINT64_MAX;
}

/* Waits, by asking the daemon (never by sleeping), until `name` has `n` waiting
 * receivers. */
static void wait_for_receivers(ipc_client *c, const char *name, uint64_t n)
{
    ipc_mailbox_info info;
    for (long i = 0; i < 1000000; i++) {
        if (ipc_stat(c, name, &info) == IPC_OK && info.waiting_receivers == n)
            return;
    }
    printf("FAILED: %s never had %" PRIu64 " waiting receivers\n", name, n);
    failed_checks++;
}

static int is_zeroed(const ipc_message *m)
{
    return m->data == NULL && m->len == 0 && m->reply_to == NULL && m->content_type == NULL &&
           m->topic == NULL;
}

static void status_texts(void)
{
    for (int code = IPC_ERR_OTHER; code <= IPC_EXISTED; code++) {
        const char *text = ipc_strerror(code);
        CHECK(text != NULL && text[0] != '\0');
    }
    CHECK(ipc_strerror(12345) != NULL);
    CHECK(strcmp(ipc_strerror(IPC_OK), "success") == 0);
    /* The macros are parenthesised: this must parse as 0 - (-18). */
    CHECK(0 - IPC_ERR_NULL == 18);
}

static void connect_failures(void)
{
    ipc_client *c = (ipc_client *)&c; /* not NULL, so the library must write NULL */
    EXPECT(NULL, ipc_connect("/nonexistent/capi/ipcd.sock", &c), IPC_ERR_NOT_REACHABLE);
    CHECK(c == NULL);
    CHECK(strstr(ipc_last_error(NULL), "/nonexistent/capi/ipcd.sock") != NULL);
    EXPECT(NULL, ipc_connect(socket_path, NULL), IPC_ERR_NULL);
    CHECK(strstr(ipc_last_error(NULL), "out") != NULL);
    ipc_close(NULL);
}

static void null_and_invalid_arguments(ipc_client *c)
{
    ipc_mailbox_info info;
    ipc_message m;
    ipc_mailbox_info *list;
    size_t count, len;
    char buf[4];

    EXPECT(NULL, ipc_create(NULL, "x", NULL), IPC_ERR_NULL);
    CHECK(strstr(ipc_last_error(NULL), "client") != NULL);
    EXPECT(c, ipc_create(c, NULL, NULL), IPC_ERR_NULL);
    CHECK(strstr(ipc_last_error(c), "name") != NULL);
    EXPECT(c, ipc_stat(c, "q", NULL), IPC_ERR_NULL);
    EXPECT(c, ipc_recv(c, "q", 0, 0, 0, NULL), IPC_ERR_NULL);
    EXPECT(c, ipc_list(c, NULL, &count), IPC_ERR_NULL);
    EXPECT(c, ipc_list(c, &list, NULL), IPC_ERR_NULL);
    EXPECT(c, ipc_set(c, "q", NULL), IPC_ERR_NULL);
    EXPECT(c, ipc_recv_into(c, "q", 0, 0, 0, buf, sizeof buf, NULL, NULL), IPC_ERR_NULL);
    EXPECT(c, ipc_reply(c, NULL, "x", 1), IPC_ERR_NULL);
    EXPECT(c, ipc_send(c, "q", 1, NULL, 5, 0, 0, NULL), IPC_ERR_INVALID);
    EXPECT(c, ipc_recv_into(c, "q", 0, 0, 0, NULL, 5, &len, NULL), IPC_ERR_INVALID);
    EXPECT(c, ipc_create(c, "caf\xe9", NULL), IPC_ERR_INVALID); /* Latin-1, not UTF-8 */
    EXPECT(c, ipc_recv(c, "q", 0, 0, -2, &m), IPC_ERR_INVALID);
    CHECK(is_zeroed(&m));
    EXPECT(c, ipc_recv(c, "q", 0, 1 << 20, 0, &m), IPC_ERR_INVALID); /* unknown flag */
    EXPECT(c, ipc_send(c, "q", 1, "x", 1, 0, IPC_PEEK, NULL), IPC_ERR_INVALID);
    EXPECT(c, ipc_recv_into(c, "q", 0, IPC_LEASE, 0, buf, sizeof buf, &len, NULL),
           IPC_ERR_INVALID);
    EXPECT(c, ipc_recv_leased(c, "q", 0, 0, 0, 0, &m), IPC_ERR_INVALID);
    EXPECT(c, ipc_call(c, "q", "x", 1, 0, 0, &m), IPC_ERR_INVALID);
    (void)info;
}

static void bad_names_and_missing_mailboxes(ipc_client *c)
{
    ipc_mailbox_info info;
    EXPECT(c, ipc_create(c, "bad name!", NULL), IPC_ERR_BAD_DATA);
    CHECK(strstr(ipc_last_error(c), "mailbox name") != NULL);
    EXPECT(c, ipc_create(c, "/absolute", NULL), IPC_ERR_BAD_DATA);
    EXPECT(c, ipc_create(c, "", NULL), IPC_ERR_BAD_DATA);
    EXPECT(c, ipc_stat(c, "capi-missing", &info), IPC_ERR_NO_SUCH_MAILBOX);
    EXPECT(c, ipc_send(c, "capi-missing", 1, "x", 1, 0, 0, NULL), IPC_ERR_NO_SUCH_MAILBOX);
    EXPECT(c, ipc_remove(c, "capi-missing"), IPC_ERR_NO_SUCH_MAILBOX);
    EXPECT(c, ipc_bind(c, "capi-missing", "a.b"), IPC_ERR_NO_SUCH_MAILBOX);
}

static void create_stat_set_list_purge(ipc_client *c)
{
    ipc_create_options opts = {0};
    opts.mode = 0640;
    opts.max_msgs = 10;
    EXPECT(c, ipc_create(c, "capi-box", &opts), IPC_OK);
    EXPECT(c, ipc_create(c, "capi-box", &opts), IPC_ERR_EXISTS);
    opts.exist_ok = 1;
    EXPECT(c, ipc_create(c, "capi-box", &opts), IPC_EXISTED);

    ipc_mailbox_info info;
    EXPECT(c, ipc_stat(c, "capi-box", &info), IPC_OK);
    CHECK(strcmp(info.name, "capi-box") == 0);
    CHECK(info.mode == 0640 && info.max_msgs == 10 && info.messages == 0);
    CHECK(info.created_at_ns > 0 && info.last_send_ns == 0 && info.last_send_pid == 0);

    ipc_changes changes = {0};
    changes.set_mode = 1;
    changes.mode = 0600;
    changes.max_msgs = 20;
    EXPECT(c, ipc_set(c, "capi-box", &changes), IPC_OK);
    EXPECT(c, ipc_stat(c, "capi-box", &info), IPC_OK);
    CHECK(info.mode == 0600 && info.max_msgs == 20);

    uint64_t id = 0, purged = 99;
    EXPECT(c, ipc_send(c, "capi-box", 1, "a", 1, 0, 0, &id), IPC_OK);
    EXPECT(c, ipc_send(c, "capi-box", 2, "", 0, 0, 0, NULL), IPC_OK);
    EXPECT(c, ipc_stat(c, "capi-box", &info), IPC_OK);
    CHECK(info.messages == 2 && info.last_send_pid == (uint32_t)getpid());

    ipc_mailbox_info *list = NULL;
    size_t count = 0, found = 0;
    EXPECT(c, ipc_list(c, &list, &count), IPC_OK);
    for (size_t i = 0; i < count; i++)
        found += strcmp(list[i].name, "capi-box") == 0 && list[i].messages == 2;
    CHECK(found == 1);
    ipc_list_free(list, count);
    ipc_list_free(NULL, 0);

    EXPECT(c, ipc_purge(c, "capi-box", &purged), IPC_OK);
    CHECK(purged == 2);
    EXPECT(c, ipc_purge(c, "capi-box", NULL), IPC_OK);
}

static void waiting(ipc_client *c)
{
    ipc_message m;
    memset(&m, 0xab, sizeof m); /* garbage, as an uninitialised variable may hold */
    EXPECT(c, ipc_recv(c, "capi-box", 0, 0, 0, &m), IPC_ERR_WOULD_BLOCK);
    CHECK(is_zeroed(&m));
    ipc_message_free(&m);
    ipc_message_free(&m);
    EXPECT(c, ipc_recv(c, "capi-box", 0, 0, 50, &m), IPC_ERR_TIMED_OUT);
    EXPECT(c, ipc_peek_at(c, "capi-box", 0, &m), IPC_ERR_WOULD_BLOCK);
    CHECK(is_zeroed(&m));

    /* A full mailbox: a send that may not wait would block. */
    ipc_create_options opts = {0};
    opts.max_msgs = 1;
    EXPECT(c, ipc_create(c, "capi-full", &opts), IPC_OK);
    EXPECT(c, ipc_send(c, "capi-full", 1, "a", 1, 0, 0, NULL), IPC_OK);
    EXPECT(c, ipc_send(c, "capi-full", 1, "b", 1, 0, 0, NULL), IPC_ERR_WOULD_BLOCK);
    EXPECT(c, ipc_send(c, "capi-full", 1, "b", 1, 30, 0, NULL), IPC_ERR_TIMED_OUT);
    EXPECT(c, ipc_remove(c, "capi-full"), IPC_OK);
}

static void receive_into_a_buffer(ipc_client *c)
{
    char big[100], buf[100];
    size_t len = 0;
    int64_t mtype = 0;
    for (size_t i = 0; i < sizeof big; i++)
        big[i] = (char)('a' + i % 26);

    /* Too small, no IPC_TRUNCATE: E2BIG, and the message stays, in its place. */
    EXPECT(c, ipc_send(c, "capi-box", 7, big, sizeof big, 0, 0, NULL), IPC_OK);
    EXPECT(c, ipc_recv_into(c, "capi-box", 0, 0, 0, buf, 10, &len, &mtype), IPC_ERR_TRUNCATED);
    CHECK(len == sizeof big && mtype == 7);
    CHECK(strstr(ipc_last_error(c), "stays in the mailbox") != NULL);
    CHECK(messages_in(c, "capi-box") == 1);
    ipc_mailbox_info info;
    EXPECT(c, ipc_stat(c, "capi-box", &info), IPC_OK);
    CHECK(info.unacked == 0);

    /* A peek that does not fit: the same answer, and nothing moved. */
    EXPECT(c, ipc_recv_into(c, "capi-box", 0, IPC_PEEK, 0, buf, 10, &len, NULL),
           IPC_ERR_TRUNCATED);
    CHECK(len == sizeof big && messages_in(c, "capi-box") == 1);

    /* With IPC_TRUNCATE: cut to the buffer and taken. */
    memset(buf, 0, sizeof buf);
    EXPECT(c, ipc_recv_into(c, "capi-box", 0, IPC_TRUNCATE, 0, buf, 10, &len, &mtype), IPC_OK);
    CHECK(len == 10 && mtype == 7 && memcmp(buf, big, 10) == 0 && buf[10] == 0);
    CHECK(messages_in(c, "capi-box") == 0);

    /* Large enough: copied whole and taken for good (acknowledged). */
    EXPECT(c, ipc_send(c, "capi-box", 3, big, 40, 0, 0, NULL), IPC_OK);
    EXPECT(c, ipc_recv_into(c, "capi-box", 3, 0, 0, buf, sizeof buf, &len, NULL), IPC_OK);
    CHECK(len == 40 && memcmp(buf, big, 40) == 0);
    EXPECT(c, ipc_stat(c, "capi-box", &info), IPC_OK);
    CHECK(info.messages == 0 && info.unacked == 0);

    /* An empty message fits a NULL buffer of capacity 0. */
    EXPECT(c, ipc_send(c, "capi-box", 1, NULL, 0, 0, 0, NULL), IPC_OK);
    EXPECT(c, ipc_recv_into(c, "capi-box", 0, 0, 0, NULL, 0, &len, NULL), IPC_OK);
    CHECK(len == 0);
}

static void selection_and_leases(ipc_client *c)
{
    ipc_message m;
    EXPECT(c, ipc_send(c, "capi-box", 5, "five", 4, 0, 0, NULL), IPC_OK);
    EXPECT(c, ipc_send(c, "capi-box", 6, "six", 3, 0, 0, NULL), IPC_OK);
    /* MSG_EXCEPT: the oldest message not of type 5. */
    EXPECT(c, ipc_recv(c, "capi-box", 5, IPC_EXCEPT, 0, &m), IPC_OK);
    CHECK(m.mtype == 6 && m.len == 3 && memcmp(m.data, "six", 3) == 0);
    CHECK(m.sender_pid == (uint32_t)getpid() && m.deliveries == 1 && !m.redelivered);
    ipc_message_free(&m);
    ipc_message_free(&m);
    CHECK(is_zeroed(&m));

    /* A lease: hidden until settled; a nack brings it back marked redelivered. */
    EXPECT(c, ipc_recv(c, "capi-box", 0, IPC_LEASE, 0, &m), IPC_OK);
    CHECK(m.mtype == 5 && messages_in(c, "capi-box") == 0);
    EXPECT(c, ipc_nack(c, "capi-box", m.id), IPC_OK);
    ipc_message_free(&m);
    EXPECT(c, ipc_recv_leased(c, "capi-box", 0, 0, 0, 60000, &m), IPC_OK);
    CHECK(m.redelivered && m.deliveries == 2);
    EXPECT(c, ipc_ack(c, "capi-box", m.id), IPC_OK);
    EXPECT(c, ipc_ack(c, "capi-box", m.id), IPC_ERR_NOT_LEASED);
    EXPECT(c, ipc_nack(c, "capi-box", m.id), IPC_ERR_NOT_LEASED);
    ipc_message_free(&m);
    CHECK(messages_in(c, "capi-box") == 0);
}

static void topics(ipc_client *c)
{
    ipc_publish_report report;
    ipc_message m;
    EXPECT(c, ipc_bind(c, "capi-box", "capi.*.temperature"), IPC_OK);
    EXPECT(c, ipc_publish(c, "capi.kitchen.temperature", 4, "21.5", 4, &report), IPC_OK);
    CHECK(report.delivered == 1 && report.full == 0 && report.denied == 0);
    EXPECT(c, ipc_publish(c, "capi.kitchen.humidity", 4, "40", 2, NULL), IPC_OK);
    EXPECT(c, ipc_recv(c, "capi-box", 0, 0, 0, &m), IPC_OK);
    CHECK(m.topic != NULL && strcmp(m.topic, "capi.kitchen.temperature") == 0);
    CHECK(m.mtype == 4 && m.len == 4 && memcmp(m.data, "21.5", 4) == 0);
    ipc_message_free(&m);
    EXPECT(c, ipc_unbind(c, "capi-box", "capi.*.temperature"), IPC_OK);
    EXPECT(c, ipc_publish(c, "capi.x.y", 1, "a", 1, &report), IPC_OK);
    CHECK(report.delivered == 0);
    EXPECT(c, ipc_publish(c, "bad topic", 1, "a", 1, NULL), IPC_ERR_BAD_DATA);
}

struct call {
    int rc;
    ipc_message reply;
};

static void *caller(void *arg)
{
    struct call *call = arg;
    ipc_client *c = connect_or_die();
    call->rc = ipc_call(c, "capi-service", "ping", 4, 60000, 0, &call->reply);
    ipc_close(c);
    return NULL;
}

static void request_reply(ipc_client *c)
{
    ipc_message request;
    struct call call;
    pthread_t thread;
    EXPECT(c, ipc_create(c, "capi-service", NULL), IPC_OK);
    CHECK(pthread_create(&thread, NULL, caller, &call) == 0);
    EXPECT(c, ipc_recv(c, "capi-service", 0, 0, -1, &request), IPC_OK);
    CHECK(request.reply_to != NULL && request.has_correlation_id);
    CHECK(request.len == 4 && memcmp(request.data, "ping", 4) == 0);
    EXPECT(c, ipc_reply(c, &request, "pong", 4), IPC_OK);
    pthread_join(thread, NULL);
    EXPECT(c, call.rc, IPC_OK);
    CHECK(call.reply.len == 4 && memcmp(call.reply.data, "pong", 4) == 0);
    ipc_message_free(&call.reply);
    /* Answering twice: the call no longer waits. */
    CHECK(ipc_reply(c, &request, "again", 5) < 0);
    ipc_message_free(&request);
    /* A message that is no request cannot be answered. */
    ipc_message plain = {0};
    EXPECT(c, ipc_reply(c, &plain, "x", 1), IPC_ERR_BAD_DATA);
}

struct blocked {
    ipc_client *client;
    int flags;
    int rc;
    atomic_int done;
    ipc_message m;
};

static void *receive_blocking(void *arg)
{
    struct blocked *b = arg;
    b->rc = ipc_recv(b->client, "capi-wait", 0, b->flags, -1, &b->m);
    atomic_store(&b->done, 1);
    return NULL;
}

static void on_signal(int signal)
{
    (void)signal;
}

static void threads_and_signals(ipc_client *c)
{
    ipc_mailbox_info info;
    pthread_t thread;
    EXPECT(c, ipc_create(c, "capi-wait", NULL), IPC_OK);

    /* Another thread is inside a call on this client: a second call is refused, and
     * the first goes on undisturbed. */
    struct blocked b = {connect_or_die(), 0, 0, 0, {0}};
    CHECK(pthread_create(&thread, NULL, receive_blocking, &b) == 0);
    wait_for_receivers(c, "capi-wait", 1);
    EXPECT(NULL, ipc_stat(b.client, "capi-wait", &info), IPC_ERR_BUSY);
    CHECK(strstr(ipc_last_error(NULL), "another thread") != NULL);
    EXPECT(c, ipc_send(c, "capi-wait", 1, "wake", 4, 0, 0, NULL), IPC_OK);
    pthread_join(thread, NULL);
    EXPECT(b.client, b.rc, IPC_OK);
    CHECK(b.m.len == 4 && memcmp(b.m.data, "wake", 4) == 0);
    ipc_message_free(&b.m);

    /* IPC_INTERRUPTIBLE: a signal ends the wait (SA_RESTART or not) and takes nothing. */
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = on_signal;
    action.sa_flags = SA_RESTART;
    sigemptyset(&action.sa_mask);
    CHECK(sigaction(SIGUSR1, &action, NULL) == 0);
    b.flags = IPC_INTERRUPTIBLE;
    atomic_store(&b.done, 0);
    CHECK(pthread_create(&thread, NULL, receive_blocking, &b) == 0);
    wait_for_receivers(c, "capi-wait", 1);
    /* The daemon may see the receive a moment before the thread is in poll(2), where a
     * signal ends it: signal again until it has. */
    struct timespec pause = {0, 10 * 1000 * 1000};
    while (!atomic_load(&b.done)) {
        pthread_kill(thread, SIGUSR1);
        nanosleep(&pause, NULL);
    }
    pthread_join(thread, NULL);
    EXPECT(b.client, b.rc, IPC_ERR_INTERRUPTED);
    CHECK(is_zeroed(&b.m));
    EXPECT(c, ipc_stat(c, "capi-wait", &info), IPC_OK);
    CHECK(info.waiting_receivers == 0);
    /* The connection goes on, and a message sent now is there for the next receive. */
    EXPECT(c, ipc_send(c, "capi-wait", 1, "kept", 4, 0, 0, NULL), IPC_OK);
    EXPECT(b.client, ipc_recv(b.client, "capi-wait", 0, 0, 0, &b.m), IPC_OK);
    ipc_message_free(&b.m);
    ipc_close(b.client);
}

/* `capi_test SOCKET disconnect`: connects, says so, and once told (a line on stdin,
 * sent after the daemon was stopped) makes calls on the dead connection. Writing to it
 * must be IPC_ERR_DISCONNECTED, not SIGPIPE, which would kill this program. */
static int disconnect(void)
{
    ipc_client *c = connect_or_die();
    char line[16];
    printf("connected\n");
    fflush(stdout);
    if (fgets(line, sizeof line, stdin) == NULL)
        return 2;
    int sent = ipc_send(c, "capi-gone", 1, "x", 1, 0, 0, NULL);
    int stat = ipc_stat(c, "capi-gone", &(ipc_mailbox_info){0});
    ipc_close(c);
    if (sent != IPC_ERR_DISCONNECTED || stat != IPC_ERR_DISCONNECTED) {
        printf("send: %s, then stat: %s\n", ipc_strerror(sent), ipc_strerror(stat));
        return 1;
    }
    printf("disconnected\n");
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[2], "disconnect") == 0) {
        socket_path = argv[1];
        return disconnect();
    }
    if (argc != 2) {
        fprintf(stderr, "usage: capi_test SOCKET [disconnect]\n");
        return 2;
    }
    socket_path = argv[1];
    status_texts();
    connect_failures();
    ipc_client *c = connect_or_die();
    CHECK(ipc_last_error(c)[0] == '\0');
    null_and_invalid_arguments(c);
    bad_names_and_missing_mailboxes(c);
    create_stat_set_list_purge(c);
    waiting(c);
    receive_into_a_buffer(c);
    selection_and_leases(c);
    topics(c);
    request_reply(c);
    threads_and_signals(c);
    EXPECT(c, ipc_remove(c, "capi-box"), IPC_OK);
    ipc_close(c);
    printf("%d passed, %d failed\n", passed, failed_checks);
    return failed_checks == 0 ? 0 : 1;
}
