/*
 * BLAKE3 hash mode, written for vaultkeeper from the BLAKE3 specification (section 2: the
 * compression function, chunk chaining, the binary tree of chunk chaining values). Tested
 * against the `blake3` Python package on inputs of many lengths (tests/chain/test_cext.py).
 */
#include "blake3_portable.h"

#include <string.h>

#if VK_BLAKE3_LANES > 1
/* GCC/Clang vector extension: SSE2 on x86-64, NEON on arm64, plain code elsewhere */
typedef uint32_t u32x4 __attribute__((vector_size(16)));
#endif

enum {
    CHUNK_START = 1 << 0,
    CHUNK_END = 1 << 1,
    PARENT = 1 << 2,
    ROOT = 1 << 3,
};

static const uint32_t IV[8] = {
    0x6A09E667UL, 0xBB67AE85UL, 0x3C6EF372UL, 0xA54FF53AUL,
    0x510E527FUL, 0x9B05688CUL, 0x1F83D9ABUL, 0x5BE0CD19UL,
};

/* Row r: the order in which round r reads the message words, i.e. the specification's
   permutation (2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8) applied r times. */
static const uint8_t SCHEDULE[7][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8},
    {3, 4, 10, 12, 13, 2, 7, 14, 6, 5, 9, 0, 11, 15, 8, 1},
    {10, 7, 12, 9, 14, 3, 13, 15, 4, 0, 11, 2, 5, 8, 1, 6},
    {12, 13, 9, 11, 15, 10, 14, 8, 7, 2, 5, 3, 0, 1, 6, 4},
    {9, 14, 11, 5, 8, 12, 15, 1, 13, 3, 0, 10, 2, 6, 4, 7},
    {11, 15, 5, 0, 1, 9, 8, 6, 14, 10, 2, 12, 3, 4, 7, 13},
};

static inline uint32_t load32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}

static inline void store32(uint8_t *p, uint32_t w)
{
    p[0] = (uint8_t)w;
    p[1] = (uint8_t)(w >> 8);
    p[2] = (uint8_t)(w >> 16);
    p[3] = (uint8_t)(w >> 24);
}

/* rotate right; also applies element-wise to the vector type below */
#define ROTR(w, c) (((w) >> (c)) | ((w) << (32 - (c))))

#define G(a, b, c, d, x, y)                                                                    \
    do {                                                                                       \
        a = a + b + (x);                                                                       \
        d = ROTR(d ^ a, 16);                                                                 \
        c = c + d;                                                                             \
        b = ROTR(b ^ c, 12);                                                                 \
        a = a + b + (y);                                                                       \
        d = ROTR(d ^ a, 8);                                                                  \
        c = c + d;                                                                             \
        b = ROTR(b ^ c, 7);                                                                  \
    } while (0)

#define ROUND(r)                                                                               \
    do {                                                                                       \
        G(s0, s4, s8, s12, m[SCHEDULE[r][0]], m[SCHEDULE[r][1]]);                              \
        G(s1, s5, s9, s13, m[SCHEDULE[r][2]], m[SCHEDULE[r][3]]);                              \
        G(s2, s6, s10, s14, m[SCHEDULE[r][4]], m[SCHEDULE[r][5]]);                             \
        G(s3, s7, s11, s15, m[SCHEDULE[r][6]], m[SCHEDULE[r][7]]);                             \
        G(s0, s5, s10, s15, m[SCHEDULE[r][8]], m[SCHEDULE[r][9]]);                             \
        G(s1, s6, s11, s12, m[SCHEDULE[r][10]], m[SCHEDULE[r][11]]);                           \
        G(s2, s7, s8, s13, m[SCHEDULE[r][12]], m[SCHEDULE[r][13]]);                            \
        G(s3, s4, s9, s14, m[SCHEDULE[r][14]], m[SCHEDULE[r][15]]);                            \
    } while (0)

/* The compression function, keeping the first 8 output words: all that chaining values,
   parent nodes and a 32-byte root output use. Updates cv in place. */
