/*
 * oci-sandbox's in-container launcher: the init of a long-lived sandbox.
 *
 * It forks and execs one command per request: an exec then costs a fork + exec inside the
 * running container instead of a `runc exec` (which re-enters every namespace, cgroup and the
 * seccomp filter from outside). The command inherits everything the launcher has: the
 * container's namespaces, cgroups, capabilities (none), no_new_privs and seccomp filter.
 *
 * The channel is never a path. The container's stdin, as the runtime hands it over, is one
 * end of a SOCK_SEQPACKET socket pair whose other end the host holds: the *control* socket.
 * The launcher moves it to a close-on-exec fd and makes itself non-dumpable, so no command
 * it starts can hold, steal (pidfd_getfd, ptrace, /proc/1/fd) or replace it. Each command gets
 * a channel of its own: a socket pair the host makes per exec and passes over the control
 * socket; the launcher keeps its end close-on-exec, so replies about a command can only come
 * from the launcher, and a reply on a channel is about that channel's command.
 *
 * Protocol. This is the launcher's half of the contract; the host's half, with typed
 * messages and tests that pin these exact bytes, is src/launcher/protocol.rs (the module docs
 * of src/launcher/mod.rs say the same in prose). Every message is one SEQPACKET record;
 * numbers are decimal as printf's %d writes them; replies carry no NUL and no newline.
 *
 *   launcher -> host, control socket:
 *     "ready"        once, at start, before any request is read. The host takes the
 *                    launcher's pid from the credentials the kernel attaches (SO_PASSCRED).
 *
 *   host -> launcher, control socket: a start request, at most MAX_REQUEST bytes,
 *     "R" mode '\0' cwd '\0' argc '\0' argv[0] '\0' ... argv[argc-1] '\0' envc '\0'
 *     "KEY=VALUE" '\0' ... (every field NUL-terminated, the last one too; argc > 0; at most
 *     MAX_ITEMS fields, 4 + argc + envc exactly), with fds by SCM_RIGHTS: the command's
 *     channel first, then as the mode says
 *       'p' (pipes): three fds, the command's stdin, stdout, stderr;
 *       't' (terminal): one fd, a PTY's terminal end (the host keeps the controller): the
 *           command's controlling terminal and stdio. If it is no terminal in this kernel
 *           (gVisor: a stream socket), the launcher makes a PTY and a child relays between
 *           it and the fd;
 *       'T' (own terminal): no fd; the launcher makes a PTY in the container's devpts and
 *           sends its controller back ("P" below).
 *       'b' (background): no fd; the command's stdio is the container's own /dev/null, and
 *           after "S" the launcher closes the channel and keeps no host fd for it: the
 *           command runs until it ends or the container does (nothing is reported), and a
 *           checkpoint can carry it. While one runs, the leftovers of ended execs are not
 *           swept (gVisor) until none does.
 *     A request that arrives cut short (longer than MAX_REQUEST, or more than four fds:
 *     MSG_TRUNC, MSG_CTRUNC) is malformed. A request without a channel is dropped
 *     unanswered. At MAX_CONNS running commands a request is answered "E 24" and its fds
 *     closed (it is read all the same: the control socket never stays readable in the poll
 *     set, which holds no listening fd, only the control socket, the signalfd and channels).
 *
 *   launcher -> host, the command's channel, in this order:
 *     "P"            mode 'T' only, with exactly one fd by SCM_RIGHTS: the PTY's controller
 *                    (the launcher closes its own copy). If the PTY cannot be made, "E" is
 *                    sent instead; if "P" cannot be sent, the channel is closed unanswered.
 *     "S <pid>"      started: the command's pid in the container (0 if its keeper could
 *                    not report it).
 *     "E <errno>"    could not start; the channel is closed. exec's (or fork's) errno;
 *                    "E -<errno>" when chdir failed; "E 22" (EINVAL) for a malformed request
 *                    or one with the wrong number of fds for its mode; "E 24" (EMFILE) at
 *                    MAX_CONNS or when the socket pairs a command needs cannot be made; the
 *                    errno of posix_openpt/grantpt/unlockpt when a PTY cannot be made (mode
 *                    'T', or 't' relayed).
 *     "X <wstatus> <user_us> <system_us> <maxrss_kib>"
 *                    after "S": the command ended, with this waitpid status (its keeper's
 *                    report: an exit or a signal; the keeper's own status if it could not
 *                    report) and the command's wait4 usage: CPU time in user and system mode
 *                    (microseconds) and peak resident set (KiB), its waited-for children
 *                    included; the channel is closed.
 *
 *   host -> launcher, the command's channel (a record is read into 63 bytes, the rest of a
 *   longer one is lost; orders are read once the command has started, and ignored when its
 *   pid is unknown ("S 0"), when they do not apply, or when the letter is unknown):
 *     "K <signal>"   signal the command's process group (the command alone if that fails).
 *     "W <cols> <rows>"  resize the PTY the launcher relays (mode 't' relayed only; the host
 *                    resizes a controller it holds itself).
 *
 *   host -> launcher, control socket: "D" token '\0', with one fd by SCM_RIGHTS (a channel),
 *     token 16 to 64 characters of [0-9a-f]: detach (before a checkpoint). The launcher
 *     answers on the channel "E 16" (EBUSY) while it holds any fd of the host's (a command
 *     other than a background one, a helper), "E <errno>" if it cannot listen for the
 *     attach; else it listens on the abstract Unix socket ATTACH_NAME, answers "D", closes the
 *     control socket and the channel, and holds no host fd any more. It then waits for an
 *     attach: a connection there passing one fd (SCM_RIGHTS) whose first record, within a
 *     second, is "A" token '\0' with the same token; any other connection is closed. That
 *     fd becomes the control socket, and "ready" is sent on it as at the start. The token
 *     never leaves the launcher's (non-dumpable) memory inside the sandbox, so code in the
 *     sandbox cannot attach; the attach itself is `launcher attach`, run by the host with
 *     the new control socket as its stdin (`runsc exec`). From the detach to the host's first
 *     request on the new socket, the sweep of ended execs' leftovers waits: the attach is a
 *     process the launcher does not know, and may still be ending.
 *
 *   The host closes a channel: the command's process group is killed with SIGKILL.
 *   The host closes the control socket (it ended, or died): every command is killed and the
 *   launcher exits, so the container dies with its owner.
 *
 * As PID 1 of the container it also reaps every orphan.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <grp.h>
#include <sched.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "files.h"
#include "net.h"

#define MAX_CONNS 1024
#define COMMAND_NOFILE 1024
#define MAX_REQUEST (192 * 1024)
#define MAX_ITEMS 8192
/* Where a detached launcher waits for its host (abstract: nothing on a filesystem). */
#define ATTACH_NAME "oci-sandbox-attach"
/* The launcher's one argument under gVisor (see `no_keepers`). */
#define NO_KEEPERS_ARG "no-keepers"
#define TOKEN_MAX 64

