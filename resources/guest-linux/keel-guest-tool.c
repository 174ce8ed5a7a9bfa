/*
 * keel-guest-tool: the few things the Linux guest's test mode (steps.sh) needs that busybox
 * cannot do. Built static by build.sh and installed as /usr/bin/keel-guest-tool.
 *
 *   keel-guest-tool discard DEV OFFSET LEN   BLKDISCARD of bytes [OFFSET, OFFSET+LEN) of DEV
 *   keel-guest-tool zeroout DEV OFFSET LEN   BLKZEROOUT of the same range
 *   keel-guest-tool rewrite DEV OFFSET LEN   reads the range with O_DIRECT and writes the same
 *                                            bytes back with O_DIRECT (a write attempt that
 *                                            leaves a writable disk unchanged)
 *   keel-guest-tool clock N                  N calls of clock_gettime(CLOCK_MONOTONIC)
 *
 * Success: exit 0; `clock` prints "reads=N total_ns=T ns_per_read=P" (P rounded to whole ns).
 * Failure: exit 1 with one line on stderr, "keel-guest-tool: <what>: <strerror> (errno N)",
 * or exit 2 with a usage line for bad arguments. Sizes are decimal or 0x-prefixed hex bytes.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/fs.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#define ALIGN 4096

static int usage(void)
{
    fprintf(stderr, "usage: keel-guest-tool discard|zeroout|rewrite DEV OFFSET LEN | clock N\n");
    return 2;
}

/* One line naming what failed and errno; returns the exit status 1. */
static int fail(const char *what, const char *dev)
{
    int err = errno;
    fprintf(stderr, "keel-guest-tool: %s %s: %s (errno %d)\n", what, dev, strerror(err), err);
    return 1;
}

/* Parses a non-negative decimal or 0x-hex number; returns 0 on success. */
static int parse_u64(const char *s, uint64_t *out)
{
    char *end = NULL;
    if (s == NULL || *s == '\0' || *s == '-')
        return -1;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno != 0 || end == s || *end != '\0')
        return -1;
    *out = v;
    return 0;
}

/* BLKDISCARD or BLKZEROOUT over [off, off+len). */
static int range_ioctl(unsigned long req, const char *name, const char *dev, uint64_t off,
                       uint64_t len)
{
    uint64_t range[2] = { off, len };
    int fd = open(dev, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return fail("open", dev);
    if (ioctl(fd, req, range) != 0) {
        int rc = fail(name, dev);
        close(fd);
        return rc;
    }
    if (close(fd) != 0)
        return fail("close", dev);
    return 0;
}

/* Reads [off, off+len) with O_DIRECT and writes it back in place with O_DIRECT. */
static int rewrite(const char *dev, uint64_t off, uint64_t len)
{
    void *buf = NULL;
    int rc = 0;
    if (len == 0 || len > (64u << 20) || len % 512 != 0 || off % 512 != 0) {
        fprintf(stderr, "keel-guest-tool: rewrite: OFFSET and LEN must be multiples of 512, "
                        "0 < LEN <= 64 MiB\n");
        return 2;
    }
    if (posix_memalign(&buf, ALIGN, len) != 0) {
        fprintf(stderr, "keel-guest-tool: out of memory for %" PRIu64 " bytes\n", len);
        return 1;
    }
    int fd = open(dev, O_RDWR | O_DIRECT | O_CLOEXEC);
    if (fd < 0) {
        /* A read-only disk may refuse the open itself: that is the write failing. */
        rc = fail("open for writing", dev);
        free(buf);
        return rc;
    }
    ssize_t n = pread(fd, buf, len, (off_t)off);
    if (n < 0) {
        rc = fail("pread", dev);
    } else if ((uint64_t)n != len) {
        fprintf(stderr, "keel-guest-tool: pread %s: short read (%zd of %" PRIu64 " bytes)\n",
                dev, n, len);
        rc = 1;
    } else {
        n = pwrite(fd, buf, len, (off_t)off);
        if (n < 0) {
            rc = fail("pwrite", dev);
        } else if ((uint64_t)n != len) {
            fprintf(stderr, "keel-guest-tool: pwrite %s: short write (%zd of %" PRIu64
                            " bytes)\n", dev, n, len);
            rc = 1;
        }
    }
    if (close(fd) != 0 && rc == 0)
        rc = fail("close", dev);
    free(buf);
    return rc;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* n reads of CLOCK_MONOTONIC through the vDSO (or the syscall it falls back to). */
static int clock_reads(uint64_t n)
{
    struct timespec ts;
    if (n == 0) {
        fprintf(stderr, "keel-guest-tool: clock: N must be at least 1\n");
        return 2;
    }
    uint64_t start = now_ns();
    for (uint64_t i = 0; i < n; i++) {
        if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
            return fail("clock_gettime", "CLOCK_MONOTONIC");
    }
    uint64_t total = now_ns() - start;
    printf("reads=%" PRIu64 " total_ns=%" PRIu64 " ns_per_read=%" PRIu64 "\n", n, total,
           (total + n / 2) / n);
    return fflush(stdout) == 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
    uint64_t off, len, n;
    if (argc == 3 && strcmp(argv[1], "clock") == 0) {
        if (parse_u64(argv[2], &n) != 0)
            return usage();
        return clock_reads(n);
    }
    if (argc != 5 || parse_u64(argv[3], &off) != 0 || parse_u64(argv[4], &len) != 0)
        return usage();
    if (strcmp(argv[1], "discard") == 0)
        return range_ioctl(BLKDISCARD, "BLKDISCARD", argv[2], off, len);
    if (strcmp(argv[1], "zeroout") == 0)
        return range_ioctl(BLKZEROOUT, "BLKZEROOUT", argv[2], off, len);
    if (strcmp(argv[1], "rewrite") == 0)
        return rewrite(argv[2], off, len);
    return usage();
}