static void compress(uint32_t cv[8], const uint8_t block[VK_BLAKE3_BLOCK_LEN], uint8_t block_len,
                     uint64_t counter, uint8_t flags)
{
    uint32_t m[16];
    for (int i = 0; i < 16; i++)
        m[i] = load32(block + 4 * i);
    uint32_t s0 = cv[0], s1 = cv[1], s2 = cv[2], s3 = cv[3];
    uint32_t s4 = cv[4], s5 = cv[5], s6 = cv[6], s7 = cv[7];
    uint32_t s8 = IV[0], s9 = IV[1], s10 = IV[2], s11 = IV[3];
    uint32_t s12 = (uint32_t)counter, s13 = (uint32_t)(counter >> 32);
    uint32_t s14 = block_len, s15 = flags;
    ROUND(0);
    ROUND(1);
    ROUND(2);
    ROUND(3);
    ROUND(4);
    ROUND(5);
    ROUND(6);
    cv[0] = s0 ^ s8;
    cv[1] = s1 ^ s9;
    cv[2] = s2 ^ s10;
    cv[3] = s3 ^ s11;
    cv[4] = s4 ^ s12;
    cv[5] = s5 ^ s13;
    cv[6] = s6 ^ s14;
    cv[7] = s7 ^ s15;
}

#if VK_BLAKE3_LANES > 1
/* compress() on four independent blocks at once, one per vector lane */
static void compress4(u32x4 cv[8], const uint8_t *const block[4], u32x4 block_len, u32x4 flags)
{
    u32x4 m[16];
    for (int i = 0; i < 16; i++)
        m[i] = (u32x4){load32(block[0] + 4 * i), load32(block[1] + 4 * i),
                       load32(block[2] + 4 * i), load32(block[3] + 4 * i)};
    u32x4 s0 = cv[0], s1 = cv[1], s2 = cv[2], s3 = cv[3];
    u32x4 s4 = cv[4], s5 = cv[5], s6 = cv[6], s7 = cv[7];
    u32x4 s8 = {IV[0], IV[0], IV[0], IV[0]}, s9 = {IV[1], IV[1], IV[1], IV[1]};
    u32x4 s10 = {IV[2], IV[2], IV[2], IV[2]}, s11 = {IV[3], IV[3], IV[3], IV[3]};
    u32x4 s12 = {0, 0, 0, 0}, s13 = {0, 0, 0, 0}, s14 = block_len, s15 = flags;
    ROUND(0);
    ROUND(1);
    ROUND(2);
    ROUND(3);
    ROUND(4);
    ROUND(5);
    ROUND(6);
    cv[0] = s0 ^ s8;
    cv[1] = s1 ^ s9;
    cv[2] = s2 ^ s10;
    cv[3] = s3 ^ s11;
    cv[4] = s4 ^ s12;
    cv[5] = s5 ^ s13;
    cv[6] = s6 ^ s14;
    cv[7] = s7 ^ s15;
}

static const uint8_t ZERO_BLOCK[VK_BLAKE3_BLOCK_LEN];

/* Up to four inputs (lanes past n are idle); each lane's cv stops changing after its last
   block, so inputs of different lengths share the loop. */
static void hash_chunks4(const vk_blake3_chunk_input *in, size_t n,
                         uint8_t out[][VK_BLAKE3_OUT_LEN])
{
    u32x4 cv[8];
    unsigned most = 0;
    for (int i = 0; i < 8; i++)
        cv[i] = (u32x4){IV[i], IV[i], IV[i], IV[i]};
    for (size_t l = 0; l < n; l++)
        if (in[l].nblocks > most)
            most = in[l].nblocks;
    for (unsigned k = 0; k < most; k++) {
        const uint8_t *block[4];
        uint32_t len[4], flags[4], keep[4];
        for (size_t l = 0; l < 4; l++) {
            unsigned nb = l < n ? in[l].nblocks : 0;
            if (k < nb) {
                block[l] = in[l].blocks[k];
                len[l] = k + 1 == nb ? in[l].last_len : VK_BLAKE3_BLOCK_LEN;
                flags[l] = (k == 0 ? CHUNK_START : 0) | (k + 1 == nb ? CHUNK_END | ROOT : 0);
                keep[l] = 0;
            }
            else {
                block[l] = ZERO_BLOCK;
                len[l] = flags[l] = 0;
                keep[l] = 0xFFFFFFFFu;
            }
        }
        u32x4 next[8];
        memcpy(next, cv, sizeof next);
        compress4(next, block, (u32x4){len[0], len[1], len[2], len[3]},
                  (u32x4){flags[0], flags[1], flags[2], flags[3]});
        u32x4 mask = {keep[0], keep[1], keep[2], keep[3]};
        for (int i = 0; i < 8; i++)
            cv[i] = (cv[i] & mask) | (next[i] & ~mask);
    }
    for (size_t l = 0; l < n; l++)
        for (int i = 0; i < 8; i++)
            store32(out[l] + 4 * i, cv[i][l]);
}
#endif

