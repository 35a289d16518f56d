/*
 * virtio-mmio transport, split virtqueue, virtio-blk and virtio-rng.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../rv_machine.h"
#include "rv_plic.h"
#include "rv_virtio.h"

#define VIRTIO_MMIO_MAGIC 0x74726976u /* "virt" */
#define VIRTIO_VENDOR_QEMU 0x554d4551u
#define VIRTIO_ID_BLOCK 2
#define VIRTIO_ID_RNG 4
#define QUEUE_MAX 256

#define F_VERSION_1 (1ull << 32)
#define F_BLK_FLUSH (1ull << 9)

#define STATUS_DRIVER_OK 4
#define STATUS_NEEDS_RESET 64

#define DESC_F_NEXT 1
#define DESC_F_WRITE 2

#define BLK_T_IN 0
#define BLK_T_OUT 1
#define BLK_T_FLUSH 4
#define BLK_T_GET_ID 8
#define BLK_S_OK 0
#define BLK_S_IOERR 1
#define BLK_S_UNSUPP 2

typedef struct vq {
    uint32_t num, ready;
    uint64_t desc, avail, used;
    uint16_t last_avail;
} vq;

struct rv_virtio {
    /* migrated */
    uint32_t status;
    uint32_t dev_features_sel, drv_features_sel, queue_sel;
    uint64_t drv_features;
    uint32_t isr;
    uint32_t q_num, q_ready;
    uint64_t q_desc, q_avail, q_used;
    uint16_t q_last_avail;
    /* host side */
    struct rv_machine *m;
    unsigned slot;
    uint32_t device_id;      /* 0: empty slot */
    int fd;
    uint64_t capacity;       /* 512-byte sectors */
    pthread_mutex_t lock;
};

static uint64_t device_features(const rv_virtio *v)
{
    switch (v->device_id) {
    case VIRTIO_ID_BLOCK: return F_VERSION_1 | F_BLK_FLUSH;
    case VIRTIO_ID_RNG: return F_VERSION_1;
    default: return 0;
    }
}

static void set_irq_locked(rv_virtio *v)
{
    rv_plic_set_irq(v->m->plic, RV_VIRTIO_IRQ + v->slot, v->isr != 0);
}

static void reset_locked(rv_virtio *v)
{
    v->status = 0;
    v->dev_features_sel = v->drv_features_sel = v->queue_sel = 0;
    v->drv_features = 0;
    v->isr = 0;
    v->q_num = v->q_ready = 0;
    v->q_desc = v->q_avail = v->q_used = 0;
    v->q_last_avail = 0;
    set_irq_locked(v);
}

/* Guest RAM for the device; NULL (the device then fails) outside RAM. */
static uint8_t *gpa(rv_virtio *v, uint64_t addr, uint64_t len, bool write)
{
    uint8_t *p = rv_phys_ptr(v->m, addr, len, write);
    if (p && write) {
        rv_ram_wrote(v->m, p, len);
    }
    return p;
}

struct desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags, next;
};

static bool read_desc(rv_virtio *v, uint16_t i, struct desc *d)
{
    if (i >= v->q_num) {
        return false;
    }
    uint8_t *p = gpa(v, v->q_desc + 16ull * i, 16, false);
    if (!p) {
        return false;
    }
    memcpy(d, p, 16);
    return true;
}

/* One request (descriptor chain at head); returns the bytes written to
 * the guest, or -1 when the chain is malformed. */