/* The abstract address ATTACH_NAME in *addr; returns its length. */
static socklen_t attach_address(struct sockaddr_un *addr) {
    memset(addr, 0, sizeof *addr);
    addr->sun_family = AF_UNIX;
    memcpy(addr->sun_path + 1, ATTACH_NAME, sizeof ATTACH_NAME - 1);
    return offsetof(struct sockaddr_un, sun_path) + 1 + sizeof ATTACH_NAME - 1;
}

struct conn {
    int fd;
    pid_t pid;      /* 0 until started */
    int controller; /* a relayed terminal's controller (for resizes), or -1 */
    pid_t relayer;  /* the relay of that terminal, or 0 */
    pid_t cmd;      /* the command (its keeper is `pid`), or 0 */
    int report;     /* the keeper's report: the command's pid, then its end; or -1 */
};

/* How a command ended: its wait status and wait4 usage. */
struct ending {
    int status;
    long long user_us, system_us, maxrss_kib;
};

static struct ending ending_of(int status, const struct rusage *ru) {
    return (struct ending){
        .status = status,
        .user_us = (long long)ru->ru_utime.tv_sec * 1000000 + ru->ru_utime.tv_usec,
        .system_us = (long long)ru->ru_stime.tv_sec * 1000000 + ru->ru_stime.tv_usec,
        .maxrss_kib = ru->ru_maxrss,
    };
}

static struct conn conns[MAX_CONNS];

/* Helpers at work (files.c, net.c): one process per file or network request, until reaped. */
#define MAX_HELPERS 256
static pid_t helpers[MAX_HELPERS];
/* The launcher's copy of each helper's channel (-1 once the host's end has closed), and when
   that end closed (ms, monotonic; 0 while open). A helper whose host is gone is killed after a
   grace period (it cleans up itself when it can): processes of the sandbox's user can stop a
   helper, and a stopped one would keep its slot for good. */
static int helper_fds[MAX_HELPERS];
static long long helper_orphaned[MAX_HELPERS];
static int nhelpers;
#define HELPER_GRACE_MS 2000

static long long now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static void drop_helper(int k) {
    if (helper_fds[k] >= 0) close(helper_fds[k]);
    nhelpers--;
    helpers[k] = helpers[nhelpers];
    helper_fds[k] = helper_fds[nhelpers];
    helper_orphaned[k] = helper_orphaned[nhelpers];
}

/* Relays of ended execs still copying the last of their terminal's output, until reaped. */
static pid_t draining[MAX_CONNS];
static int ndraining;
static int nconns;
static char request[MAX_REQUEST + 1];

static void reply(int fd, const char *text) {
    while (send(fd, text, strlen(text), MSG_NOSIGNAL) < 0 && errno == EINTR) {
    }
}

static void drop_conn(int i) {
    if (conns[i].relayer > 0 && ndraining < MAX_CONNS) draining[ndraining++] = conns[i].relayer;
    /* What the host sent and the launcher did not read is read first: gVisor resets a
       connection closed with unread data, and the host would lose the last reply. */
    char unread[64];
    while (recv(conns[i].fd, unread, sizeof unread, MSG_DONTWAIT) > 0) {
    }
    close(conns[i].fd);
    if (conns[i].controller >= 0) close(conns[i].controller);
    if (conns[i].report >= 0) close(conns[i].report);
    conns[i] = conns[--nconns];
}

static int write_all(int fd, const char *buf, ssize_t len) {
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        buf += n;
        len -= n;
    }
    return 0;
}

/* Writes input to the terminal, doing the line discipline's ISIG part itself: gVisor's PTY
   (20221219) turns no ^C, ^\ or ^Z into a signal for a session made inside the sandbox, so
   the relay sends them to the terminal's foreground process group, as a terminal would. */
/* gVisor (20221219) does not know the foreground group of a session made in the sandbox.
   Then the signal goes to every process group of the command's session but the leader's own
   (the jobs an interactive shell started; an approximation: background jobs get it too), or
   to the leader's group when it has started none. */
static void signal_session_jobs(pid_t leader, int sig) {
    DIR *proc = opendir("/proc");
    int sent = 0;
    struct dirent *e;
    while (proc && (e = readdir(proc))) {
        pid_t pid = (pid_t)atoi(e->d_name);
        if (pid <= 0) continue;
        pid_t sid = getsid(pid), pgid = getpgid(pid);
        if (sid == leader && pgid > 0 && pgid != leader && kill(-pgid, sig) == 0) sent = 1;
    }
    if (proc) closedir(proc);
    if (!sent) kill(-leader, sig);
}

static int to_terminal(int controller, const char *buf, ssize_t len, pid_t leader) {
    struct termios t;
    int isig = tcgetattr(controller, &t) < 0 || (t.c_lflag & ISIG);
    ssize_t from = 0;
    for (ssize_t k = 0; isig && k < len; k++) {
        int sig = buf[k] == 3 ? SIGINT : buf[k] == 28 ? SIGQUIT : buf[k] == 26 ? SIGTSTP : 0;
        if (!sig) continue;
        pid_t fg = tcgetpgrp(controller);
        if (write_all(controller, buf + from, k - from) < 0) return -1;
        from = k + 1;
        if (fg > 0) {
            kill(-fg, sig);
        } else {
            signal_session_jobs(leader, sig);
        }
    }
    return write_all(controller, buf + from, len - from);
}

static volatile sig_atomic_t relay_ending;

static void end_relay(int sig) {
    (void)sig;
    relay_ending = 1;
}

/* Copies between the host's stream and a terminal controller until either side ends, or
   until the launcher says the command has exited (SIGTERM): then what the terminal still
   holds is copied and the relay ends, so the host reads end of file. (gVisor's PTY does not
   report a hang-up when the last replica closes.) */
