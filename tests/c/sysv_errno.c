/*
 * What the SysV message-queue calls answer, case by case: their errors and their
 * semantics at the edges (msgget(2), msgsnd(2), msgrcv(2), msgctl(2) and Linux's own
 * behaviour where the manual leaves room). Every case holds on the kernel's queues; a
 * test runs this program there and under another implementation and expects the same
 * output from both.
 *
 * Usage: sysv_errno KEYBASE
 *
 * Keys KEYBASE to KEYBASE+63 are used, at most one per case; any queue found at one
 * of them is removed first, and every queue made is removed at the end. Prints one
 * line per case, "ok CASE", "skip CASE: why" or "FAIL CASE: what happened", and exits
 * 1 if any case failed. Cases about permissions run in a child that has dropped to an
 * unprivileged uid, which needs root; without root they are skipped.
 *
 * Cases that need another process blocked in msgrcv (EIDRM, EINTR) give it time to
 * block: the child says it is about to call msgrcv, the parent waits until the kernel
 * shows it sleeping and then 200 ms more. No test can see a waiting receiver in the
 * kernel's queue state, so this is the least-bad synchronisation available here.
 */

#include <errno.h>
#include <grp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef MSG_COPY
#define MSG_COPY 040000
#endif

/* The uid and gid the permission cases run as (nobody/nogroup). */
#define UNPRIVILEGED 65534

/* How long a child may take before it is taken as hung, in milliseconds. */
#define CHILD_LIMIT_MS 10000

struct small {
	long mtype;
	char mtext[64];
};

static key_t key_base;
static int next_key_offset;
static int failures;

/* Every queue this process made, removed at the end. */
static int made[256];
static int made_count;

/* Writes one whole line to stdout with write(2), so forked children never share a
 * stdio buffer and lines never interleave. */
