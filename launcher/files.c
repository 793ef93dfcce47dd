/*
 * The file helper of the launcher: one forked process per file request from the host, which
 * does the request's I/O inside the container (its mounts, its root, its user) and exits.
 *
 * Doing the I/O in here rather than on the host through /proc/<pid>/root is what makes it the
 * same on every runtime (gVisor's files live in its Sentry, not on the host), and confines
 * every path by construction: a symlink or ".." the sandbox planted resolves inside the
 * container, as it would for any of its processes. The helper first becomes the sandbox's
 * user, so what it creates is that user's and it can do nothing the user could not.
 *
 * Replies on the request's channel ("E <errno>" for any failure, then the helper exits):
 *   'r' read      "S <size>", the file's bytes on the data socket, then "D" or "E".
 *   'w' write     "S 0"; the host sends the bytes on the data socket and shuts it; the
 *                 helper writes them to a new file next to the path and waits for "C" on the
 *                 channel: then renames it over the path and replies "D". Without "C" (the
 *                 host dropped the write) or on a write error, the new file is removed: a
 *                 file is replaced whole or not at all.
 *   's' stat      "M <kind> <size> <mode> <mtime_s> <mtime_ns> <uid> <gid>" (lstat; kind is
 *                 f, d, l or o).
 *   'l' list      "S 0", then per entry "<kind> <size> <mode> <mtime_s> <mtime_ns> <name>\0"
 *                 on the data socket, then "D".
 *   'm' mkdir -p  "D" (mode 0755 for each directory made).
 *   'x' remove    "D" (a file, a link, or a whole tree, links never followed).
 *   'n' rename    "D" (path to path2).
 *   'i' watch     "S 0", then per event "<kind> <name>\0" on the data socket (c created,
 *                 m modified, d deleted, s the watched path itself went), until the host
 *                 closes the channel. With mode 1, recursively: every directory below is
 *                 watched too (at most MAX_WATCHED; new ones as they appear), and names are
 *                 paths relative to the watched one.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <grp.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "files.h"

static char buf[256 * 1024];

static void say(int channel, const char *text) {
    while (send(channel, text, strlen(text), MSG_NOSIGNAL) < 0 && errno == EINTR) {
    }
}

/* Reads what the host sent and this helper did not (a commit that came with a write's data):
   gVisor resets a connection closed with unread data, and the host would lose the reply. */
static void drain(int channel) {
    char unread[64];
    while (recv(channel, unread, sizeof unread, MSG_DONTWAIT) > 0) {
    }
}

__attribute__((noreturn)) static void fail(int channel, int err) {
    char text[32];
    snprintf(text, sizeof text, "E %d", err ? err : EIO);
    say(channel, text);
    drain(channel);
    _exit(1);
}

static int write_all_fd(int fd, const char *p, ssize_t len) {
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += n;
        len -= n;
    }
    return 0;
}

static char kind_of(mode_t mode) {
    return S_ISREG(mode) ? 'f' : S_ISDIR(mode) ? 'd' : S_ISLNK(mode) ? 'l' : 'o';
}

static void read_file(int channel, int data, const char *path) {
    /* Non-blocking: a FIFO planted at the path must not hold the helper in open(). */
    int fd = open(path, O_RDONLY | O_NOCTTY | O_CLOEXEC | O_NONBLOCK);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) fail(channel, errno);
    if (S_ISDIR(st.st_mode)) fail(channel, EISDIR);
    if (!S_ISREG(st.st_mode)) fail(channel, EINVAL);
    fcntl(fd, F_SETFL, 0);
    char text[48];
    snprintf(text, sizeof text, "S %lld", (long long)st.st_size);
    say(channel, text);
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) fail(channel, errno);
        if (n == 0) break;
        if (write_all_fd(data, buf, n) < 0) fail(channel, errno);
    }
    close(data);
    say(channel, "D");
    _exit(0);
}

static char tmp_path[PATH_MAX];

