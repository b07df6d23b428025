/*
 * The classic SysV message-queue coursework program, unchanged in spirit: a server
 * creates queue KEY and prints what it receives until a message of type 1 comes, then
 * removes the queue; a client sends types 10 down to 1. Both run at once, as forked
 * children of main.
 *
 * Usage: coursework [KEY]   (KEY defaults to 75)
 *
 * The output is the same on every run, so that a test can compare a run on the
 * kernel's queues with a run on another implementation byte for byte: each child
 * writes whole lines with write(2) to its own pipe, and the parent copies the client's
 * pipe to stdout first and the server's second. Neither child ever blocks on its pipe:
 * all they write is far below a pipe's capacity. The exit status is 0 when both
 * children exit 0, else 1; a client that fails takes the server (and its queue) down
 * with it rather than leave it waiting for ever.
 */

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

struct message {
	long mtype;
	char mtext[64];
};

/* Writes one whole line to fd. */
static void say(int fd, const char *format, ...)
{
	char line[256];
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
		ssize_t w = write(fd, p, (size_t)n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return;
		p += w;
		n -= (int)w;
	}
}

static int server(key_t key, int out)
{
	int id = msgget(key, IPC_CREAT | 0666);
	if (id == -1) {
		perror("server: msgget");
		return 1;
	}
	struct message msg;
	do {
		ssize_t n = msgrcv(id, &msg, sizeof msg.mtext, 0, 0);
		if (n == -1) {
			perror("server: msgrcv");
			return 1;
		}
		/* The client sends the terminating NUL; this keeps a stray message safe. */
		msg.mtext[(size_t)n < sizeof msg.mtext ? (size_t)n : sizeof msg.mtext - 1] = '\0';
		say(out, "server: received type %ld: %s\n", msg.mtype, msg.mtext);
	} while (msg.mtype != 1);
	if (msgctl(id, IPC_RMID, 0) == -1) {
		perror("server: msgctl(IPC_RMID)");
		return 1;
	}
	say(out, "server: removed the queue\n");
	return 0;
}

static int client(key_t key, int out)
{
	int id;
	/* The server may not have created the queue yet: wait for it, at most 5 s. */
	for (int tries = 0;; tries++) {
		id = msgget(key, 0666);
		if (id != -1)
			break;
		if (errno != ENOENT || tries == 500) {
			perror("client: msgget");
			return 1;
		}
		usleep(10000);
	}
	for (int type = 10; type >= 1; type--) {
		struct message msg = { .mtype = type };
		int len = snprintf(msg.mtext, sizeof msg.mtext, "message of type %d", type);
		if (msgsnd(id, &msg, (size_t)len + 1, 0) == -1) {
			perror("client: msgsnd");
			return 1;
		}
		say(out, "client: sent type %d\n", type);
	}
	return 0;
}

/* Starts role in a child whose lines go to a new pipe; returns the pipe's read end. */
static int start(int (*role)(key_t, int), key_t key, pid_t *pid)
{
	int fds[2];
	if (pipe(fds) == -1) {
		perror("pipe");
		exit(1);
	}
	*pid = fork();
	if (*pid == -1) {
		perror("fork");
		exit(1);
	}
	if (*pid == 0) {
		close(fds[0]);
		_exit(role(key, fds[1]));
	}
	close(fds[1]);
	return fds[0];
}

/* Copies everything from fd to stdout, until end of file. */
static void copy_out(int fd)
{
	char buf[4096];
	ssize_t n;
	while ((n = read(fd, buf, sizeof buf)) != 0) {
		if (n < 0) {
			if (errno == EINTR)
				continue;
			perror("read");
			exit(1);
		}
		for (ssize_t done = 0; done < n;) {
			ssize_t w = write(STDOUT_FILENO, buf + done, (size_t)(n - done));
			if (w < 0) {
				if (errno == EINTR)
					continue;
				perror("write");
				exit(1);
			}
			done += w;
		}
	}
	close(fd);
}

static int succeeded(pid_t pid)
{
	int status;
	while (waitpid(pid, &status, 0) == -1) {
		if (errno != EINTR) {
			perror("waitpid");
			return 0;
		}
	}
	return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

int main(int argc, char **argv)
{
	key_t key = 75;
	if (argc > 1) {
		char *end;
		errno = 0;
		long k = strtol(argv[1], &end, 0);
		if (errno || *end || end == argv[1] || k == IPC_PRIVATE || k != (key_t)k) {
			fprintf(stderr, "usage: %s [KEY]  (a non-zero int)\n", argv[0]);
			return 2;
		}
		key = (key_t)k;
	}
	pid_t server_pid, client_pid;
	int from_server = start(server, key, &server_pid);
	int from_client = start(client, key, &client_pid);
	copy_out(from_client);
	int client_ok = succeeded(client_pid);
	if (!client_ok) {
		/* The server would wait for type 1 for ever: stop it and remove its queue. */
		kill(server_pid, SIGTERM);
		int id = msgget(key, 0);
		if (id != -1)
			msgctl(id, IPC_RMID, 0);
	}
	copy_out(from_server);
	int server_ok = succeeded(server_pid);
	return server_ok && client_ok ? 0 : 1;
}