static void relay(int host, int controller, pid_t leader) {
    static char buf[65536];
    struct sigaction sa = {.sa_handler = end_relay};
    sigaction(SIGTERM, &sa, NULL);
    sigset_t term, waiting;
    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    sigprocmask(SIG_BLOCK, &term, &waiting);
    sigdelset(&waiting, SIGTERM);
    struct pollfd p[2] = {{.fd = host, .events = POLLIN}, {.fd = controller, .events = POLLIN}};
    for (;;) {
        if (relay_ending) {
            fcntl(controller, F_SETFL, fcntl(controller, F_GETFL) | O_NONBLOCK);
            ssize_t n;
            while ((n = read(controller, buf, sizeof buf)) > 0) {
                if (write_all(host, buf, n) < 0) break;
            }
            _exit(0);
        }
        /* SIGTERM is let in only while waiting: it cannot slip between the check and here. */
        if (ppoll(p, 2, NULL, &waiting) < 0) {
            if (errno == EINTR) continue;
            _exit(0);
        }
        for (int k = 0; k < 2; k++) {
            if (!p[k].revents) continue;
            ssize_t n = read(p[k].fd, buf, sizeof buf);
            if (n <= 0) _exit(0);
            if (k == 0) {
                if (to_terminal(controller, buf, n, leader) < 0) _exit(0);
            } else if (write_all(host, buf, n) < 0) {
                _exit(0);
            }
        }
    }
}

/* Splits the request's NUL-separated fields; returns the count or -1. */
static int split(char *buf, size_t len, char **items, int max) {
    int n = 0;
    size_t start = 0;
    for (size_t i = 0; i < len; i++) {
        if (buf[i] == '\0') {
            if (n == max) return -1;
            items[n++] = buf + start;
            start = i + 1;
        }
    }
    return start == len ? n : -1;
}