static void write_file(int channel, int data, const char *path, mode_t mode) {
    /* The new file goes next to the path (same filesystem, so the rename is atomic). */
    const char *slash = strrchr(path, '/');
    int dir_len = slash ? (int)(slash - path) : 0;
    if (snprintf(tmp_path, sizeof tmp_path, "%.*s/.osb-write-%d", dir_len, path, (int)getpid()) >=
        (int)sizeof tmp_path)
        fail(channel, ENAMETOOLONG);
    int fd = open(tmp_path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode & 07777);
    if (fd < 0) fail(channel, errno);
    say(channel, "S 0");
    int err = 0;
    for (;;) {
        ssize_t n = read(data, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            err = errno;
            break;
        }
        if (n == 0) break;
        if (write_all_fd(fd, buf, n) < 0) {
            err = errno;
            break;
        }
    }
    /* umask does not narrow what the host asked for. */
    if (!err && fchmod(fd, mode & 07777) < 0) err = errno;
    if (!err && close(fd) < 0) err = errno;
    if (err) {
        unlink(tmp_path);
        fail(channel, err);
    }
    /* Committed only by "C": a host that went away leaves nothing half-written. */
    char order[8];
    ssize_t n;
    while ((n = recv(channel, order, sizeof order, 0)) < 0 && errno == EINTR) {
    }
    if (n < 1 || order[0] != 'C') {
        unlink(tmp_path);
        _exit(1);
    }
    if (rename(tmp_path, path) < 0) {
        err = errno;
        unlink(tmp_path);
        fail(channel, err);
    }
    say(channel, "D");
    _exit(0);
}

static void stat_path(int channel, const char *path) {
    struct stat st;
    if (lstat(path, &st) < 0) fail(channel, errno);
    char text[160];
    snprintf(text, sizeof text, "M %c %lld %o %lld %ld %u %u", kind_of(st.st_mode),
             (long long)st.st_size, (unsigned)(st.st_mode & 07777), (long long)st.st_mtim.tv_sec,
             st.st_mtim.tv_nsec, (unsigned)st.st_uid, (unsigned)st.st_gid);
    say(channel, text);
    _exit(0);
}

static void list_dir(int channel, int data, const char *path) {
    int dfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *dir = dfd < 0 ? NULL : fdopendir(dfd);
    if (!dir) fail(channel, errno);
    say(channel, "S 0");
    struct dirent *e;
    char record[NAME_MAX + 128];
    while ((e = readdir(dir))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        struct stat st;
        if (fstatat(dfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0) continue;
        int len = snprintf(record, sizeof record, "%c %lld %o %lld %ld %s", kind_of(st.st_mode),
                           (long long)st.st_size, (unsigned)(st.st_mode & 07777),
                           (long long)st.st_mtim.tv_sec, st.st_mtim.tv_nsec, e->d_name);
        /* The NUL ends the record: a name may hold anything else. */
        if (write_all_fd(data, record, len + 1) < 0) fail(channel, errno);
    }
    close(data);
    say(channel, "D");
    _exit(0);
}

static void make_dirs(int channel, const char *path) {
    if (strlen(path) >= sizeof tmp_path) fail(channel, ENAMETOOLONG);
    strcpy(tmp_path, path);
    for (char *p = tmp_path + 1;; p++) {
        if (*p == '/' || *p == '\0') {
            char end = *p;
            *p = '\0';
            if (mkdir(tmp_path, 0755) < 0 && errno != EEXIST) fail(channel, errno);
            struct stat st;
            if (stat(tmp_path, &st) < 0) fail(channel, errno);
            if (!S_ISDIR(st.st_mode)) fail(channel, ENOTDIR);
            *p = end;
            if (end == '\0') break;
        }
    }
    say(channel, "D");
    _exit(0);
}

static int remove_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st;
    (void)ftw;
    return (flag == FTW_DP ? rmdir(path) : unlink(path)) < 0 ? -1 : 0;
}

static void remove_path(int channel, const char *path) {
    struct stat st;
    if (lstat(path, &st) < 0) fail(channel, errno);
    int rc = S_ISDIR(st.st_mode) ? nftw(path, remove_one, 16, FTW_DEPTH | FTW_PHYS | FTW_MOUNT)
                                 : unlink(path);
    if (rc < 0) fail(channel, errno);
    say(channel, "D");
    _exit(0);
}

static void rename_path(int channel, const char *from, const char *to) {
    if (rename(from, to) < 0) fail(channel, errno);
    say(channel, "D");
    _exit(0);
}

/* A recursive watch's directories: watch descriptor -> path relative to the watched one. */
#define MAX_WATCHED 8192
static struct {
    int wd;
    char *rel;
} watched[MAX_WATCHED];
static int nwatched;

static const char *rel_of(int wd) {
    for (int i = 0; i < nwatched; i++)
        if (watched[i].wd == wd) return watched[i].rel;
    return NULL;
}

/* Watches directory `rel` (relative to `top`, "" for it) and, with `recursive`, every
   directory below it, depth first, within MAX_WATCHED; links are not followed. */