static void say(const char *format, ...)
{
	char line[512];
	va_list args;

	va_start(args, format);
	int n = vsnprintf(line, sizeof line, format, args);
	va_end(args);
	if (n < 0)
		return;
	if ((size_t)n >= sizeof line)
		n = sizeof line - 1;
	const char *p = line;
	while (n > 0) {
		ssize_t w = write(STDOUT_FILENO, p, (size_t)n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return;
		p += w;
		n -= (int)w;
	}
}

static void ok(const char *name)
{
	say("ok %s\n", name);
}

static void skip(const char *name, const char *why)
{
	say("skip %s: %s\n", name, why);
}

static void fail(const char *name, const char *format, ...)
{
	char what[384];
	va_list args;

	va_start(args, format);
	vsnprintf(what, sizeof what, format, args);
	va_end(args);
	say("FAIL %s: %s\n", name, what);
	failures++;
}

static const char *errno_name(int e)
{
	switch (e) {
	case 0: return "no error";
	case E2BIG: return "E2BIG";
	case EACCES: return "EACCES";
	case EAGAIN: return "EAGAIN";
	case EEXIST: return "EEXIST";
	case EFAULT: return "EFAULT";
	case EIDRM: return "EIDRM";
	case EINTR: return "EINTR";
	case EINVAL: return "EINVAL";
	case ENOENT: return "ENOENT";
	case ENOMSG: return "ENOMSG";
	case ENOSPC: return "ENOSPC";
	case ENOSYS: return "ENOSYS";
	case EPERM: return "EPERM";
	default: return "another errno";
	}
}

/*
 * The checks. Each returns from the case function on failure, after one FAIL line;
 * CASE names the case (the function's own name).
 */
#define CASE __func__

/* `call` must fail with errno `want`. */
#define EXPECT_ERRNO(call, want)                                                       \
	do {                                                                           \
		errno = 0;                                                             \
		long rc_ = (long)(call);                                               \
		int e_ = errno;                                                        \
		if (rc_ != -1) {                                                       \
			fail(CASE, "%s returned %ld, expected errno %d (%s)", #call,   \
			     rc_, (want), errno_name(want));                           \
			return;                                                        \
		}                                                                      \
		if (e_ != (want)) {                                                    \
			fail(CASE, "%s: got errno %d (%s: %s) expected %d (%s)",       \
			     #call, e_, errno_name(e_), strerror(e_), (want),          \
			     errno_name(want));                                        \
			return;                                                        \
		}                                                                      \
	} while (0)

/* `call` must succeed; its value is stored in `into` (a long). */
#define EXPECT_OK(into, call)                                                          \
	do {                                                                           \
		errno = 0;                                                             \
		(into) = (long)(call);                                                 \
		if ((into) == -1) {                                                    \
			int e_ = errno;                                                \
			fail(CASE, "%s: got errno %d (%s: %s) expected success",      \
			     #call, e_, errno_name(e_), strerror(e_));                 \
			return;                                                        \
		}                                                                      \
	} while (0)

#define EXPECT(cond, ...)                                                              \
	do {                                                                           \
		if (!(cond)) {                                                         \
			fail(CASE, __VA_ARGS__);                                       \
			return;                                                        \
		}                                                                      \
	} while (0)

/* How many keys from KEYBASE on this program may use. */
#define KEYS 64

/* A key no other case uses, with any queue left at it by an earlier run removed. */
static key_t fresh_key(void)
{
	if (next_key_offset == KEYS) {
		fprintf(stderr, "more than %d keys: raise KEYS and tell the tests\n", KEYS);
		exit(2);
	}
	key_t key = key_base + next_key_offset++;
	int old = msgget(key, 0);
	if (old != -1)
		msgctl(old, IPC_RMID, NULL);
	return key;
}

static int remember(int id)
{
	if (id != -1 && made_count < (int)(sizeof made / sizeof made[0]))
		made[made_count++] = id;
	return id;
}

/* msgget, remembering the queue for the final clean-up. */
static int make(key_t key, int flags)
{
	return remember(msgget(key, flags));
}

static int send_text(int id, long type, const char *text, int flags)
{
	struct small m = { .mtype = type };
	size_t n = strlen(text);
	memcpy(m.mtext, text, n);
	return msgsnd(id, &m, n, flags);
}

static long read_long(const char *path)
{
	FILE *f = fopen(path, "r");
	long v = -1;
	if (f) {
		if (fscanf(f, "%ld", &v) != 1)
			v = -1;
		fclose(f);
	}
	return v;
}

static unsigned long queue_messages(int id)
{
	struct msqid_ds ds;
	if (msgctl(id, IPC_STAT, &ds) == -1)
		return (unsigned long)-1;
	return ds.msg_qnum;
}

/* Waits for child `pid` at most CHILD_LIMIT_MS; kills it if it takes longer. Returns
 * its exit code, or -1 if it was killed, hung or died of a signal. */
static int wait_child(pid_t pid)
{
	for (int waited = 0; waited < CHILD_LIMIT_MS; waited += 10) {
		int status;
		pid_t r = waitpid(pid, &status, WNOHANG);
		if (r == pid)
			return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
		if (r == -1 && errno != EINTR)
			return -1;
		usleep(10000);
	}
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	return -1;
}

/* Whether process `pid` is asleep in the kernel (state S in /proc/PID/stat). */
static int sleeping(pid_t pid)
{
	char path[64], buf[512];
	snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return 0;
	size_t n = fread(buf, 1, sizeof buf - 1, f);
	fclose(f);
	buf[n] = '\0';
	/* The state follows the command name, which is in parentheses. */
	char *paren = strrchr(buf, ')');
	return paren && paren[1] == ' ' && paren[2] == 'S';
}

/*
 * Forks a child that writes one byte to a pipe and then calls msgrcv on `id`, waiting;
 * returns once the child is blocked (see the comment at the top). The child exits with
 * the errno its msgrcv failed with, or 0 if it received something. -1 if no child.
 */
static pid_t start_blocked_receiver(int id, void (*prepare)(void))
{
	int fds[2];
	if (pipe(fds) == -1)
		return -1;
	pid_t pid = fork();
	if (pid == -1)
		return -1;
	if (pid == 0) {
		close(fds[0]);
		if (prepare)
			prepare();
		/* A first call on the queue, so that whatever sets up a connection is done
		 * before the byte says "about to wait". */
		struct msqid_ds ds;
		msgctl(id, IPC_STAT, &ds);
		char byte = 1;
		if (write(fds[1], &byte, 1) != 1)
			_exit(255);
		struct small m;
		ssize_t n = msgrcv(id, &m, sizeof m.mtext, 0, 0);
		_exit(n == -1 ? errno : 0);
	}
	close(fds[1]);
	char byte;
	ssize_t r;
	while ((r = read(fds[0], &byte, 1)) == -1 && errno == EINTR)
		;
	close(fds[0]);
	for (int i = 0; i < 500 && !sleeping(pid); i++)
		usleep(10000);
	usleep(200000);
	return pid;
}

/* --- msgget ------------------------------------------------------------------- */

static void msgget_missing_key_enoent(void)
{
	key_t key = fresh_key();
	EXPECT_ERRNO(msgget(key, 0), ENOENT);
	EXPECT_ERRNO(msgget(key, 0600), ENOENT);
	ok(CASE);
}

static void msgget_excl_twice_eexist(void)
{
	key_t key = fresh_key();
	long id, again;
	EXPECT_OK(id, make(key, IPC_CREAT | IPC_EXCL | 0600));
	EXPECT_ERRNO(msgget(key, IPC_CREAT | IPC_EXCL | 0600), EEXIST);
	/* Without IPC_EXCL the same queue is found, created or not. */
	EXPECT_OK(again, msgget(key, IPC_CREAT | 0600));
	EXPECT(again == id, "msgget(IPC_CREAT) on an existing key gave id %ld, not %ld",
	       again, id);
	EXPECT_OK(again, msgget(key, 0));
	EXPECT(again == id, "msgget(key, 0) gave id %ld, not %ld", again, id);
	ok(CASE);
}

static void msgget_private_twice_two_queues(void)
{
	long a, b;
	EXPECT_OK(a, make(IPC_PRIVATE, 0600));
	EXPECT_OK(b, make(IPC_PRIVATE, 0600));
	EXPECT(a != b, "two IPC_PRIVATE queues share id %ld", a);
	/* They really are two queues. */
	long rc;
	EXPECT_OK(rc, send_text((int)a, 1, "a", 0));
	EXPECT(queue_messages((int)b) == 0, "a message sent to one private queue is in the other");
	ok(CASE);
}

/* --- msgrcv selection ------------------------------------------------------------ */

static void msgrcv_nowait_empty_enomsg(void)
{
	long id;
	EXPECT_OK(id, make(fresh_key(), IPC_CREAT | 0600));
	struct small m;
	EXPECT_ERRNO(msgrcv((int)id, &m, sizeof m.mtext, 0, IPC_NOWAIT), ENOMSG);
	ok(CASE);
}

static void msgrcv_nowait_no_match_enomsg(void)
{
	long id, rc;
	EXPECT_OK(id, make(fresh_key(), IPC_CREAT | 0600));
	EXPECT_OK(rc, send_text((int)id, 5, "five", 0));
	struct small m;
	EXPECT_ERRNO(msgrcv((int)id, &m, sizeof m.mtext, 7, IPC_NOWAIT), ENOMSG);
	EXPECT_ERRNO(msgrcv((int)id, &m, sizeof m.mtext, -4, IPC_NOWAIT), ENOMSG);
	EXPECT_ERRNO(msgrcv((int)id, &m, sizeof m.mtext, 5, IPC_NOWAIT | MSG_EXCEPT), ENOMSG);
	EXPECT(queue_messages((int)id) == 1, "a failed selection took the message");
	EXPECT_OK(rc, msgrcv((int)id, &m, sizeof m.mtext, 5, IPC_NOWAIT));
	ok(CASE);
}

/* Receives with `type` and `flags` (plus IPC_NOWAIT) and checks the message got. */
#define EXPECT_RECEIVES(id, type, flags, want_type, want_text)                         \
	do {                                                                           \
		struct small m_;                                                       \
		long n_;                                                               \
		EXPECT_OK(n_, msgrcv((id), &m_, sizeof m_.mtext, (type),             \
				      (flags) | IPC_NOWAIT));                          \
		EXPECT(m_.mtype == (want_type) &&                                      \
			       (size_t)n_ == strlen(want_text) &&                      \
			       memcmp(m_.mtext, (want_text), (size_t)n_) == 0,         \
		       "msgrcv(msgtyp %ld, flags %#x) got type %ld, %.*s; expected "   \
		       "type %ld, %s",                                                 \
		       (long)(type), (unsigned)(flags), m_.mtype, (int)n_, m_.mtext,   \
		       (long)(want_type), (want_text));                                \
	} while (0)

static void msgrcv_type_zero_is_fifo(void)
{
	long id, rc;
	EXPECT_OK(id, make(fresh_key(), IPC_CREAT | 0600));
	EXPECT_OK(rc, send_text((int)id, 3, "first", 0));
	EXPECT_OK(rc, send_text((int)id, 1, "second", 0));
	EXPECT_OK(rc, send_text((int)id, 2, "third", 0));
	EXPECT_RECEIVES((int)id, 0, 0, 3, "first");
	EXPECT_RECEIVES((int)id, 0, 0, 1, "second");
	EXPECT_RECEIVES((int)id, 0, 0, 2, "third");
	ok(CASE);
}

static void msgrcv_positive_type_first_of_that_type(void)
{
	long id, rc;
	EXPECT_OK(id, make(fresh_key(), IPC_CREAT | 0600));
	EXPECT_OK(rc, send_text((int)id, 1, "one", 0));
	EXPECT_OK(rc, send_text((int)id, 2, "two a", 0));
	EXPECT_OK(rc, send_text((int)id, 2, "two b", 0));
	EXPECT_RECEIVES((int)id, 2, 0, 2, "two a");
	EXPECT_RECEIVES((int)id, 2, 0, 2, "two b");
	EXPECT_RECEIVES((int)id, 2, MSG_EXCEPT, 1, "one");
	ok(CASE);
}

static void msgrcv_negative_type_lowest_first(void)
{
	long id, rc;
	EXPECT_OK(id, make(fresh_key(), IPC_CREAT | 0600));
	EXPECT_OK(rc, send_text((int)id, 4, "four", 0));
	EXPECT_OK(rc, send_text((int)id, 3, "three a", 0));
	EXPECT_OK(rc, send_text((int)id, 7, "seven", 0));
	EXPECT_OK(rc, send_text((int)id, 3, "three b", 0));
	EXPECT_OK(rc, send_text((int)id, 2, "two", 0));
	/* The lowest type not above 3, and of that type the oldest. */
	EXPECT_RECEIVES((int)id, -3, 0, 2, "two");
	EXPECT_RECEIVES((int)id, -3, 0, 3, "three a");
	EXPECT_RECEIVES((int)id, -3, 0, 3, "three b");
	struct small m;
	EXPECT_ERRNO(msgrcv((int)id, &m, sizeof m.mtext, -3, IPC_NOWAIT), ENOMSG);
	EXPECT_RECEIVES((int)id, -100, 0, 4, "four");
	EXPECT_RECEIVES((int)id, -7, 0, 7, "seven");
	ok(CASE);
}

static void msgrcv_except_first_of_another_type(void)
{
	long id, rc;
	EXPECT_OK(id, make(fresh_key(), IPC_CREAT | 0600));
	EXPECT_OK(rc, send_text((int)id, 1, "one a", 0));
	EXPECT_OK(rc, send_text((int)id, 2, "two", 0));
	EXPECT_OK(rc, send_text((int)id, 3, "three", 0));
	EXPECT_OK(rc, send_text((int)id, 1, "one b", 0));
	EXPECT_RECEIVES((int)id, 1, MSG_EXCEPT, 2, "two");
	EXPECT_RECEIVES((int)id, 1, MSG_EXCEPT, 3, "three");
	struct small m;
	EXPECT_ERRNO(msgrcv((int)id, &m, sizeof m.mtext, 1, IPC_NOWAIT | MSG_EXCEPT), ENOMSG);
	/* MSG_EXCEPT with type 0 is plain type 0: the oldest message. */
	EXPECT_RECEIVES((int)id, 0, MSG_EXCEPT, 1, "one a");
	ok(CASE);
}

static void msgrcv_copy_leaves_the_queue(void)
{
	long id, rc;
	EXPECT_OK(id, make(fresh_key(), IPC_CREAT | 0600));
	EXPECT_OK(rc, send_text((int)id, 10, "zero", 0));
	EXPECT_OK(rc, send_text((int)id, 20, "one", 0));
	EXPECT_OK(rc, send_text((int)id, 30, "two", 0));
	/* With MSG_COPY, msgtyp is a position in the queue, counted from 0. */
	EXPECT_RECEIVES((int)id, 1, MSG_COPY, 20, "one");
	EXPECT_RECEIVES((int)id, 0, MSG_COPY, 10, "zero");
	EXPECT_RECEIVES((int)id, 2, MSG_COPY, 30, "two");
	EXPECT(queue_messages((int)id) == 3, "MSG_COPY took a message: %lu left",
	       queue_messages((int)id));
	struct small m;
	EXPECT_ERRNO(msgrcv((int)id, &m, sizeof m.mtext, 3, IPC_NOWAIT | MSG_COPY), ENOMSG);
	EXPECT_ERRNO(msgrcv((int)id, &m, sizeof m.mtext, 0, MSG_COPY), EINVAL);
	EXPECT_ERRNO(msgrcv((int)id, &m, sizeof m.mtext, 0, IPC_NOWAIT | MSG_COPY | MSG_EXCEPT),
		     EINVAL);
	/* The queue is as it was. */
	EXPECT_RECEIVES((int)id, 0, 0, 10, "zero");
	EXPECT_RECEIVES((int)id, 0, 0, 20, "one");
	EXPECT_RECEIVES((int)id, 0, 0, 30, "two");
	ok(CASE);
}

/* --- sizes ------------------------------------------------------------------------ */

static void msgrcv_small_buffer_e2big_keeps_message(void)
{
	long id, rc;
	EXPECT_OK(id, make(fresh_key(), IPC_CREAT | 0600));
	const char *text = "thirty-two bytes of message text";
	EXPECT_OK(rc, send_text((int)id, 9, text, 0));
	struct small m;
	EXPECT_ERRNO(msgrcv((int)id, &m, 8, 0, IPC_NOWAIT), E2BIG);
	/* Waiting makes no difference: the message is there, only too big. */
	EXPECT_ERRNO(msgrcv((int)id, &m, 8, 0, 0), E2BIG);
	EXPECT(queue_messages((int)id) == 1, "E2BIG took the message");
	EXPECT_RECEIVES((int)id, 0, 0, 9, text);
	ok(CASE);
}

static void msgrcv_noerror_truncates_and_takes(void)
{
	long id, rc, n;
	EXPECT_OK(id, make(fresh_key(), IPC_CREAT | 0600));
	const char *text = "thirty-two bytes of message text";
	EXPECT_OK(rc, send_text((int)id, 9, text, 0));
	struct small m;
	memset(&m, 0, sizeof m);
	EXPECT_OK(n, msgrcv((int)id, &m, 8, 0, IPC_NOWAIT | MSG_NOERROR));
	EXPECT(n == 8, "MSG_NOERROR returned %ld bytes, expected 8", n);
	EXPECT(m.mtype == 9 && memcmp(m.mtext, text, 8) == 0,
	       "MSG_NOERROR gave type %ld, %.8s", m.mtype, m.mtext);
	EXPECT(m.mtext[8] == '\0', "MSG_NOERROR wrote past msgsz");
	EXPECT(queue_messages((int)id) == 0, "the truncated message is still queued");
	EXPECT_ERRNO(msgrcv((int)id, &m, sizeof m.mtext, 0, IPC_NOWAIT), ENOMSG);
	ok(CASE);
}

static void msgsnd_over_msgmax_einval(void)
{
	long msgmax = read_long("/proc/sys/kernel/msgmax");
	EXPECT(msgmax > 0, "cannot read /proc/sys/kernel/msgmax");
	long id, rc;
	EXPECT_OK(id, make(fresh_key(), IPC_CREAT | 0600));
	struct msqid_ds ds;
	EXPECT_OK(rc, msgctl((int)id, IPC_STAT, &ds));
	struct msgbuf *big = calloc(1, sizeof(long) + (size_t)msgmax + 1);
	EXPECT(big, "out of memory");
	big->mtype = 1;
	errno = 0;
	rc = msgsnd((int)id, big, (size_t)msgmax + 1, IPC_NOWAIT);
	int e = errno;
	/* msgmax itself is allowed (when the queue has room for it). */
	long at_max = (long)ds.msg_qbytes >= msgmax ? msgsnd((int)id, big, (size_t)msgmax, IPC_NOWAIT) : 0;
	int e_at_max = errno;
	free(big);
	EXPECT(rc == -1 && e == EINVAL, "msgsnd(msgmax + 1 bytes) gave %ld, errno %d (%s)", rc, e,
	       errno_name(e));
	EXPECT(at_max == 0, "msgsnd(msgmax bytes) failed: errno %d (%s)", e_at_max,
	       errno_name(e_at_max));
	ok(CASE);
}

static void msgsnd_type_below_one_einval(void)
{
	long id;
	EXPECT_OK(id, make(fresh_key(), IPC_CREAT | 0600));
	EXPECT_ERRNO(send_text((int)id, 0, "zero", IPC_NOWAIT), EINVAL);
	EXPECT_ERRNO(send_text((int)id, -1, "minus one", IPC_NOWAIT), EINVAL);
	EXPECT(queue_messages((int)id) == 0, "a refused message was queued");
	ok(CASE);
}

static void msgsnd_full_queue_nowait_eagain(void)
{
	long id, rc;
	EXPECT_OK(id, make(fresh_key(), IPC_CREAT | 0600));
	struct msqid_ds ds;
	EXPECT_OK(rc, msgctl((int)id, IPC_STAT, &ds));
	ds.msg_qbytes = 100;
	EXPECT_OK(rc, msgctl((int)id, IPC_SET, &ds));
	/* msg_qbytes counts message text: ten messages of ten bytes fill it. */
	for (int i = 0; i < 10; i++)
		EXPECT_OK(rc, send_text((int)id, 1, "0123456789", IPC_NOWAIT));
	EXPECT_ERRNO(send_text((int)id, 1, "0123456789", IPC_NOWAIT), EAGAIN);
	EXPECT_ERRNO(send_text((int)id, 1, "x", IPC_NOWAIT), EAGAIN);
	EXPECT_OK(rc, msgctl((int)id, IPC_STAT, &ds));
	EXPECT(ds.msg_qnum == 10 && ds.msg_cbytes == 100,
	       "a full queue holds %lu messages, %lu bytes; expected 10, 100",
	       (unsigned long)ds.msg_qnum, (unsigned long)ds.msg_cbytes);
	/* Room again once one is taken. */
	struct small m;
	EXPECT_OK(rc, msgrcv((int)id, &m, sizeof m.mtext, 0, IPC_NOWAIT));
	EXPECT_OK(rc, send_text((int)id, 1, "0123456789", IPC_NOWAIT));
	ok(CASE);
}

/* --- bad addresses -------------------------------------------------------------------- */

/* A null pointer the compiler cannot see through, so that -Wnonnull stays quiet. */
static void *volatile nowhere;

static void msgsnd_null_buffer_efault(void)
{
	long id;
	EXPECT_OK(id, make(fresh_key(), IPC_CREAT | 0600));
	EXPECT_ERRNO(msgsnd((int)id, nowhere, 8, IPC_NOWAIT), EFAULT);
	EXPECT(queue_messages((int)id) == 0, "msgsnd from a null buffer queued a message");
	ok(CASE);
}

static void msgrcv_null_buffer_efault(void)
{
	long id, rc;
	EXPECT_OK(id, make(fresh_key(), IPC_CREAT | 0600));
	EXPECT_OK(rc, send_text((int)id, 1, "lost?", 0));
	/* What becomes of the message is not asserted: the kernel has already taken it
	 * off the queue when the copy out fails, and it is gone. */
	EXPECT_ERRNO(msgrcv((int)id, nowhere, 64, 0, IPC_NOWAIT), EFAULT);
	ok(CASE);
}

/* --- waiting receivers ------------------------------------------------------------- */

static void msgrcv_waiting_when_removed_eidrm(void)
{
	long id, rc;
	EXPECT_OK(id, make(fresh_key(), IPC_CREAT | 0600));
	pid_t child = start_blocked_receiver((int)id, NULL);
	EXPECT(child > 0, "fork: %s", strerror(errno));
	rc = msgctl((int)id, IPC_RMID, NULL);
	int got = wait_child(child);
	EXPECT(rc == 0, "msgctl(IPC_RMID) failed: %s", strerror(errno));
	EXPECT(got == EIDRM, "the waiting msgrcv ended with %d (%s), expected EIDRM", got,
	       got == -1 ? "hung or killed" : errno_name(got));
	ok(CASE);
}

static void on_alarm(int sig)
{
	(void)sig;
}

static void catch_sigalrm_with_sa_restart(void)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_alarm;
	/* SA_RESTART does not restart msgrcv: it fails with EINTR all the same. */
	sa.sa_flags = SA_RESTART;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGALRM, &sa, NULL);
}