static void hash_chunk(const vk_blake3_chunk_input *in, uint8_t out[VK_BLAKE3_OUT_LEN])
{
    uint32_t cv[8];
    memcpy(cv, IV, sizeof cv);
    for (unsigned k = 0; k < in->nblocks; k++) {
        int last = k + 1 == in->nblocks;
        compress(cv, in->blocks[k], (uint8_t)(last ? in->last_len : VK_BLAKE3_BLOCK_LEN), 0,
                 (uint8_t)((k == 0 ? CHUNK_START : 0) | (last ? CHUNK_END | ROOT : 0)));
    }
    for (int i = 0; i < 8; i++)
        store32(out + 4 * i, cv[i]);
}

void vk_blake3_hash_chunks(const vk_blake3_chunk_input *in, size_t n,
                           uint8_t out[][VK_BLAKE3_OUT_LEN])
{
#if VK_BLAKE3_LANES > 1
    size_t i = 0;
    while (n - i >= 2) {
        size_t lanes = n - i < 4 ? n - i : 4;
        hash_chunks4(in + i, lanes, out + i);
        i += lanes;
    }
    if (i < n)
        hash_chunk(in + i, out[i]);
#else
    for (size_t i = 0; i < n; i++)
        hash_chunk(in + i, out[i]);
#endif
}

/* A node whose compression is still to be done: a chunk's last block or a parent block. */
typedef struct {
    uint32_t cv[8];
    uint8_t block[VK_BLAKE3_BLOCK_LEN];
    uint8_t block_len;
    uint8_t flags;
    uint64_t counter;
} output_t;

static void output_chaining_value(const output_t *o, uint32_t cv[8])
{
    memcpy(cv, o->cv, sizeof o->cv);
    compress(cv, o->block, o->block_len, o->counter, o->flags);
}

static void output_root_hash(const output_t *o, uint8_t out[VK_BLAKE3_OUT_LEN])
{
    uint32_t cv[8];
    memcpy(cv, o->cv, sizeof cv);
    /* the root's counter is the output block index; the first 64 output bytes are block 0 */
    compress(cv, o->block, o->block_len, 0, (uint8_t)(o->flags | ROOT));
    for (int i = 0; i < 8; i++)
        store32(out + 4 * i, cv[i]);
}

static void parent_output(output_t *o, const uint32_t left[8], const uint32_t right[8])
{
    memcpy(o->cv, IV, sizeof o->cv);
    for (int i = 0; i < 8; i++) {
        store32(o->block + 4 * i, left[i]);
        store32(o->block + 32 + 4 * i, right[i]);
    }
    o->block_len = VK_BLAKE3_BLOCK_LEN;
    o->flags = PARENT;
    o->counter = 0;
}

static void chunk_init(vk_blake3_chunk_state *cs, uint64_t counter)
{
    memcpy(cs->cv, IV, sizeof cs->cv);
    cs->chunk_counter = counter;
    cs->block_len = 0;
    cs->blocks_compressed = 0;
}

static size_t chunk_len(const vk_blake3_chunk_state *cs)
{
    return (size_t)VK_BLAKE3_BLOCK_LEN * cs->blocks_compressed + cs->block_len;
}

static uint8_t chunk_start_flag(const vk_blake3_chunk_state *cs)
{
    return cs->blocks_compressed == 0 ? CHUNK_START : 0;
}

/* Adds input_len <= CHUNK_LEN - chunk_len bytes. A full block is compressed only once more
   input follows it: the chunk's last block must be compressed with CHUNK_END. */