static long blk_request(rv_virtio *v, uint16_t head)
{
    struct desc d[QUEUE_MAX];
    unsigned n = 0;
    uint16_t i = head;
    for (;;) {
        if (n == QUEUE_MAX || !read_desc(v, i, &d[n])) {
            return -1;
        }
        if (!(d[n++].flags & DESC_F_NEXT)) {
            break;
        }
        i = d[n - 1].next;
    }
    if (n < 2 || d[0].len < 16 || (d[0].flags & DESC_F_WRITE) || d[n - 1].len < 1 ||
        !(d[n - 1].flags & DESC_F_WRITE)) {
        return -1;
    }
    uint8_t *hdr = gpa(v, d[0].addr, 16, false);
    uint8_t *status = gpa(v, d[n - 1].addr, 1, true);
    if (!hdr || !status) {
        return -1;
    }
    uint32_t type;
    uint64_t sector;
    memcpy(&type, hdr, 4);
    memcpy(&sector, hdr + 8, 8);
    uint8_t st = BLK_S_OK;
    long written = 1;
    uint64_t off = sector * 512;

    for (unsigned k = 1; k + 1 < n && st == BLK_S_OK; k++) {
        bool to_guest = d[k].flags & DESC_F_WRITE;
        uint8_t *buf = gpa(v, d[k].addr, d[k].len, to_guest);
        if (!buf) {
            st = BLK_S_IOERR;
            break;
        }
        switch (type) {
        case BLK_T_IN:
            if (!to_guest || off + d[k].len > v->capacity * 512 ||
                pread(v->fd, buf, d[k].len, (off_t)off) != (ssize_t)d[k].len) {
                st = BLK_S_IOERR;
            }
            written += d[k].len;
            break;
        case BLK_T_OUT:
            if (to_guest || off + d[k].len > v->capacity * 512 ||
                pwrite(v->fd, buf, d[k].len, (off_t)off) != (ssize_t)d[k].len) {
                st = BLK_S_IOERR;
            }
            break;
        case BLK_T_GET_ID: {
            char id[20] = "livemig-virtio-blk";
            uint32_t l = d[k].len < sizeof(id) ? d[k].len : sizeof(id);
            memcpy(buf, id, l);
            written += l;
            break;
        }
        default:
            break;
        }
        off += d[k].len;
    }
    if (type == BLK_T_FLUSH && st == BLK_S_OK && fdatasync(v->fd) < 0) {
        st = BLK_S_IOERR;
    } else if (type != BLK_T_IN && type != BLK_T_OUT && type != BLK_T_FLUSH && type != BLK_T_GET_ID) {
        st = BLK_S_UNSUPP;
    }
    *status = st;
    return written;
}

/* One entropy request: every descriptor of the chain is device-writable
 * and gets random bytes from the host (getrandom, as QEMU's default
 * rng-random backend reads /dev/urandom).  Returns the bytes written, or
 * -1 when the chain is malformed. */
static long rng_request(rv_virtio *v, uint16_t head)
{
    long written = 0;
    uint16_t i = head;
    for (unsigned n = 0;; n++) {
        struct desc d;
        if (n == QUEUE_MAX || !read_desc(v, i, &d) || !(d.flags & DESC_F_WRITE)) {
            return -1;
        }
        uint8_t *buf = gpa(v, d.addr, d.len, true);
        if (!buf) {
            return -1;
        }
        for (uint32_t got = 0; got < d.len;) {
            ssize_t r = getrandom(buf + got, d.len - got, 0);
            if (r < 0 && errno != EINTR) {
                return -1;
            }
            got += r > 0 ? (uint32_t)r : 0;
        }
        written += d.len;
        if (!(d.flags & DESC_F_NEXT)) {
            return written;
        }
        i = d.next;
    }
}

static void process_queue_locked(rv_virtio *v)
{
    if (!v->q_ready || !(v->status & STATUS_DRIVER_OK) || !v->q_num) {
        return;
    }
    uint8_t *avail = gpa(v, v->q_avail, 4 + 2ull * v->q_num, false);
    uint8_t *used = gpa(v, v->q_used, 4 + 8ull * v->q_num, true);
    if (!avail || !used) {
        v->status |= STATUS_NEEDS_RESET;
        return;
    }
    bool done = false;
    for (;;) {
        uint16_t avail_idx = __atomic_load_n((uint16_t *)(avail + 2), __ATOMIC_ACQUIRE);
        if (v->q_last_avail == avail_idx) {
            break;
        }
        uint16_t head;
        memcpy(&head, avail + 4 + 2 * (v->q_last_avail % v->q_num), 2);
        long len = v->device_id == VIRTIO_ID_RNG ? rng_request(v, head) : blk_request(v, head);
        if (len < 0) {
            v->status |= STATUS_NEEDS_RESET; /* a broken chain: stop, as the spec allows */
            break;
        }
        uint16_t used_idx;
        memcpy(&used_idx, used + 2, 2);
        uint32_t elem[2] = { head, (uint32_t)len };
        memcpy(used + 4 + 8 * (used_idx % v->q_num), elem, 8);
        __atomic_store_n((uint16_t *)(used + 2), (uint16_t)(used_idx + 1), __ATOMIC_RELEASE);
        v->q_last_avail++;
        done = true;
    }
    if (done) {
        v->isr |= 1;
        set_irq_locked(v);
    }
}