static void msgrcv_interrupted_eintr_despite_sa_restart(void)
{
	long id;
	EXPECT_OK(id, make(fresh_key(), IPC_CREAT | 0600));
	pid_t child = start_blocked_receiver((int)id, catch_sigalrm_with_sa_restart);
	EXPECT(child > 0, "fork: %s", strerror(errno));
	/* Sent once the child is seen waiting, as alarm(2) would after a while. */
	kill(child, SIGALRM);
	int got = wait_child(child);
	EXPECT(got == EINTR, "the interrupted msgrcv ended with %d (%s), expected EINTR", got,
	       got == -1 ? "hung or killed" : errno_name(got));
	ok(CASE);
}

/* --- msgctl ----------------------------------------------------------------------- */

static int within_seconds(time_t t, time_t now, long slack)
{
	return t >= now - slack && t <= now + slack;
}

static void ipc_stat_reports_queue_and_last_pids(void)
{
	key_t key = fresh_key();
	time_t before = time(NULL);
	long id, rc;
	EXPECT_OK(id, make(key, IPC_CREAT | IPC_EXCL | 0640));
	struct msqid_ds ds;
	EXPECT_OK(rc, msgctl((int)id, IPC_STAT, &ds));
	EXPECT(ds.msg_qnum == 0 && ds.msg_cbytes == 0, "a new queue is not empty");
	EXPECT(ds.msg_lspid == 0 && ds.msg_lrpid == 0 && ds.msg_stime == 0 && ds.msg_rtime == 0,
	       "a new queue has a last sender or receiver");
	EXPECT(within_seconds(ds.msg_ctime, before, 5), "msg_ctime %ld is not now (%ld)",
	       (long)ds.msg_ctime, (long)before);
	EXPECT(ds.msg_perm.__key == key, "msg_perm.__key is %d, expected %d",
	       (int)ds.msg_perm.__key, (int)key);
	EXPECT((ds.msg_perm.mode & 0777) == 0640, "mode %o, expected 640",
	       (unsigned)(ds.msg_perm.mode & 0777));
	EXPECT(ds.msg_perm.uid == geteuid() && ds.msg_perm.cuid == geteuid() &&
		       ds.msg_perm.gid == getegid() && ds.msg_perm.cgid == getegid(),
	       "owner %u:%u, creator %u:%u; expected %u:%u", (unsigned)ds.msg_perm.uid,
	       (unsigned)ds.msg_perm.gid, (unsigned)ds.msg_perm.cuid,
	       (unsigned)ds.msg_perm.cgid, (unsigned)geteuid(), (unsigned)getegid());

	EXPECT_OK(rc, send_text((int)id, 1, "12345", 0));
	EXPECT_OK(rc, send_text((int)id, 2, "1234567", 0));
	pid_t child = fork();
	EXPECT(child != -1, "fork: %s", strerror(errno));
	if (child == 0) {
		struct small m;
		_exit(msgrcv((int)id, &m, sizeof m.mtext, 1, IPC_NOWAIT) == 5 ? 0 : 1);
	}
	EXPECT(wait_child(child) == 0, "the receiving child failed");
	time_t now = time(NULL);
	EXPECT_OK(rc, msgctl((int)id, IPC_STAT, &ds));
	EXPECT(ds.msg_qnum == 1, "msg_qnum %lu, expected 1", (unsigned long)ds.msg_qnum);
	EXPECT(ds.msg_cbytes == 7, "msg_cbytes %lu, expected 7", (unsigned long)ds.msg_cbytes);
	EXPECT(ds.msg_lspid == getpid(), "msg_lspid %d, expected the sender %d",
	       (int)ds.msg_lspid, (int)getpid());
	EXPECT(ds.msg_lrpid == child, "msg_lrpid %d, expected the receiver %d",
	       (int)ds.msg_lrpid, (int)child);
	EXPECT(within_seconds(ds.msg_stime, now, 5), "msg_stime %ld is not now (%ld)",
	       (long)ds.msg_stime, (long)now);
	EXPECT(within_seconds(ds.msg_rtime, now, 5), "msg_rtime %ld is not now (%ld)",
	       (long)ds.msg_rtime, (long)now);
	ok(CASE);
}