/* The parent of process `pid`, from /proc; -1 when it is gone or unreadable. */
static pid_t parent_of(pid_t pid) {
    char path[64], stat[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int f = open(path, O_RDONLY | O_CLOEXEC);
    if (f < 0) return -1;
    ssize_t len = read(f, stat, sizeof stat - 1);
    close(f);
    if (len <= 0) return -1;
    stat[len] = '\0';
    /* "pid (comm) state ppid ...": the name may hold anything but its last ')'. */
    char *close_paren = strrchr(stat, ')');
    char state;
    int ppid;
    if (!close_paren || sscanf(close_paren + 1, " %c %d", &state, &ppid) != 2) return -1;
    return (pid_t)ppid;
}

/* Kills every descendant of this process (a subreaper: what they orphan comes here) and
   reaps them, round after round until none is left: processes an exec started in the
   background, setsid()'d or double-forked, end with it. */
static void kill_descendants(void) {
    enum { MAX_PROCS = 65536 };
    static pid_t pids[MAX_PROCS], parents[MAX_PROCS];
    static char mine[MAX_PROCS];
    pid_t self = getpid();
    for (int round = 0; round < 5000; round++) {
        int n = 0;
        DIR *proc = opendir("/proc");
        struct dirent *e;
        while (proc && n < MAX_PROCS && (e = readdir(proc))) {
            pid_t pid = (pid_t)atoi(e->d_name);
            pid_t ppid = pid > 0 ? parent_of(pid) : -1;
            if (ppid < 0) continue;
            pids[n] = pid;
            parents[n] = (pid_t)ppid;
            mine[n] = 0;
            n++;
        }
        if (proc) closedir(proc);
        /* Descendants: children of this process, then of those, until nothing changes. */
        int killed = 0, grew = 1;
        while (grew) {
            grew = 0;
            for (int k = 0; k < n; k++) {
                if (mine[k]) continue;
                int ours = parents[k] == self;
                for (int j = 0; !ours && j < n; j++) ours = mine[j] && pids[j] == parents[k];
                if (ours) {
                    mine[k] = 1;
                    grew = 1;
                    kill(pids[k], SIGKILL);
                    killed++;
                }
            }
        }
        while (waitpid(-1, NULL, WNOHANG) > 0) {
        }
        if (!killed && waitpid(-1, NULL, WNOHANG) < 0 && errno == ECHILD) return;
        usleep(1000);
    }
}

/* Kills every process of the container but the launcher and the relays: called when no exec
   runs any more, so whatever is left is something an exec left behind where its keeper could
   not adopt it (gVisor has no child subreapers), an orphan or a process about to become one.
   Rounds for what forked meanwhile: once something was killed, until two rounds 2 ms apart
   find nothing (gVisor may finish a fork the SIGKILL did not stop, and list the new process a
   moment later; a single quick rescan once missed one under load). A first round that finds
   nothing, the usual case, returns at once. */
static void kill_leftovers(void) {
    pid_t self = getpid();
    int quiet = 0;
    for (int round = 0; round < 50; round++) {
        int killed = 0;
        DIR *proc = opendir("/proc");
        struct dirent *e;
        while (proc && (e = readdir(proc))) {
            pid_t pid = (pid_t)atoi(e->d_name);
            if (pid <= 0 || pid == self) continue;
            int keep = 0;
            for (int i = 0; i < nconns && !keep; i++)
                keep = conns[i].pid == pid || conns[i].relayer == pid;
            for (int i = 0; i < ndraining && !keep; i++) keep = draining[i] == pid;
            for (int i = 0; i < nhelpers && !keep; i++) keep = helpers[i] == pid;
            if (!keep && kill(pid, SIGKILL) == 0) killed++;
        }
        if (proc) closedir(proc);
        if (killed) {
            quiet = 0;
        } else if (round == 0 || ++quiet >= 2) {
            break;
        }
        usleep(2000);
    }
}

/* Whether the launcher could become a child subreaper (runc, crun; gVisor 20221219 lets its
   PID 1 be one), and whether the keepers could (the last keeper's word: not under gVisor,
   whose orphans then come to the launcher, which sweeps them). */
static int subreapers;
static int keepers_adopt;
/* `launcher no-keepers` (the host's word for gVisor): keepers could not adopt anything, and
   each would cost a fork of the Sentry's (about 4 ms): commands are forked directly. */
static int no_keepers;

/* Between a detach and the host's first request after the attach, the host's `launcher
   attach` (started by `runsc exec`, a process the launcher does not know) may still be
   running: an exec ending then would sweep it as a leftover and fail the attach. Its sweep
   waits for that first request (the host sends it only after the attach has exited). */
static int attach_pending;
static int sweep_due;

/* Sweeps the leftovers once no exec runs, or marks the sweep due while an attach is pending.
   Where keepers adopt their commands' orphans, each has ended what its command left: nothing
   to sweep. */
static void sweep_when_idle(int except) {
    if (keepers_adopt) return;
    for (int k = 0; k < nconns; k++) {
        if (k != except && conns[k].pid > 0) return;
    }
    if (attach_pending) {
        sweep_due = 1;
    } else {
        kill_leftovers();
    }
}

/* The keeper of one exec: a subreaper between the launcher and the command, whose pid it
   has reported. It waits for the command, then ends everything the command left behind, and
   reports the command's wait status. Never returns. */
static void keep(pid_t cmd, int report) {
    struct ending end = {0};
    for (;;) {
        int s;
        struct rusage ru;
        pid_t w = wait4(-1, &s, 0, &ru);
        if (w == cmd) {
            end = ending_of(s, &ru);
            break;
        }
        if (w < 0 && errno != EINTR) break;
    }
    /* The command's orphans were made this keeper's children before its status could be
       collected: no child left means nothing it started runs on, and /proc need not be read. */
    pid_t left = waitpid(-1, NULL, WNOHANG);
    if (!(left < 0 && errno == ECHILD)) kill_descendants();
    (void)!write(report, &end, sizeof end);
    _exit(0);
}

/* Closes the fds of a request that cannot go on. */
static void close_fds(int *fds, int n) {
    for (int k = 0; k < n; k++) close(fds[k]);
}

static int control_fd = -1;


/* What a command's process needs between its start and its exec. */
struct command {
    int fds[3];
    char mode;
    const char *pts_path;
    const char *cwd;
    char **argv;
    char **envp;
    int status; /* gets the errno of a failed chdir (negated) or exec */
};

/* A command's process before its exec: its session, fd limit, stdio (a terminal made its
   controlling one), directory; then the exec. It runs as a vfork child, on its own stack and
   in the memory of its parent, which waits: only system calls and writes to the locals of
   this frame. */
static int run_command(void *arg) {
    struct command *c = arg;
    int fds[3] = {c->fds[0], c->fds[1], c->fds[2]};
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    setsid();
    /* Every command gets the same fd limit, whatever the runtime left the launcher. */
    struct rlimit fd_limit = {.rlim_cur = COMMAND_NOFILE, .rlim_max = COMMAND_NOFILE};
    setrlimit(RLIMIT_NOFILE, &fd_limit);
    int err;
    if (c->mode == 't' || c->mode == 'T') {
        /* The terminal becomes the new session's controlling terminal and its stdio.
           gVisor ignores TIOCSCTTY here; a session leader's open without O_NOCTTY
           makes it the controlling terminal there too. */
        if (c->pts_path[0]) {
            fds[0] = open(c->pts_path, O_RDWR);
            if (fds[0] < 0) goto fail;
            /* A cooked terminal, as a login's: ^C, ^Z and ^\ signal the foreground job. */
            struct termios t;
            if (tcgetattr(fds[0], &t) == 0) {
                t.c_iflag |= ICRNL | IXON;
                t.c_oflag |= OPOST | ONLCR;
                t.c_lflag |= ISIG | ICANON | ECHO | ECHOE | ECHOK | ECHOCTL | ECHOKE | IEXTEN;
                tcsetattr(fds[0], TCSANOW, &t);
            }
        }
        ioctl(fds[0], TIOCSCTTY, 0);
        fds[1] = fds[2] = fds[0];
    }
    for (int k = 0; k < 3; k++) {
        /* dup2 clears O_CLOEXEC on the copy; a same-number fd needs it cleared by hand.
           (The host's fds arrive above 2: 0-2 are /dev/null in the launcher.) */
        if (fds[k] == k) {
            fcntl(k, F_SETFD, 0);
        } else if (dup2(fds[k], k) < 0) {
            goto fail;
        }
    }
    if (chdir(c->cwd) < 0) {
        /* Negative: the working directory, not the command. */
        err = -errno;
        (void)!write(c->status, &err, sizeof err);
        _exit(127);
    }
    /* execvp searches the PATH of `environ`: the command's own (the parent restores its). */
    environ = c->envp;
    execvp(c->argv[0], c->argv);
fail:
    err = errno;
    (void)!write(c->status, &err, sizeof err);
    _exit(127);
}

/* The stack of a command's process until its exec (one at a time: its parent waits). */
static char command_stack[256 * 1024] __attribute__((aligned(16)));

/* Starts a command's process as posix_spawn does (CLONE_VM | CLONE_VFORK): no copy of the
   launcher's memory, and under gVisor no new address space until the exec (a fork there
   makes one, and the ptrace platform a stub process for it). Returns when the command has
   exec'd or failed, with its pid, or -1 and errno. */
static pid_t start_command(struct command *command) {
    char **own = environ;
    pid_t pid = clone(run_command, command_stack + sizeof command_stack,
                      CLONE_VM | CLONE_VFORK | SIGCHLD, command);
    int err = errno;
    environ = own;
    errno = err;
    return pid;
}

/* Forks a helper process: in the child, every fd of the launcher's own is closed and signals
   are unblocked. Returns fork's result. */
static pid_t fork_helper(void) {
    pid_t pid = fork();
    if (pid == 0) {
        close(control_fd);
        for (int k = 0; k < nconns; k++) {
            close(conns[k].fd);
            if (conns[k].controller >= 0) close(conns[k].controller);
            if (conns[k].report >= 0) close(conns[k].report);
        }
        for (int k = 0; k < nhelpers; k++)
            if (helper_fds[k] >= 0) close(helper_fds[k]);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
    }
    return pid;
}

/* Counts a forked helper (or answers fork's failure on its channel). */
static void track_helper(pid_t pid, int fd) {
    if (pid < 0) {
        char text[32];
        snprintf(text, sizeof text, "E %d", errno);
        reply(fd, text);
        close(fd);
    } else {
        helpers[nhelpers] = pid;
        helper_fds[nhelpers] = fd;
        helper_orphaned[nhelpers] = 0;
        nhelpers++;
    }
}

/* A network request: "N<op>\0<port>\0<uid>\0<gid>\0" with the channel (op 'l': the egress
   forwarder; 'x': an exposed port's connections). A helper process serves it (see net.c). */
static int net_request(int fd, int *fds, int nfds, size_t len, int truncated) {
    static char *items[6];
    int n = split(request, len, items, 5);
    char op = n == 4 && !truncated && strlen(items[0]) == 2 ? items[0][1] : 0;
    if (!op || !strchr("lx", op) || nfds != 0 || nhelpers == MAX_HELPERS) {
        reply(fd, nhelpers == MAX_HELPERS ? "E 24" : "E 22");
        close(fd);
        close_fds(fds, nfds);
        return 0;
    }
    pid_t pid = fork_helper();
    if (pid == 0)
        serve_net(fd, op, (unsigned)strtoul(items[1], NULL, 10),
                  (uid_t)strtoul(items[2], NULL, 10), (gid_t)strtoul(items[3], NULL, 10));
    track_helper(pid, fd);
    close_fds(fds, nfds);
    return 0;
}

/* A file request: "F<op>\0<path>\0<path2>\0<uid>\0<gid>\0<mode>\0" (mode in octal) with the
   channel and, for the ops that move data, a data socket. A helper process serves it (see
   files.c); the launcher keeps none of its fds. */
static int file_request(int fd, int *fds, int nfds, size_t len, int truncated) {
    static char *items[8];
    int n = split(request, len, items, 7);
    char op = n == 6 && !truncated && strlen(items[0]) == 2 ? items[0][1] : 0;
    int moves_data = op == 'r' || op == 'w' || op == 'l' || op == 'i';
    if (!op || !strchr("rwslmxni", op) || nfds != (moves_data ? 1 : 0)) {
        reply(fd, "E 22");
        close(fd);
        close_fds(fds, nfds);
        return 0;
    }
    if (nhelpers == MAX_HELPERS) {
        reply(fd, "E 24");
        close(fd);
        close_fds(fds, nfds);
        return 0;
    }
    pid_t pid = fork_helper();
    if (pid == 0)
        serve_file(fd, moves_data ? fds[0] : -1, op, items[1], items[2],
                   (uid_t)strtoul(items[3], NULL, 10), (gid_t)strtoul(items[4], NULL, 10),
                   (mode_t)strtoul(items[5], NULL, 8));
    track_helper(pid, fd);
    close_fds(fds, nfds);
    return 0;
}

/* Reads one request from the control socket, forks and execs the command. Returns -1 when the
   control socket has ended (the host is gone). */
static int signal_fd = -1;
static int detach(int fd, int *fds, int nfds, size_t len, int truncated, int sfd);

static int start(void) {
    int passed[4] = {-1, -1, -1, -1};
    int ngot = 0;
    struct iovec iov = {.iov_base = request, .iov_len = MAX_REQUEST};
    char control[CMSG_SPACE(4 * sizeof(int))];
    struct msghdr msg = {.msg_iov = &iov,
                         .msg_iovlen = 1,
                         .msg_control = control,
                         .msg_controllen = sizeof control};
    ssize_t len = recvmsg(control_fd, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    /* Only the end of the socket ends the container; a failed receive (no fd left for what
       came along, say) loses that one request, whose channel the host then sees closed. */
    if (len == 0 || (len < 0 && (errno == ECONNRESET || errno == ENOTCONN || errno == EBADF)))
        return -1;
    if (len < 0) return 0;
    if (attach_pending) {
        attach_pending = 0;
        if (sweep_due) {
            sweep_due = 0;
            sweep_when_idle(-1);
        }
    }
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
            int n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            for (int k = 0; k < n; k++) {
                int fd;
                memcpy(&fd, CMSG_DATA(c) + k * sizeof(int), sizeof fd);
                if (ngot < 4) {
                    passed[ngot++] = fd;
                } else {
                    close(fd);
                }
            }
        }
    }
    /* Without a channel there is no one to answer. */
    if (ngot == 0) return 0;
    int fd = passed[0];
    int *fds = &passed[1];
    int nfds = ngot - 1;
    if (len > 0 && request[0] == 'D')
        return detach(fd, fds, nfds, (size_t)len, (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) != 0,
                      signal_fd);
    if (len > 0 && request[0] == 'N')
        return net_request(fd, fds, nfds, (size_t)len, (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) != 0);
    if (len > 0 && request[0] == 'F')
        return file_request(fd, fds, nfds, (size_t)len, (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) != 0);
    if (nconns == MAX_CONNS) {
        reply(fd, "E 24");
        close_fds(passed, ngot);
        return 0;
    }
    int i = nconns++;
    conns[i] = (struct conn){.fd = fd, .pid = 0, .controller = -1, .relayer = 0, .cmd = 0, .report = -1};
    static char *items[MAX_ITEMS + 1];
    int n = split(request, (size_t)len, items, MAX_ITEMS);
    int ok = (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) == 0 && n >= 4 && items[0][0] == 'R';
    char mode = ok ? items[0][1] : 0;
    int argc = ok ? atoi(items[2]) : 0;
    int want = mode == 'p' ? 3 : mode == 't' ? 1 : (mode == 'T' || mode == 'b') ? 0 : -1;
    ok = ok && nfds == want && argc > 0 && 3 + argc < n;
    int envc = ok ? atoi(items[3 + argc]) : 0;
    ok = ok && 4 + argc + envc == n;
    if (!ok) {
        reply(fd, "E 22");
        close_fds(fds, nfds);
        drop_conn(i);
        return 0;
    }
    /* A background command's stdio: this kernel's /dev/null, no fd of the host's. */
    if (mode == 'b') {
        int null = open("/dev/null", O_RDWR | O_CLOEXEC);
        if (null < 0) {
            reply(fd, "E 24");
            drop_conn(i);
            return 0;
        }
        fds[0] = null;
        fds[1] = dup(null);
        fds[2] = dup(null);
        nfds = 3;
        if (fds[1] < 0 || fds[2] < 0) {
            close_fds(fds, 3);
            reply(fd, "E 24");
            drop_conn(i);
            return 0;
        }
    }
    /* A terminal end that is no terminal here (gVisor cannot treat a host PTY as one): make
       a PTY of this kernel's and relay between it and the stream the host gave. */
    int controller = -1;
    char pts_path[64] = "";
    if ((mode == 't' && !isatty(fds[0])) || mode == 'T') {
        /* The replica is opened only by the command, after setsid(): opened here (a session
           leader) it could become the launcher's controlling terminal under gVisor. */
        controller = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
        if (controller < 0 || grantpt(controller) < 0 || unlockpt(controller) < 0) {
            char text[32];
            snprintf(text, sizeof text, "E %d", errno);
            reply(fd, text);
            if (controller >= 0) close(controller);
            close_fds(fds, nfds);
            drop_conn(i);
            return 0;
        }
        snprintf(pts_path, sizeof pts_path, "%s", ptsname(controller));
        struct winsize ws = {.ws_row = 24, .ws_col = 80};
        ioctl(controller, TIOCSWINSZ, &ws);
    }
    if (mode == 'T') {
        /* A PTY of the container's own devpts (so that `tty` names it): the host gets the
           controller and keeps it; the launcher lets go of it. */
        struct iovec piov = {.iov_base = "P", .iov_len = 1};
        char pcontrol[CMSG_SPACE(sizeof(int))];
        memset(pcontrol, 0, sizeof pcontrol);
        struct msghdr pmsg = {.msg_iov = &piov,
                              .msg_iovlen = 1,
                              .msg_control = pcontrol,
                              .msg_controllen = sizeof pcontrol};
        struct cmsghdr *c = CMSG_FIRSTHDR(&pmsg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &controller, sizeof(int));
        int sent = sendmsg(fd, &pmsg, MSG_NOSIGNAL);
        close(controller);
        controller = -1;
        if (sent < 0) {
            drop_conn(i);
            return 0;
        }
    }
    /* A terminal of this kernel's relayed to the host's stream: the relay starts once the
       command runs (it signals the command's group). */
    int relayed = controller >= 0 && mode == 't';
    char *cwd = items[1];
    char **argv = &items[3];
    char **envp = &items[4 + argc];
    items[3 + argc] = NULL; /* ends argv (was envc) */
    /* envp ends at items[n], which is past the last field: make it NULL. */
    items[n] = NULL;

    /* Socket pairs, not pipes: a pipe of the launcher's can be opened through /proc/1/fd
       where the kernel does not check dumpability there (gVisor); a socket cannot. */
    int status_pipe[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, status_pipe) < 0) {
        if (controller >= 0) close(controller);
        close_fds(fds, nfds);
        reply(fd, "E 24");
        drop_conn(i);
        return 0;
    }
    int report[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, report) < 0) {
        close(status_pipe[0]);
        close(status_pipe[1]);
        if (controller >= 0) close(controller);
        close_fds(fds, nfds);
        reply(fd, "E 24");
        drop_conn(i);
        return 0;
    }
    /* Where the launcher could become a child subreaper, a keeper stands between it and the
       command; elsewhere the command is forked directly (and is its own "keeper"). */
    struct command command = {
        .fds = {fds[0], fds[1], fds[2]},
        .mode = mode,
        .pts_path = pts_path,
        .cwd = cwd,
        .argv = argv,
        .envp = envp,
        .status = status_pipe[1],
    };
    pid_t keeper, pid;
    int adopts = 0;
    if (subreapers && !no_keepers) {
        keeper = fork();
        pid = -1;
        if (keeper == 0) {
            /* A subreaper before the command exists: whatever it orphans comes to the keeper
               (gVisor lets PID 1 be one, not the keeper: then the launcher sweeps). */
            adopts = prctl(PR_SET_CHILD_SUBREAPER, 1) == 0;
            pid = start_command(&command);
        }
    } else {
        pid = start_command(&command);
        keeper = pid;
    }
    if (subreapers && !no_keepers && keeper == 0 && pid != 0) {
        /* The keeper: first what the launcher waits for (the status pipe's end, the pid),
           then it lets go of everything of the launcher's but its report pipe. */
        if (pid > 0) {
            close(status_pipe[1]);
            pid_t started[2] = {pid, adopts};
            (void)!write(report[1], started, sizeof started);
        }
        close(control_fd);
        for (int k = 0; k < nconns; k++) {
            close(conns[k].fd);
            if (conns[k].controller >= 0) close(conns[k].controller);
            if (conns[k].report >= 0) close(conns[k].report);
        }
        if (controller >= 0) close(controller);
        close(status_pipe[0]);
        close(report[0]);
        if (pid < 0) {
            int err = errno;
            (void)!write(status_pipe[1], &err, sizeof err);
            _exit(127);
        }
        close_fds(fds, nfds);
        keep(pid, report[1]);
    }
    close(status_pipe[1]);
    close(report[1]);
    conns[i].controller = controller;
    conns[i].report = report[0];
    int err = 0;
    ssize_t got;
    if (keeper < 0) {
        err = errno;
        got = sizeof err;
    } else {
        while ((got = read(status_pipe[0], &err, sizeof err)) < 0 && errno == EINTR) {
        }
    }
    close(status_pipe[0]);
    /* The keeper reports the command's pid first (it is running, or failed to exec), and
       whether it adopts the command's orphans. */
    pid = keeper;
    pid_t started[2];
    if (subreapers && !no_keepers && keeper > 0) {
        if (read(report[0], started, sizeof started) == (ssize_t)sizeof started) {
            pid = started[0];
            keepers_adopt = started[1];
        } else {
            pid = 0;
        }
    }
    char text[32];
    if (got == (ssize_t)sizeof err) {
        /* The child has exited (127) and is reaped by the SIGCHLD loop. */
        close_fds(fds, nfds);
        snprintf(text, sizeof text, "E %d", err);
        reply(fd, text);
        drop_conn(i);
        return 0;
    }
    if (relayed) {
        /* SIGTERM (the command's end) can come before the relay has its handler: a short
           command exits while a fork (slow under gVisor) is still under way. Blocked across
           the fork, it stays pending until the relay waits for it, and the relay drains. */
        sigset_t term, before;
        sigemptyset(&term);
        sigaddset(&term, SIGTERM);
        sigprocmask(SIG_BLOCK, &term, &before);
        pid_t relayer = fork();
        if (relayer != 0) sigprocmask(SIG_SETMASK, &before, NULL);
        if (relayer == 0) {
            /* Only the two ends stay open here, so that closing them elsewhere is seen. */
            close(control_fd);
            for (int k = 0; k < nconns; k++) {
                close(conns[k].fd);
                if (k != i && conns[k].controller >= 0) close(conns[k].controller);
            }
            relay(fds[0], controller, pid);
        }
        conns[i].relayer = relayer > 0 ? relayer : 0;
    }
    close_fds(fds, nfds);
    conns[i].pid = keeper;
    conns[i].cmd = pid;
    snprintf(text, sizeof text, "S %d", (int)pid);
    reply(fd, text);
    if (mode == 'b') {
        /* Nothing of the host's is kept for it: its end is reaped and dropped unreported. */
        close(fd);
        conns[i].fd = -1;
    }
    return 0;
}

