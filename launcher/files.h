/* The launcher's file helper (files.c): serves one file request in a forked process. */
#ifndef OSB_FILES_H
#define OSB_FILES_H
#include <sys/types.h>

/* Becomes uid/gid, does `op` on `path` (and `path2`), replies on `channel`, moves data over
   `data` (-1 when the op has none), and exits. Never returns. */
void serve_file(int channel, int data, char op, const char *path, const char *path2, uid_t uid,
                gid_t gid, mode_t mode) __attribute__((noreturn));

#endif