static void ipc_stat_lspid_is_the_forked_sender(void)
{
	long id, rc;
	EXPECT_OK(id, make(fresh_key(), IPC_CREAT | 0600));
	pid_t child = fork();
	EXPECT(child != -1, "fork: %s", strerror(errno));
	if (child == 0)
		_exit(send_text((int)id, 4, "from the child", 0) == 0 ? 0 : 1);
	EXPECT(wait_child(child) == 0, "the sending child failed");
	EXPECT_RECEIVES((int)id, 0, 0, 4, "from the child");
	struct msqid_ds ds;
	EXPECT_OK(rc, msgctl((int)id, IPC_STAT, &ds));
	EXPECT(ds.msg_lspid == child, "msg_lspid %d, expected the child %d", (int)ds.msg_lspid,
	       (int)child);
	EXPECT(ds.msg_lrpid == getpid(), "msg_lrpid %d, expected %d", (int)ds.msg_lrpid,
	       (int)getpid());
	ok(CASE);
}

static void ipc_set_changes_mode_and_lowers_qbytes(void)
{
	long id, rc;
	EXPECT_OK(id, make(fresh_key(), IPC_CREAT | 0600));
	struct msqid_ds ds;
	EXPECT_OK(rc, msgctl((int)id, IPC_STAT, &ds));
	long msgmnb = read_long("/proc/sys/kernel/msgmnb");
	EXPECT(ds.msg_qbytes == (msglen_t)msgmnb, "a new queue's msg_qbytes is %lu, not msgmnb %ld",
	       (unsigned long)ds.msg_qbytes, msgmnb);
	ds.msg_perm.mode = 0644;
	ds.msg_qbytes = 1000;
	EXPECT_OK(rc, msgctl((int)id, IPC_SET, &ds));
	memset(&ds, 0, sizeof ds);
	EXPECT_OK(rc, msgctl((int)id, IPC_STAT, &ds));
	EXPECT((ds.msg_perm.mode & 0777) == 0644, "mode %o after IPC_SET, expected 644",
	       (unsigned)(ds.msg_perm.mode & 0777));
	EXPECT(ds.msg_qbytes == 1000, "msg_qbytes %lu after IPC_SET, expected 1000",
	       (unsigned long)ds.msg_qbytes);
	/* Bits beyond the permissions are not taken from IPC_SET. */
	ds.msg_perm.mode = 01640;
	EXPECT_OK(rc, msgctl((int)id, IPC_SET, &ds));
	EXPECT_OK(rc, msgctl((int)id, IPC_STAT, &ds));
	EXPECT((ds.msg_perm.mode & 07777) == 0640, "mode %o after IPC_SET of 1640, expected 640",
	       (unsigned)(ds.msg_perm.mode & 07777));
	ok(CASE);
}