static void reap(void);

/* Waits, detached, for the host to attach again (see "D" in the protocol above): serves
   nothing but the reaping of what ends meanwhile. Returns with control_fd set. */
static void await_attach(int listener, int sfd, const char *token) {
    char want[TOKEN_MAX + 2];
    size_t want_len = (size_t)snprintf(want, sizeof want, "A%s", token) + 1;
    for (;;) {
        struct pollfd p[2] = {{.fd = listener, .events = POLLIN}, {.fd = sfd, .events = POLLIN}};
        if (poll(p, 2, -1) < 0) continue;
        if (p[1].revents) {
            struct signalfd_siginfo si;
            while (read(sfd, &si, sizeof si) > 0) {
            }
            reap();
        }
        if (!p[0].revents) continue;
        int c = accept4(listener, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (c < 0) continue;
        int passed = -1;
        struct pollfd wait_c = {.fd = c, .events = POLLIN};
        if (poll(&wait_c, 1, 1000) == 1) {
            char byte;
            struct iovec iov = {.iov_base = &byte, .iov_len = 1};
            char control[CMSG_SPACE(sizeof(int))];
            struct msghdr msg = {.msg_iov = &iov,
                                 .msg_iovlen = 1,
                                 .msg_control = control,
                                 .msg_controllen = sizeof control};
            if (recvmsg(c, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT) > 0) {
                for (struct cmsghdr *m = CMSG_FIRSTHDR(&msg); m; m = CMSG_NXTHDR(&msg, m)) {
                    if (m->cmsg_level != SOL_SOCKET || m->cmsg_type != SCM_RIGHTS) continue;
                    int n = (m->cmsg_len - CMSG_LEN(0)) / sizeof(int);
                    for (int k = 0; k < n; k++) {
                        int fd;
                        memcpy(&fd, CMSG_DATA(m) + k * sizeof(int), sizeof fd);
                        if (passed < 0 && !(msg.msg_flags & MSG_CTRUNC)) {
                            passed = fd;
                        } else {
                            close(fd);
                        }
                    }
                }
            }
        }
        close(c);
        if (passed < 0) continue;
        /* The host's first record on it is the token: then it is the host's socket. */
        char got[TOKEN_MAX + 8];
        struct pollfd wait_p = {.fd = passed, .events = POLLIN};
        ssize_t len = -1;
        if (poll(&wait_p, 1, 1000) == 1) len = recv(passed, got, sizeof got, MSG_DONTWAIT);
        if (len == (ssize_t)want_len && memcmp(got, want, want_len) == 0) {
            control_fd = passed;
            close(listener);
            reply(control_fd, "ready");
            return;
        }
        close(passed);
    }
}

/* A detach request (see "D" above): refused while the launcher holds a host fd. */
static int detach(int fd, int *fds, int nfds, size_t len, int truncated, int sfd) {
    close_fds(fds, nfds);
    request[len] = '\0';
    const char *token = request + 1;
    size_t token_len = strnlen(token, len - 1);
    int valid = !truncated && nfds == 0 && token_len + 2 == len && token_len >= 16 &&
                token_len <= TOKEN_MAX && strspn(token, "0123456789abcdef") == token_len;
    if (!valid) {
        reply(fd, "E 22");
        close(fd);
        return 0;
    }
    int busy = nhelpers > 0 || ndraining > 0;
    for (int i = 0; i < nconns; i++) busy |= conns[i].fd >= 0 || conns[i].relayer > 0;
    if (busy) {
        reply(fd, "E 16");
        close(fd);
        return 0;
    }
    int listener = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    struct sockaddr_un addr;
    socklen_t addr_len = attach_address(&addr);
    if (listener < 0 || bind(listener, (struct sockaddr *)&addr, addr_len) < 0 ||
        listen(listener, 8) < 0) {
        char text[16];
        snprintf(text, sizeof text, "E %d", errno);
        if (listener >= 0) close(listener);
        reply(fd, text);
        close(fd);
        return 0;
    }
    char kept[TOKEN_MAX + 1];
    memcpy(kept, token, token_len + 1);
    reply(fd, "D");
    close(fd);
    close(control_fd);
    control_fd = -1;
    attach_pending = 1;
    await_attach(listener, sfd, kept);
    return 0;
}

/* A command has ended: its relay drains, the leftovers of the last exec are swept (gVisor),
   "X" goes to the host and the connection is dropped. */
static void finish_conn(int i, struct ending end) {
    char text[96];
    /* The relay copies what the terminal still holds, then ends the stream. */
    if (conns[i].relayer > 0) kill(conns[i].relayer, SIGTERM);
    /* The last exec has ended: nothing it left may run on (gVisor, where no keeper could
       adopt it). */
    sweep_when_idle(i);
    snprintf(text, sizeof text, "X %d %lld %lld %lld", end.status, end.user_us, end.system_us,
             end.maxrss_kib);
    reply(conns[i].fd, text);
    drop_conn(i);
}

static void reap(void) {
    int status;
    pid_t pid;
    struct rusage ru;
    while ((pid = wait4(-1, &status, WNOHANG, &ru)) > 0) {
        for (int k = 0; k < nhelpers; k++) {
            if (helpers[k] == pid) {
                drop_helper(k);
                break;
            }
        }
        for (int k = 0; k < ndraining; k++) {
            if (draining[k] == pid) {
                draining[k] = draining[--ndraining];
                break;
            }
        }
        for (int i = 0; i < nconns; i++) {
            if (conns[i].pid == pid) {
                /* The command's end, from its keeper (which has ended all it left); without
                   a keeper the process reaped is the command. */
                struct ending end = ending_of(status, &ru);
                struct ending reported;
                if (conns[i].report >= 0 &&
                    read(conns[i].report, &reported, sizeof reported) == (ssize_t)sizeof reported)
                    end = reported;
                finish_conn(i, end);
                break;
            }
        }
    }
}

/* The keeper's report of its command's end is readable: the command and all it left are
   gone, so the end is reported at once (the keeper's own exit is reaped later). A keeper that
   ended without a whole report leaves the end to its reaping (its wait status). */
static void report_ready(int i) {
    struct ending end;
    ssize_t n = recv(conns[i].report, &end, sizeof end, MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (n == (ssize_t)sizeof end) {
        finish_conn(i, end);
        return;
    }
    close(conns[i].report);
    conns[i].report = -1;
}

/* A message or hang-up on a started command's connection. */
static void control(int i) {
    char buf[64];
    ssize_t len = recv(conns[i].fd, buf, sizeof buf - 1, MSG_DONTWAIT);
    if (len < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (len <= 0) {
        /* The keeper, once the command is dead, ends what it left and is reaped by the
           SIGCHLD loop without a report. */
        if (conns[i].cmd > 0) {
            kill(-conns[i].cmd, SIGKILL);
            kill(conns[i].cmd, SIGKILL);
        }
        drop_conn(i);
        return;
    }
    buf[len] = '\0';
    if (conns[i].cmd <= 0) return;
    if (buf[0] == 'K') {
        int sig = atoi(buf + 1);
        if (kill(-conns[i].cmd, sig) < 0) kill(conns[i].cmd, sig);
    } else if (buf[0] == 'W' && conns[i].controller >= 0) {
        struct winsize ws = {0};
        if (sscanf(buf + 1, "%hu %hu", &ws.ws_col, &ws.ws_row) == 2)
            ioctl(conns[i].controller, TIOCSWINSZ, &ws);
    }
}

/* Kills every command and ends the container: the host has gone. */
static void end_all(void) {
    for (int i = 0; i < nconns; i++) {
        if (conns[i].cmd > 0) kill(-conns[i].cmd, SIGKILL);
    }
    /* Relays told to drain get to finish (a spawn's host closes the control socket as soon
       as it has the command's status, which can be before its relay has copied the last
       output), for up to a second: one whose host does not read stays blocked. */
    for (int round = 0; ndraining > 0 && round < 1000; round++) {
        pid_t pid = waitpid(-1, NULL, WNOHANG);
        for (int k = 0; pid > 0 && k < ndraining; k++) {
            if (draining[k] == pid) draining[k] = draining[--ndraining];
        }
        if (pid <= 0) usleep(1000);
    }
    kill(-1, SIGKILL);
    /* Every process of the container is this one's descendant, and an orphan its child: once
       none is left to reap, none runs. The host may read our exit (the end of the control
       socket) as the end of every command, before the container's own teardown. */
    while (wait(NULL) > 0 || errno == EINTR) {
    }
    _exit(0);
}

/* `launcher attach`, run by the host in a detached sandbox with its new control socket as
   stdin: hands that socket to the launcher waiting on ATTACH_NAME, and exits. */
static int attach(void) {
    int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    struct sockaddr_un addr;
    socklen_t addr_len = attach_address(&addr);
    if (s < 0 || connect(s, (struct sockaddr *)&addr, addr_len) < 0) {
        perror("launcher attach");
        return 1;
    }
    char byte = 'a';
    struct iovec iov = {.iov_base = &byte, .iov_len = 1};
    char control[CMSG_SPACE(sizeof(int))] = {0};
    struct msghdr msg = {.msg_iov = &iov,
                         .msg_iovlen = 1,
                         .msg_control = control,
                         .msg_controllen = sizeof control};
    struct cmsghdr *m = CMSG_FIRSTHDR(&msg);
    m->cmsg_level = SOL_SOCKET;
    m->cmsg_type = SCM_RIGHTS;
    m->cmsg_len = CMSG_LEN(sizeof(int));
    int zero = 0;
    memcpy(CMSG_DATA(m), &zero, sizeof zero);
    if (sendmsg(s, &msg, MSG_NOSIGNAL) < 0) {
        perror("launcher attach");
        return 1;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "attach") == 0) return attach();
    no_keepers = argc == 2 && strcmp(argv[1], NO_KEEPERS_ARG) == 0;
    /* Nothing this process holds may be reachable from the commands it starts: not its
       memory (/proc/1/mem), not its fds (pidfd_getfd, /proc/1/fd), not by ptrace. */
    prctl(PR_SET_DUMPABLE, 0);
    struct stat st;
    if (fstat(0, &st) < 0 || !S_ISSOCK(st.st_mode)) {
        fprintf(stderr, "launcher: stdin must be the host's control socket\n");
        return 2;
    }
    control_fd = fcntl(0, F_DUPFD_CLOEXEC, 3);
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, NULL);
    int sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
    signal_fd = sfd;
    int devnull = open("/dev/null", O_RDWR);
    if (control_fd < 0 || sfd < 0 || devnull < 0) {
        perror("launcher");
        return 1;
    }
    for (int k = 0; k < 3; k++) dup2(devnull, k);
    close(devnull);
    /* Harmless for PID 1, which adopts its namespace's orphans anyway. */
    subreapers = prctl(PR_SET_CHILD_SUBREAPER, 1) == 0;
    reply(control_fd, "ready");
    static struct pollfd pfds[2 * MAX_CONNS + MAX_HELPERS + 2];
    static int reporting[MAX_CONNS];
    static int watched[MAX_HELPERS];
    for (;;) {
        pfds[0] = (struct pollfd){.fd = control_fd, .events = POLLIN};
        pfds[1] = (struct pollfd){.fd = sfd, .events = POLLIN};
        for (int i = 0; i < nconns; i++)
            pfds[2 + i] = (struct pollfd){.fd = conns[i].fd, .events = POLLIN};
        /* Helpers' channels: only their hang-up is of interest (no events asked). */
        int nwatched = 0, orphans = 0;
        for (int k = 0; k < nhelpers; k++) {
            if (helper_fds[k] >= 0) {
                watched[nwatched] = k;
                pfds[2 + nconns + nwatched++] = (struct pollfd){.fd = helper_fds[k], .events = 0};
            } else {
                orphans++;
            }
        }
        /* Keepers' reports: a command's end, read before its keeper is reaped. */
        int nreporting = 0;
        for (int i = 0; i < nconns; i++) {
            if (subreapers && !no_keepers && conns[i].report >= 0 && conns[i].pid > 0) {
                reporting[nreporting] = conns[i].report;
                pfds[2 + nconns + nwatched + nreporting++] =
                    (struct pollfd){.fd = conns[i].report, .events = POLLIN};
            }
        }
        if (poll(pfds, 2 + nconns + nwatched + nreporting, orphans ? 200 : -1) < 0) continue;
        for (int j = 0; j < nreporting; j++) {
            if (!pfds[2 + nconns + nwatched + j].revents) continue;
            /* The connection of that report, if it is still there (finishing one moves
               another into its slot). */
            for (int i = 0; i < nconns; i++) {
                if (conns[i].report == reporting[j]) {
                    report_ready(i);
                    break;
                }
            }
        }
        long long now = now_ms();
        for (int j = 0; j < nwatched; j++) {
            int k = watched[j];
            if (pfds[2 + nconns + j].revents & (POLLHUP | POLLERR)) {
                close(helper_fds[k]);
                helper_fds[k] = -1;
                helper_orphaned[k] = now;
            }
        }
        for (int k = 0; k < nhelpers; k++) {
            if (helper_fds[k] < 0 && now - helper_orphaned[k] > HELPER_GRACE_MS)
                kill(helpers[k], SIGKILL);
        }
        if (pfds[1].revents) {
            struct signalfd_siginfo si;
            while (read(sfd, &si, sizeof si) > 0) {
            }
            reap();
        }
        /* Channels first, from the end (drop_conn moves the last one into the slot). */
        for (int i = nconns - 1; i >= 0; i--) {
            if (i >= nconns || !pfds[2 + i].revents || pfds[2 + i].fd != conns[i].fd) continue;
            control(i);
        }
        if (pfds[0].revents && start() < 0) end_all();
    }
}
