/*
 * Buffered migration channel over one file descriptor.
 *
 * Writes are buffered and flushed with vectored writes; bulk data (guest
 * pages) is written straight from the caller's memory together with the
 * buffered header bytes in one writev, without a copy.  Reads are exact:
 * a read either returns all bytes asked for or fails.  Every writer shares
 * the migration's rate limit.  The first error sticks: once a channel has
 * failed, every later call fails with the same code, and the message says
 * what went wrong first.
 */
#ifndef LM_CHANNEL_CHANNEL_H
#define LM_CHANNEL_CHANNEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "channel/ratelimit.h"
#include "livemig/error.h"

typedef struct lm_channel lm_channel;

/* Takes ownership of fd.  pid > 0: a child process (exec:) reaped on close. */
lm_channel *lm_channel_new(int fd, const char *name, lm_ratelimit *rl);
void lm_channel_set_child(lm_channel *ch, int pid);
/* The child's command line: a failed exit then reads "exec: 'CMD' exited
 * with status N" (close's error). */
void lm_channel_set_child_command(lm_channel *ch, const char *cmd);
/* Closes the fd, waits for a child.  Returns the child's failure, if any. */
int lm_channel_close(lm_channel *ch, lm_error *err);
int lm_channel_fd(const lm_channel *ch);
/* Change the rate limit writes are charged to (NULL: none); only the
 * channel's writer may call it.  Postcopy moves the main channel from
 * max-bandwidth to its own budget, and urgent pages bypass it. */
void lm_channel_set_ratelimit(lm_channel *ch, lm_ratelimit *rl);
const char *lm_channel_name(const lm_channel *ch);

/* Buffered writes: 0 or the sticky -errno. */
int lm_channel_put(lm_channel *ch, const void *p, size_t n);
int lm_channel_put_u8(lm_channel *ch, uint8_t v);
int lm_channel_put_be16(lm_channel *ch, uint16_t v);
int lm_channel_put_be32(lm_channel *ch, uint32_t v);
int lm_channel_put_be64(lm_channel *ch, uint64_t v);
/* Write buffered bytes, then ext[] straight from the caller's memory. */
int lm_channel_put_ext(lm_channel *ch, const struct iovec *ext, int n);
int lm_channel_flush(lm_channel *ch);
/* Buffered bytes and hdr[], then len bytes of file fd from off, sent by
 * the kernel from the page cache (sendfile): the pages are never touched
 * through this process's mappings, which is most of the cost of sending
 * them.  The kernel may hand the peer references to the pages rather than
 * copies (unix and loopback sockets), so a page written after this returns
 * may arrive with the new bytes: fine for migration, where such a write
 * dirties the page and it is sent again.  mem: the same bytes mapped, for
 * an fd that sendfile() refuses.  The calling thread keeps SIGPIPE blocked
 * from its first call on (sendfile has no MSG_NOSIGNAL); a SIGPIPE raised
 * by a dead peer is taken back, the call fails with EPIPE. */
int lm_channel_put_file(lm_channel *ch, const struct iovec *hdr, int nhdr, int fd, uint64_t off,
                        const void *mem, size_t len);
/* Buffered bytes and hdr[], then len bytes of this process's memory,
 * handed to the kernel by reference (vmsplice into a pipe, spliced into
 * the socket): like put_file, the pages are never read through this
 * process's mappings here (on this host the first such touch of a page
 * that has not been touched for a while costs ~2 µs, most of the cost of
 * sending it), and a page written after this returns may arrive with the
 * new bytes (the write dirties it; it is sent again).  Not a unix
 * socket (tcp was slower so, see channel.c), TLS, zero-copy-send, or a
 * kernel without vmsplice: written from memory as lm_channel_put_ext.
 * SIGPIPE as put_file. */
int lm_channel_put_mem(lm_channel *ch, const struct iovec *hdr, int nhdr, const void *mem, size_t len);
/* Whether lm_channel_put_mem would send len bytes by reference, and a
 * caller should hand them over so: a unix socket where put_mem may
 * (above), and at least LM_CHANNEL_BY_REFERENCE_MIN bytes.  Shorter runs
 * cost more by reference (a vmsplice and a splice each) than gathered
 * into the caller's writev with their headers; so does every run on a
 * channel that sends none by reference. */