static void removed_id_einval(void)
{
	long id, rc;
	EXPECT_OK(id, make(fresh_key(), IPC_CREAT | 0600));
	EXPECT_OK(rc, send_text((int)id, 1, "doomed", 0));
	EXPECT_OK(rc, msgctl((int)id, IPC_RMID, NULL));
	struct small m;
	struct msqid_ds ds;
	EXPECT_ERRNO(send_text((int)id, 1, "late", IPC_NOWAIT), EINVAL);
	EXPECT_ERRNO(msgrcv((int)id, &m, sizeof m.mtext, 0, IPC_NOWAIT), EINVAL);
	EXPECT_ERRNO(msgrcv((int)id, &m, sizeof m.mtext, 0, 0), EINVAL);
	EXPECT_ERRNO(msgctl((int)id, IPC_STAT, &ds), EINVAL);
	EXPECT_ERRNO(msgctl((int)id, IPC_RMID, NULL), EINVAL);
	ok(CASE);
}

static void removed_key_gets_a_new_id(void)
{
	key_t key = fresh_key();
	long first, second, rc;
	EXPECT_OK(first, make(key, IPC_CREAT | IPC_EXCL | 0600));
	EXPECT_OK(rc, msgctl((int)first, IPC_RMID, NULL));
	EXPECT_ERRNO(msgget(key, 0), ENOENT);
	EXPECT_OK(second, make(key, IPC_CREAT | IPC_EXCL | 0600));
	EXPECT(second != first, "the key's new queue has the old id %ld", first);
	EXPECT_ERRNO(msgctl((int)first, IPC_STAT, &(struct msqid_ds){ 0 }), EINVAL);
	ok(CASE);
}