static void chunk_update(vk_blake3_chunk_state *cs, const uint8_t *input, size_t input_len)
{
    if (cs->block_len > 0) {
        size_t take = VK_BLAKE3_BLOCK_LEN - (size_t)cs->block_len;
        if (take > input_len)
            take = input_len;
        memcpy(cs->block + cs->block_len, input, take);
        cs->block_len = (uint8_t)(cs->block_len + take);
        input += take;
        input_len -= take;
        if (input_len == 0)
            return;
        compress(cs->cv, cs->block, VK_BLAKE3_BLOCK_LEN, cs->chunk_counter,
                 chunk_start_flag(cs));
        cs->blocks_compressed++;
        cs->block_len = 0;
    }
    while (input_len > VK_BLAKE3_BLOCK_LEN) {
        compress(cs->cv, input, VK_BLAKE3_BLOCK_LEN, cs->chunk_counter, chunk_start_flag(cs));
        cs->blocks_compressed++;
        input += VK_BLAKE3_BLOCK_LEN;
        input_len -= VK_BLAKE3_BLOCK_LEN;
    }
    memcpy(cs->block, input, input_len);
    cs->block_len = (uint8_t)input_len;
}

static void chunk_output(const vk_blake3_chunk_state *cs, output_t *o)
{
    memcpy(o->cv, cs->cv, sizeof o->cv);
    memcpy(o->block, cs->block, cs->block_len);
    memset(o->block + cs->block_len, 0, VK_BLAKE3_BLOCK_LEN - (size_t)cs->block_len);
    o->block_len = cs->block_len;
    o->flags = (uint8_t)(chunk_start_flag(cs) | CHUNK_END);
    o->counter = cs->chunk_counter;
}

/* Pushes the chaining value of a completed chunk, first merging every complete subtree it
   closes: after total_chunks chunks, one stack entry per 1 bit of total_chunks remains. */
static void push_chunk_cv(vk_blake3_hasher *self, uint32_t cv[8], uint64_t total_chunks)
{
    output_t parent;
    while ((total_chunks & 1) == 0) {
        self->cv_stack_len--;
        parent_output(&parent, self->cv_stack[self->cv_stack_len], cv);
        output_chaining_value(&parent, cv);
        total_chunks >>= 1;
    }
    memcpy(self->cv_stack[self->cv_stack_len], cv, 8 * sizeof(uint32_t));
    self->cv_stack_len++;
}

void vk_blake3_init(vk_blake3_hasher *self)
{
    chunk_init(&self->chunk, 0);
    self->cv_stack_len = 0;
}

void vk_blake3_update(vk_blake3_hasher *self, const void *input, size_t input_len)
{
    const uint8_t *in = (const uint8_t *)input;
    while (input_len > 0) {
        /* a full chunk is closed only when more input arrives: the last chunk may be the root */
        if (chunk_len(&self->chunk) == VK_BLAKE3_CHUNK_LEN) {
            output_t o;
            uint32_t cv[8];
            uint64_t total_chunks = self->chunk.chunk_counter + 1;
            chunk_output(&self->chunk, &o);
            output_chaining_value(&o, cv);
            push_chunk_cv(self, cv, total_chunks);
            chunk_init(&self->chunk, total_chunks);
        }
        size_t take = VK_BLAKE3_CHUNK_LEN - chunk_len(&self->chunk);
        if (take > input_len)
            take = input_len;
        chunk_update(&self->chunk, in, take);
        in += take;
        input_len -= take;
    }
}

void vk_blake3_finalize(const vk_blake3_hasher *self, uint8_t out[VK_BLAKE3_OUT_LEN])
{
    output_t o;
    uint32_t cv[8];
    chunk_output(&self->chunk, &o);
    for (size_t i = self->cv_stack_len; i > 0; i--) {
        output_chaining_value(&o, cv);
        parent_output(&o, self->cv_stack[i - 1], cv);
    }
    output_root_hash(&o, out);
}

void vk_blake3(const void *input, size_t input_len, uint8_t out[VK_BLAKE3_OUT_LEN])
{
    vk_blake3_hasher h;
    vk_blake3_init(&h);
    vk_blake3_update(&h, input, input_len);
    vk_blake3_finalize(&h, out);
}