static void watch_tree(int in, const char *top, const char *rel, uint32_t mask, int recursive) {
    if (nwatched == MAX_WATCHED) return;
    char full[PATH_MAX];
    if (snprintf(full, sizeof full, "%s%s%s", top, *rel ? "/" : "", rel) >= (int)sizeof full) return;
    int wd = inotify_add_watch(in, full, mask | IN_ONLYDIR | IN_DONT_FOLLOW);
    if (wd < 0) return;
    if (!rel_of(wd)) {
        char *copy = strdup(rel);
        if (!copy) return;
        watched[nwatched].wd = wd;
        watched[nwatched].rel = copy;
        nwatched++;
    }
    if (!recursive) return;
    DIR *d = opendir(full);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_type != DT_DIR || !strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char sub[PATH_MAX];
        if (snprintf(sub, sizeof sub, "%s%s%s", rel, *rel ? "/" : "", e->d_name) >= (int)sizeof sub)
            continue;
        watch_tree(in, top, sub, mask, recursive);
    }
    closedir(d);
}

static void watch_path(int channel, int data, const char *path, int recursive) {
    int in = inotify_init1(IN_CLOEXEC);
    if (in < 0) fail(channel, errno);
    uint32_t mask = IN_CREATE | IN_MOVED_TO | IN_CLOSE_WRITE | IN_MODIFY | IN_DELETE |
                    IN_MOVED_FROM | IN_DELETE_SELF | IN_MOVE_SELF;
    int top = inotify_add_watch(in, path, mask);
    if (top < 0) fail(channel, errno);
    struct stat st;
    if (recursive && stat(path, &st) == 0 && S_ISDIR(st.st_mode)) watch_tree(in, path, "", mask, 1);
    say(channel, "S 0");
    struct pollfd p[2] = {{.fd = in, .events = POLLIN}, {.fd = channel, .events = POLLIN}};
    char record[PATH_MAX + NAME_MAX + 8];
    for (;;) {
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR) continue;
            _exit(1);
        }
        if (p[1].revents) {
            /* Anything from the host, or its end: the watch is over. */
            _exit(0);
        }
        ssize_t n = read(in, buf, sizeof buf);
        if (n <= 0) continue;
        for (char *at = buf; at < buf + n;) {
            struct inotify_event *ev = (struct inotify_event *)at;
            at += sizeof *ev + ev->len;
            char kind = ev->mask & (IN_CREATE | IN_MOVED_TO)          ? 'c'
                        : ev->mask & (IN_MODIFY | IN_CLOSE_WRITE)     ? 'm'
                        : ev->mask & (IN_DELETE | IN_MOVED_FROM)      ? 'd'
                        : ev->mask & (IN_DELETE_SELF | IN_MOVE_SELF)  ? 's'
                                                                      : 0;
            if (!kind) continue;
            /* The library's own temp files (a write's new content before its rename) are not
               the sandbox's changes: the rename shows as the path created. */
            if (ev->len && strncmp(ev->name, ".osb-write-", 11) == 0) continue;
            const char *rel = recursive ? rel_of(ev->wd) : "";
            if (!rel) continue;
            /* A subdirectory's own end is seen from its parent (a 'd' there). */
            if (kind == 's' && ev->wd != top) continue;
            char name[PATH_MAX + NAME_MAX + 2];
            snprintf(name, sizeof name, "%s%s%s", rel, *rel && ev->len ? "/" : "",
                     ev->len ? ev->name : "");
            if (recursive && kind == 'c' && (ev->mask & IN_ISDIR)) watch_tree(in, path, name, mask, 1);
            int len = snprintf(record, sizeof record, "%c %s", kind, name);
            if (len >= (int)sizeof record) continue;
            if (write_all_fd(data, record, len + 1) < 0) _exit(0);
            if (kind == 's') _exit(0);
        }
    }
}

void serve_file(int channel, int data, char op, const char *path, const char *path2, uid_t uid,
                gid_t gid, mode_t mode) {
    /* The sandbox's user, with no supplementary groups: what it may do, this may do. */
    if (setgroups(0, NULL) < 0 && errno != EPERM) fail(channel, errno);
    if (setresgid(gid, gid, gid) < 0 || setresuid(uid, uid, uid) < 0) fail(channel, errno);
    umask(022);
    if (path[0] != '/') fail(channel, EINVAL);
    switch (op) {
    case 'r': read_file(channel, data, path); break;
    case 'w': write_file(channel, data, path, mode); break;
    case 's': stat_path(channel, path); break;
    case 'l': list_dir(channel, data, path); break;
    case 'm': make_dirs(channel, path); break;
    case 'x': remove_path(channel, path); break;
    case 'n': rename_path(channel, path, path2); break;
    case 'i': watch_path(channel, data, path, mode == 1); break;
    }
    fail(channel, EINVAL);
}