static void ipc_info_matches_proc(void)
{
	struct msginfo info;
	memset(&info, 0, sizeof info);
	long rc;
	EXPECT_OK(rc, msgctl(0, IPC_INFO, (struct msqid_ds *)&info));
	EXPECT(rc >= 0, "IPC_INFO returned %ld", rc);
	long msgmax = read_long("/proc/sys/kernel/msgmax");
	long msgmnb = read_long("/proc/sys/kernel/msgmnb");
	long msgmni = read_long("/proc/sys/kernel/msgmni");
	EXPECT(info.msgmax == msgmax && info.msgmnb == msgmnb && info.msgmni == msgmni,
	       "IPC_INFO gave msgmax %d, msgmnb %d, msgmni %d; /proc has %ld, %ld, %ld",
	       info.msgmax, info.msgmnb, info.msgmni, msgmax, msgmnb, msgmni);
	ok(CASE);
}

static void msg_info_and_msg_stat_find_the_queue(void)
{
	key_t key = fresh_key();
	long id, rc, maxidx;
	EXPECT_OK(id, make(key, IPC_CREAT | 0600));
	EXPECT_OK(rc, send_text((int)id, 1, "counted", 0));
	struct msginfo info;
	memset(&info, 0, sizeof info);
	EXPECT_OK(maxidx, msgctl(0, MSG_INFO, (struct msqid_ds *)&info));
	/* MSG_INFO reports use, not limits: queues, messages and bytes in the system. */
	EXPECT(info.msgpool >= 1 && info.msgmap >= 1 && info.msgtql >= 7,
	       "MSG_INFO shows %d queues, %d messages, %d bytes with one of ours holding one "
	       "of 7 bytes",
	       info.msgpool, info.msgmap, info.msgtql);
	/* MSG_INFO returns the highest index in use; MSG_STAT takes an index and
	 * returns the id of the queue there. */
	long found = -1;
	for (long idx = 0; idx <= maxidx; idx++) {
		struct msqid_ds ds;
		int got = msgctl((int)idx, MSG_STAT, &ds);
		if (got == id) {
			found = idx;
			EXPECT(ds.msg_perm.__key == key && ds.msg_qnum == 1,
			       "MSG_STAT at index %ld gave key %d with %lu messages", idx,
			       (int)ds.msg_perm.__key, (unsigned long)ds.msg_qnum);
			break;
		}
	}
	EXPECT(found >= 0, "no index from 0 to %ld gives the queue's id %ld", maxidx, id);
	ok(CASE);
}

/* --- permissions (root drops to an unprivileged uid in a child) ----------------------- */

static const char *const permission_cases[] = {
	"unprivileged_msgget_asking_access_eacces",
	"unprivileged_msgsnd_msgrcv_ipc_stat_eacces",
	"unprivileged_ipc_rmid_of_another_owner_eperm",
	"unprivileged_raise_qbytes_over_msgmnb_eperm",
	"unprivileged_creator_of_an_unreadable_queue_gets_its_id",
};