static uint64_t virtio_read(void *opaque, uint64_t off, unsigned size)
{
    rv_virtio *v = opaque;
    uint64_t r = 0;

    pthread_mutex_lock(&v->lock);
    if (off >= 0x100) {
        /* blk config: capacity (le64) first */
        uint8_t cfg[8];
        memcpy(cfg, &v->capacity, 8);
        uint64_t o = off - 0x100;
        if (v->device_id == VIRTIO_ID_BLOCK && o + size <= sizeof(cfg)) {
            memcpy(&r, cfg + o, size);
        }
        pthread_mutex_unlock(&v->lock);
        return r;
    }
    switch (off) {
    case 0x000: r = VIRTIO_MMIO_MAGIC; break;
    case 0x004: r = 2; break;
    case 0x008: r = v->device_id; break;
    case 0x00c: r = VIRTIO_VENDOR_QEMU; break;
    case 0x010:
        r = v->dev_features_sel < 2 ? (uint32_t)(device_features(v) >> (32 * v->dev_features_sel)) : 0;
        break;
    case 0x034: r = v->queue_sel == 0 && v->device_id ? QUEUE_MAX : 0; break;
    case 0x044: r = v->queue_sel == 0 ? v->q_ready : 0; break;
    case 0x060: r = v->isr; break;
    case 0x070: r = v->status; break;
    case 0x0fc: r = 0; break;
    default: break;
    }
    pthread_mutex_unlock(&v->lock);
    return r;
}

static void virtio_write(void *opaque, uint64_t off, unsigned size, uint64_t val)
{
    rv_virtio *v = opaque;
    uint32_t x = (uint32_t)val;

    if (!v->device_id) {
        return;
    }
    pthread_mutex_lock(&v->lock);
    bool q0 = v->queue_sel == 0;
    switch (off) {
    case 0x014: v->dev_features_sel = x; break;
    case 0x020:
        if (v->drv_features_sel < 2) {
            uint64_t mask = 0xffffffffull << (32 * v->drv_features_sel);
            v->drv_features = (v->drv_features & ~mask) |
                              (((uint64_t)x << (32 * v->drv_features_sel)) & device_features(v));
        }
        break;
    case 0x024: v->drv_features_sel = x; break;
    case 0x030: v->queue_sel = x; break;
    case 0x038: if (q0 && x <= QUEUE_MAX && x && !(x & (x - 1))) v->q_num = x; break;
    case 0x044: if (q0) v->q_ready = x & 1; break;
    case 0x050: if (x == 0) process_queue_locked(v); break;
    case 0x064:
        v->isr &= ~x;
        set_irq_locked(v);
        break;
    case 0x070:
        if (x == 0) {
            reset_locked(v);
        } else {
            v->status = x;
        }
        break;
    case 0x080: if (q0) v->q_desc = (v->q_desc & ~0xffffffffull) | x; break;
    case 0x084: if (q0) v->q_desc = (v->q_desc & 0xffffffffull) | ((uint64_t)x << 32); break;
    case 0x090: if (q0) v->q_avail = (v->q_avail & ~0xffffffffull) | x; break;
    case 0x094: if (q0) v->q_avail = (v->q_avail & 0xffffffffull) | ((uint64_t)x << 32); break;
    case 0x0a0: if (q0) v->q_used = (v->q_used & ~0xffffffffull) | x; break;
    case 0x0a4: if (q0) v->q_used = (v->q_used & 0xffffffffull) | ((uint64_t)x << 32); break;
    default: break;
    }
    pthread_mutex_unlock(&v->lock);
}

static int virtio_post_load(void *opaque, uint32_t version, lm_error *err)
{
    rv_virtio *v = opaque;
    if (v->q_num > QUEUE_MAX || (v->q_num & (v->q_num - 1)) || v->q_ready > 1) {
        return lm_error_set(err, -EINVAL, "virtio slot %u: bad queue size %u / ready %u", v->slot,
                            v->q_num, v->q_ready);
    }
    pthread_mutex_lock(&v->lock);
    set_irq_locked(v);
    pthread_mutex_unlock(&v->lock);
    return 0;
}