#define LM_CHANNEL_BY_REFERENCE_MIN (64 * 1024)
bool lm_channel_mem_by_reference(const lm_channel *ch, size_t len);

/* Zero-copy sends (zero-copy-send; TCP only, see channel/zerocopy.h).
 * enable: SO_ZEROCOPY on the socket, or an error saying why not. */
int lm_channel_enable_zerocopy(lm_channel *ch, lm_error *err);
/* Buffered bytes go first, copied; then ext[] with MSG_ZEROCOPY: the
 * kernel may read ext's memory after this returns, until the next
 * lm_channel_zerocopy_flush().  Without enable, lm_channel_put_ext(). */
int lm_channel_put_ext_zerocopy(lm_channel *ch, const struct iovec *ext, int n);
/* Waits until the kernel let go of every zero-copy send (a shutdown wakes
 * it).  *missed: it copied every one that completed since the last flush. */
int lm_channel_zerocopy_flush(lm_channel *ch, bool *missed);
/* Zero-copy sends so far, and how many of them the kernel copied (any thread). */
void lm_channel_zerocopy_stats(const lm_channel *ch, uint64_t *sends, uint64_t *copied);

/* Exact reads: 0, or -EPIPE at end of stream, or the sticky -errno. */
int lm_channel_get(lm_channel *ch, void *p, size_t n);
/* Waits until a read would find data (or the end, or an error).  For a
 * thread that only reads a socket whose other direction another thread
 * writes in bulk (a return path): blocked in read() it shares the socket's
 * wait queue with the writer and wakes at every drained send buffer;
 * poll() asks for input only.  0, or the channel's sticky error. */
int lm_channel_wait_input(lm_channel *ch);
int lm_channel_get_u8(lm_channel *ch, uint8_t *v);
int lm_channel_get_be16(lm_channel *ch, uint16_t *v);
int lm_channel_get_be32(lm_channel *ch, uint32_t *v);
int lm_channel_get_be64(lm_channel *ch, uint64_t *v);
/* Read and throw away n bytes. */
int lm_channel_skip(lm_channel *ch, uint64_t n);

/* Sticky error: the first one set wins.  Returns the code. */
int lm_channel_set_error(lm_channel *ch, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* 0 or the sticky code; copies the message into err. */
int lm_channel_error(lm_channel *ch, lm_error *err);
/* Wake any thread blocked in I/O on this channel (cancel, peer death):
 * shuts a socket down, wakes a reader of a pipe, stops an exec: child; the
 * channel fails with code. */
void lm_channel_shutdown(lm_channel *ch, int code, const char *why);

/* TLS (channel/tls.h): from now on every read and write goes through the
 * session (the channel takes a reference); sendfile and zero-copy sends
 * fall back to, or are refused in favour of, plain writes through it. */
struct lm_tls_session;
void lm_channel_attach_tls(lm_channel *ch, struct lm_tls_session *t);
bool lm_channel_is_tls(const lm_channel *ch);
/* A second channel on the same connection (a dup of its descriptor) that
 * shares its TLS session: the return path.  One thread may read through
 * one while another writes through the other; never both the same way. */
int lm_channel_dup(lm_channel *ch, const char *name, lm_channel **out, lm_error *err);

/* Seekable files only (mapped-ram places guest pages at fixed offsets
 * around the stream).  tell: the file offset the next read or write
 * starts at, buffered bytes included.  seek: writes are flushed first,
 * buffered reads are dropped, and the stream goes on at `off`. */
int lm_channel_tell(lm_channel *ch, uint64_t *off);
int lm_channel_seek(lm_channel *ch, uint64_t off);

uint64_t lm_channel_bytes_written(const lm_channel *ch);
uint64_t lm_channel_bytes_read(const lm_channel *ch);
/* Bytes that arrived and no read has taken yet: in the socket's receive
 * or pipe (FIONREAD), in this channel's read buffer, and inside its TLS
 * session (records read off the socket, decrypted or not).  The reader's
 * thread only: what the destination tells the source it has still to load. */
uint64_t lm_channel_input_pending(lm_channel *ch);

#endif