/* In the unprivileged child: each case below is run there, against root's queue. */
static int root_queue_key;
static int root_queue_id;

static void unprivileged_msgget_asking_access_eacces(void)
{
	long id;
	/* Asking for no access is not checked: the id is given. */
	EXPECT_OK(id, msgget(root_queue_key, 0));
	EXPECT(id == root_queue_id, "msgget(key, 0) gave %ld, not %d", id, root_queue_id);
	EXPECT_ERRNO(msgget(root_queue_key, 0400), EACCES);
	EXPECT_ERRNO(msgget(root_queue_key, 0200), EACCES);
	EXPECT_ERRNO(msgget(root_queue_key, 0666), EACCES);
	EXPECT_ERRNO(msgget(root_queue_key, IPC_CREAT | 0666), EACCES);
	ok(CASE);
}

static void unprivileged_msgsnd_msgrcv_ipc_stat_eacces(void)
{
	struct small m;
	struct msqid_ds ds;
	EXPECT_ERRNO(send_text(root_queue_id, 1, "intruder", IPC_NOWAIT), EACCES);
	EXPECT_ERRNO(msgrcv(root_queue_id, &m, sizeof m.mtext, 0, IPC_NOWAIT), EACCES);
	EXPECT_ERRNO(msgctl(root_queue_id, IPC_STAT, &ds), EACCES);
	ok(CASE);
}

static void unprivileged_ipc_rmid_of_another_owner_eperm(void)
{
	struct msqid_ds ds;
	memset(&ds, 0, sizeof ds);
	EXPECT_ERRNO(msgctl(root_queue_id, IPC_RMID, NULL), EPERM);
	EXPECT_ERRNO(msgctl(root_queue_id, IPC_SET, &ds), EPERM);
	ok(CASE);
}

static void unprivileged_raise_qbytes_over_msgmnb_eperm(void)
{
	long id, rc;
	EXPECT_OK(id, msgget(IPC_PRIVATE, 0600));
	struct msqid_ds ds;
	EXPECT_OK(rc, msgctl((int)id, IPC_STAT, &ds));
	long msgmnb = read_long("/proc/sys/kernel/msgmnb");
	ds.msg_qbytes = (msglen_t)msgmnb + 1;
	errno = 0;
	rc = msgctl((int)id, IPC_SET, &ds);
	int e = errno;
	/* Lowering, and raising back up to msgmnb, is anyone's right. */
	ds.msg_qbytes = 10;
	long lowered = msgctl((int)id, IPC_SET, &ds);
	ds.msg_qbytes = (msglen_t)msgmnb;
	long raised = msgctl((int)id, IPC_SET, &ds);
	msgctl((int)id, IPC_RMID, NULL);
	EXPECT(rc == -1 && e == EPERM, "raising msg_qbytes past msgmnb gave %ld, errno %d (%s)",
	       rc, e, errno_name(e));
	EXPECT(lowered == 0 && raised == 0, "lowering msg_qbytes, or raising it to msgmnb, failed");
	ok(CASE);
}

/* Its creator gets the id of a queue it may not read, and may still remove it. */
static void unprivileged_creator_of_an_unreadable_queue_gets_its_id(void)
{
	long id, rc;
	EXPECT_OK(id, msgget(IPC_PRIVATE, IPC_CREAT | 0200));
	struct small m;
	EXPECT_ERRNO(msgrcv((int)id, &m, sizeof m.mtext, 0, IPC_NOWAIT), EACCES);
	EXPECT_OK(rc, msgctl((int)id, IPC_RMID, NULL));
	ok(CASE);
}

static void drop_privileges_or_exit(void)
{
	if (setgroups(0, NULL) == -1 || setresgid(UNPRIVILEGED, UNPRIVILEGED, UNPRIVILEGED) == -1 ||
	    setresuid(UNPRIVILEGED, UNPRIVILEGED, UNPRIVILEGED) == -1) {
		say("FAIL permissions: cannot become uid %d: %s\n", UNPRIVILEGED, strerror(errno));
		_exit(1);
	}
}

static void permission_cases_as_another_user(void)
{
	size_t n = sizeof permission_cases / sizeof permission_cases[0];
	if (geteuid() != 0) {
		for (size_t i = 0; i < n; i++)
			skip(permission_cases[i], "needs root, to run as another uid");
		return;
	}
	root_queue_key = fresh_key();
	root_queue_id = make(root_queue_key, IPC_CREAT | IPC_EXCL | 0600);
	if (root_queue_id == -1) {
		for (size_t i = 0; i < n; i++)
			fail(permission_cases[i], "msgget of root's queue: %s", strerror(errno));
		return;
	}
	pid_t child = fork();
	if (child == -1) {
		fail("permissions", "fork: %s", strerror(errno));
		return;
	}
	if (child == 0) {
		failures = 0;
		drop_privileges_or_exit();
		unprivileged_msgget_asking_access_eacces();
		unprivileged_msgsnd_msgrcv_ipc_stat_eacces();
		unprivileged_ipc_rmid_of_another_owner_eperm();
		unprivileged_raise_qbytes_over_msgmnb_eperm();
		unprivileged_creator_of_an_unreadable_queue_gets_its_id();
		_exit(failures > 0);
	}
	int got = wait_child(child);
	if (got != 0 && got != 1)
		fail("permissions", "the unprivileged child died or hung");
	else
		failures += got;
	/* root's queue is untouched. */
	if (queue_messages(root_queue_id) != 0)
		fail("permissions", "root's queue changed");
}

/* The effective ids of the moment decide, call by call: a program that seteuid()s away
 * and back is refused in between and let in again after. */
