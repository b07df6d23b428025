/* The same SysV message-queue program, timed: run it on the kernel, then under
 * LD_PRELOAD=libipcd-sysv.so, and compare (bench/sysv.sh does both).
 *
 *   sysv_bench KEY MESSAGES ROUNDS
 *
 * streaming: a child msgsnd's MESSAGES 64-byte messages, the parent msgrcv's them;
 * ping-pong: the parent sends type 1 and waits for the child's type 2, ROUNDS times.
 * Prints "streaming MSGS_PER_S" and "pingpong MICROSECONDS_PER_ROUND_TRIP". */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/msg.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct msg {
    long mtype;
    char text[64];
};

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void die(const char *what) {
    perror(what);
    exit(1);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s KEY MESSAGES ROUNDS\n", argv[0]);
        return 2;
    }
    key_t key = atoi(argv[1]);
    long messages = atol(argv[2]), rounds = atol(argv[3]);
    int id = msgget(key, IPC_CREAT | IPC_EXCL | 0600);
    if (id < 0)
        die("msgget");
    struct msg m = {1, {0}};

    double start = now();
    pid_t child = fork();
    if (child == 0) {
        for (long i = 0; i < messages; i++) {
            memcpy(m.text, &i, sizeof i);
            if (msgsnd(id, &m, sizeof m.text, 0) < 0)
                die("msgsnd");
        }
        _exit(0);
    }
    for (long i = 0; i < messages; i++) {
        if (msgrcv(id, &m, sizeof m.text, 1, 0) < 0)
            die("msgrcv");
        long seq;
        memcpy(&seq, m.text, sizeof seq);
        if (seq != i) {
            fprintf(stderr, "message %ld arrived as %ld\n", i, seq);
            return 1;
        }
    }
    waitpid(child, NULL, 0);
    printf("streaming %.0f\n", messages / (now() - start));

    child = fork();
    if (child == 0) {
        for (long i = 0; i < rounds; i++) {
            if (msgrcv(id, &m, sizeof m.text, 1, 0) < 0)
                die("msgrcv (child)");
            m.mtype = 2;
            if (msgsnd(id, &m, sizeof m.text, 0) < 0)
                die("msgsnd (child)");
        }
        _exit(0);
    }
    start = now();
    for (long i = 0; i < rounds; i++) {
        m.mtype = 1;
        if (msgsnd(id, &m, sizeof m.text, 0) < 0)
            die("msgsnd");
        if (msgrcv(id, &m, sizeof m.text, 2, 0) < 0)
            die("msgrcv");
    }
    printf("pingpong %.1f\n", (now() - start) / rounds * 1e6);
    waitpid(child, NULL, 0);
    if (msgctl(id, IPC_RMID, NULL) < 0)
        die("msgctl");
    return 0;
}
