/*
 * Holds one SysV message queue for as long as its standard input stays open, so that a
 * test can look at the queue from outside while it exists.
 *
 * Usage: sysv_hold KEY
 *
 * Creates queue KEY (IPC_CREAT | IPC_EXCL, mode 0600), writes "created" on a line of
 * its own, reads standard input to its end, removes the queue and writes "removed".
 * Exits 0, or 1 with a message on standard error when a call fails.
 */

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	char *end = NULL;
	long key = argc == 2 ? strtol(argv[1], &end, 0) : 0;
	if (argc != 2 || *end || key == IPC_PRIVATE || key != (key_t)key) {
		fprintf(stderr, "usage: %s KEY   (a non-zero int)\n", argv[0]);
		return 2;
	}
	int id = msgget((key_t)key, IPC_CREAT | IPC_EXCL | 0600);
	if (id == -1) {
		perror("msgget");
		return 1;
	}
	printf("created\n");
	fflush(stdout);
	char buf[256];
	ssize_t n;
	while ((n = read(STDIN_FILENO, buf, sizeof buf)) != 0) {
		if (n == -1 && errno != EINTR) {
			perror("read");
			break;
		}
	}
	if (msgctl(id, IPC_RMID, NULL) == -1) {
		perror("msgctl(IPC_RMID)");
		return 1;
	}
	printf("removed\n");
	return 0;
}