static void seteuid_between_calls_decides_access(void)
{
	if (geteuid() != 0) {
		skip(CASE, "needs root, to change its effective uid");
		return;
	}
	int id = make(fresh_key(), IPC_CREAT | IPC_EXCL | 0600);
	if (id == -1) {
		fail(CASE, "msgget: %s", strerror(errno));
		return;
	}
	pid_t child = fork();
	if (child == 0) {
		failures = 0;
		long rc;
		EXPECT_OK(rc, send_text(id, 1, "as root", IPC_NOWAIT));
		if (setegid(UNPRIVILEGED) == -1 || seteuid(UNPRIVILEGED) == -1)
			_exit(2);
		EXPECT_ERRNO(send_text(id, 1, "as nobody", IPC_NOWAIT), EACCES);
		if (seteuid(0) == -1 || setegid(0) == -1)
			_exit(2);
		EXPECT_OK(rc, send_text(id, 1, "as root again", IPC_NOWAIT));
		_exit(failures > 0);
	}
	int got = wait_child(child);
	if (got != 0)
		fail(CASE, "the child failed (%d)", got);
	else if (queue_messages(id) != 2)
		fail(CASE, "%ld messages queued, not 2", queue_messages(id));
	else
		ok(CASE);
}

/* An id whose queue another process removed and made again at the same key is no id:
 * the kernel refuses it (EINVAL) and the new queue is untouched. */
static void an_old_id_of_a_remade_key_is_refused(void)
{
	key_t key = fresh_key();
	int old = make(key, IPC_CREAT | IPC_EXCL | 0600);
	if (old == -1) {
		fail(CASE, "msgget: %s", strerror(errno));
		return;
	}
	int fresh = -1;
	int pipefd[2];
	if (pipe(pipefd) == -1) {
		fail(CASE, "pipe: %s", strerror(errno));
		return;
	}
	pid_t child = fork();
	if (child == 0) {
		int id = -1;
		if (msgctl(old, IPC_RMID, NULL) == 0)
			id = msgget(key, IPC_CREAT | IPC_EXCL | 0600);
		if (write(pipefd[1], &id, sizeof id) != sizeof id)
			_exit(2);
		_exit(id == -1);
	}
	close(pipefd[1]);
	if (read(pipefd[0], &fresh, sizeof fresh) != sizeof fresh || wait_child(child) != 0) {
		fail(CASE, "the child could not remove and make the queue again");
		return;
	}
	close(pipefd[0]);
	if (made_count < (int)(sizeof made / sizeof made[0]))
		made[made_count++] = fresh;
	struct msqid_ds ds;
	EXPECT(fresh != old, "the key's new queue got the old id %d", old);
	EXPECT_ERRNO(msgctl(old, IPC_STAT, &ds), EINVAL);
	EXPECT_ERRNO(msgctl(old, IPC_RMID, NULL), EINVAL);
	long rc;
	EXPECT_OK(rc, msgctl(fresh, IPC_STAT, &ds));
	ok(CASE);
}

/* A call that succeeds leaves errno as it was. */
static void success_leaves_errno_alone(void)
{
	int id = make(fresh_key(), IPC_CREAT | IPC_EXCL | 0600);
	struct small m;
	errno = 0;
	long sent = send_text(id, 1, "quiet", IPC_NOWAIT);
	int after_send = errno;
	errno = 0;
	long got = msgrcv(id, &m, sizeof m.mtext, 0, IPC_NOWAIT);
	int after_recv = errno;
	EXPECT(sent == 0 && got > 0, "the send or receive failed");
	EXPECT(after_send == 0 && after_recv == 0, "errno was changed to %d / %d", after_send,
	       after_recv);
	ok(CASE);
}

/* A queue removed in an atexit handler is removed: the process's calls still work as
 * it exits. */
static void ipc_rmid_in_an_atexit_handler(void);
static int atexit_queue;
static void remove_at_exit(void)
{
	if (msgctl(atexit_queue, IPC_RMID, NULL) == -1)
		_exit(3);
}

static void ipc_rmid_in_an_atexit_handler(void)
{
	atexit_queue = msgget(IPC_PRIVATE, IPC_CREAT | 0600);
	if (atexit_queue == -1) {
		fail(CASE, "msgget: %s", strerror(errno));
		return;
	}
	pid_t child = fork();
	if (child == 0) {
		atexit(remove_at_exit);
		exit(0);
	}
	int got = wait_child(child);
	struct msqid_ds ds;
	EXPECT(got == 0, "the child's exit status was %d", got);
	EXPECT_ERRNO(msgctl(atexit_queue, IPC_STAT, &ds), EINVAL);
	ok(CASE);
}

/* --- the run ---------------------------------------------------------------------- */

static void remove_everything_made(void)
{
	for (int i = 0; i < made_count; i++)
		msgctl(made[i], IPC_RMID, NULL);
}

int main(int argc, char **argv)
{
	char *end = NULL;
	long base = argc == 2 ? strtol(argv[1], &end, 0) : 0;
	if (argc != 2 || *end || base <= 0 || base > 0x7fffffffL - KEYS) {
		fprintf(stderr, "usage: %s KEYBASE   (keys KEYBASE to KEYBASE+%d are used)\n",
			argv[0], KEYS - 1);
		return 2;
	}
	key_base = (key_t)base;

	msgget_missing_key_enoent();
	msgget_excl_twice_eexist();
	msgget_private_twice_two_queues();
	msgrcv_nowait_empty_enomsg();
	msgrcv_nowait_no_match_enomsg();
	msgrcv_type_zero_is_fifo();
	msgrcv_positive_type_first_of_that_type();
	msgrcv_negative_type_lowest_first();
	msgrcv_except_first_of_another_type();
	msgrcv_copy_leaves_the_queue();
	msgrcv_small_buffer_e2big_keeps_message();
	msgrcv_noerror_truncates_and_takes();
	msgsnd_over_msgmax_einval();
	msgsnd_type_below_one_einval();
	msgsnd_full_queue_nowait_eagain();
	msgsnd_null_buffer_efault();
	msgrcv_null_buffer_efault();
	msgrcv_waiting_when_removed_eidrm();
	msgrcv_interrupted_eintr_despite_sa_restart();
	ipc_stat_reports_queue_and_last_pids();
	ipc_stat_lspid_is_the_forked_sender();
	ipc_set_changes_mode_and_lowers_qbytes();
	removed_id_einval();
	removed_key_gets_a_new_id();
	ipc_info_matches_proc();
	msg_info_and_msg_stat_find_the_queue();
	permission_cases_as_another_user();
	seteuid_between_calls_decides_access();
	an_old_id_of_a_remade_key_is_refused();
	success_leaves_errno_alone();
	ipc_rmid_in_an_atexit_handler();

	remove_everything_made();
	return failures > 0;
}