static const lm_field virtio_fields[] = {
    LM_FIELD_SCALAR(rv_virtio, status, LM_FIELD_U32),
    LM_FIELD_SCALAR(rv_virtio, dev_features_sel, LM_FIELD_U32),
    LM_FIELD_SCALAR(rv_virtio, drv_features_sel, LM_FIELD_U32),
    LM_FIELD_SCALAR(rv_virtio, queue_sel, LM_FIELD_U32),
    LM_FIELD_SCALAR(rv_virtio, drv_features, LM_FIELD_U64),
    LM_FIELD_SCALAR(rv_virtio, isr, LM_FIELD_U32),
    LM_FIELD_SCALAR(rv_virtio, q_num, LM_FIELD_U32),
    LM_FIELD_SCALAR(rv_virtio, q_ready, LM_FIELD_U32),
    LM_FIELD_SCALAR(rv_virtio, q_desc, LM_FIELD_U64),
    LM_FIELD_SCALAR(rv_virtio, q_avail, LM_FIELD_U64),
    LM_FIELD_SCALAR(rv_virtio, q_used, LM_FIELD_U64),
    LM_FIELD_SCALAR(rv_virtio, q_last_avail, LM_FIELD_U16),
};

static const lm_vmstate virtio_vmstate = {
    .name = "virtio-blk-mmio",
    .version = 1,
    .min_version = 1,
    .fields = virtio_fields,
    .nfields = sizeof(virtio_fields) / sizeof(virtio_fields[0]),
    .post_load = virtio_post_load,
};

/* virtio-rng: the same transport and queue, so the same fields. */
static const lm_vmstate virtio_rng_vmstate = {
    .name = "virtio-rng-mmio",
    .version = 1,
    .min_version = 1,
    .fields = virtio_fields,
    .nfields = sizeof(virtio_fields) / sizeof(virtio_fields[0]),
    .post_load = virtio_post_load,
};

static rv_virtio *alloc_slot(struct rv_machine *m, unsigned slot, lm_error *err)
{
    rv_virtio *v = calloc(1, sizeof(*v));
    if (!v) {
        lm_error_set(err, -ENOMEM, "out of memory");
        return NULL;
    }
    v->m = m;
    v->slot = slot;
    v->fd = -1;
    pthread_mutex_init(&v->lock, NULL);
    rv_machine_map(m, RV_VIRTIO_BASE + 0x1000ull * slot, 0x1000, virtio_read, virtio_write, v);
    return v;
}

int rv_virtio_empty_new(struct rv_machine *m, unsigned slot, rv_virtio **out, lm_error *err)
{
    *out = alloc_slot(m, slot, err);
    return *out ? 0 : -ENOMEM;
}

int rv_virtio_blk_new(struct rv_machine *m, unsigned slot, const char *spec, rv_virtio **out,
                      lm_error *err)
{
    if (strncmp(spec, "file=", 5) != 0 || !spec[5]) {
        return lm_error_set(err, -EINVAL, "--drive '%s': expected file=PATH", spec);
    }
    int fd = open(spec + 5, O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        return lm_error_set_errno(err, -errno, "cannot open drive '%s'", spec + 5);
    }
    struct stat st;
    if (fstat(fd, &st) < 0 || st.st_size < 512) {
        close(fd);
        return lm_error_set(err, -EINVAL, "drive '%s': not a disk image of at least 512 bytes",
                            spec + 5);
    }
    rv_virtio *v = alloc_slot(m, slot, err);
    if (!v) {
        close(fd);
        return -ENOMEM;
    }
    v->device_id = VIRTIO_ID_BLOCK;
    v->fd = fd;
    v->capacity = (uint64_t)st.st_size / 512;
    *out = v;
    return 0;
}

int rv_virtio_rng_new(struct rv_machine *m, unsigned slot, rv_virtio **out, lm_error *err)
{
    rv_virtio *v = alloc_slot(m, slot, err);
    if (!v) {
        return -ENOMEM;
    }
    v->device_id = VIRTIO_ID_RNG;
    *out = v;
    return 0;
}

int rv_virtio_register(rv_virtio *v, lm_engine *e, lm_error *err)
{
    switch (v->device_id) {
    case VIRTIO_ID_BLOCK:
        return lm_engine_add_device(e, "virtio-blk-mmio", v->slot, &virtio_vmstate, v, err);
    case VIRTIO_ID_RNG:
        return lm_engine_add_device(e, "virtio-rng-mmio", v->slot, &virtio_rng_vmstate, v, err);
    default:
        return 0;
    }
}

void rv_virtio_free(rv_virtio *v)
{
    if (!v) {
        return;
    }
    if (v->fd >= 0) {
        close(v->fd);
    }
    pthread_mutex_destroy(&v->lock);
    free(v);
}
