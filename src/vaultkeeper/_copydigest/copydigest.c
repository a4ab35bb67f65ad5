/*
 * vaultkeeper._copydigest: the md5sum64-v1 row digest computed from COPY text, in C.
 *
 * The digest (vaultkeeper/archive/digest.py) is defined on the server as the sum, modulo 2**64,
 * of the first 64 bits of md5(ROW(c1, ..., cn)::text) over all rows. COPY's text format carries
 * the same output-function text as ROW()::text, escaped differently, so the digest can be
 * recomputed from the COPY stream: undo COPY's escaping, redo record_out's quoting, hash, add.
 * vaultkeeper/archive/copytext.py states the rules and holds the reference implementation in
 * Python; this file does exactly the same, ~50x faster, with the GIL released.
 *
 * Two types:
 *   CopyDigest()             feed(buf) any split of one COPY text stream; finish() -> (rows, sum)
 *   DumpScanner(int_size, digest=True)
 *                            feed(buf) the data section of a pg_dump custom-format archive
 *                            (everything after the table of contents) and get, per dump id of
 *                            each table data block, (rows, sum); large-object blocks are skipped.
 *                            offsets() gives where each block begins (digest=False: only that).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

/* Bumped whenever the types' methods or results change; copytext.py ignores a stale build. */
#define API_VERSION 2

/* ------------------------------------------------------------------------------------------
 * MD5 (RFC 1321), only what the digest needs: one whole message in, the first 8 bytes out.
 */

#define F(x, y, z) ((z) ^ ((x) & ((y) ^ (z))))
#define G(x, y, z) ((y) ^ ((z) & ((x) ^ (y))))
#define H(x, y, z) ((x) ^ (y) ^ (z))
#define I(x, y, z) ((y) ^ ((x) | ~(z)))
#define ROTL(x, c) (((x) << (c)) | ((x) >> (32 - (c))))
#define STEP(f, a, b, c, d, x, k, r) (a) = (b) + ROTL((a) + f((b), (c), (d)) + (x) + (k), (r))

static void md5_block(uint32_t h[4], const uint8_t *p)
{
    uint32_t m[16];
    for (int i = 0; i < 16; i++)
        m[i] = (uint32_t)p[4 * i] | (uint32_t)p[4 * i + 1] << 8 | (uint32_t)p[4 * i + 2] << 16 |
               (uint32_t)p[4 * i + 3] << 24;
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3];
    STEP(F, a, b, c, d, m[0], 0xd76aa478, 7);
    STEP(F, d, a, b, c, m[1], 0xe8c7b756, 12);
    STEP(F, c, d, a, b, m[2], 0x242070db, 17);
    STEP(F, b, c, d, a, m[3], 0xc1bdceee, 22);
    STEP(F, a, b, c, d, m[4], 0xf57c0faf, 7);
    STEP(F, d, a, b, c, m[5], 0x4787c62a, 12);
    STEP(F, c, d, a, b, m[6], 0xa8304613, 17);
    STEP(F, b, c, d, a, m[7], 0xfd469501, 22);
    STEP(F, a, b, c, d, m[8], 0x698098d8, 7);
    STEP(F, d, a, b, c, m[9], 0x8b44f7af, 12);
    STEP(F, c, d, a, b, m[10], 0xffff5bb1, 17);
    STEP(F, b, c, d, a, m[11], 0x895cd7be, 22);
    STEP(F, a, b, c, d, m[12], 0x6b901122, 7);
    STEP(F, d, a, b, c, m[13], 0xfd987193, 12);
    STEP(F, c, d, a, b, m[14], 0xa679438e, 17);
    STEP(F, b, c, d, a, m[15], 0x49b40821, 22);
    STEP(G, a, b, c, d, m[1], 0xf61e2562, 5);
    STEP(G, d, a, b, c, m[6], 0xc040b340, 9);
    STEP(G, c, d, a, b, m[11], 0x265e5a51, 14);
    STEP(G, b, c, d, a, m[0], 0xe9b6c7aa, 20);
    STEP(G, a, b, c, d, m[5], 0xd62f105d, 5);
    STEP(G, d, a, b, c, m[10], 0x02441453, 9);
    STEP(G, c, d, a, b, m[15], 0xd8a1e681, 14);
    STEP(G, b, c, d, a, m[4], 0xe7d3fbc8, 20);
    STEP(G, a, b, c, d, m[9], 0x21e1cde6, 5);
    STEP(G, d, a, b, c, m[14], 0xc33707d6, 9);
    STEP(G, c, d, a, b, m[3], 0xf4d50d87, 14);
    STEP(G, b, c, d, a, m[8], 0x455a14ed, 20);
    STEP(G, a, b, c, d, m[13], 0xa9e3e905, 5);
    STEP(G, d, a, b, c, m[2], 0xfcefa3f8, 9);
    STEP(G, c, d, a, b, m[7], 0x676f02d9, 14);
    STEP(G, b, c, d, a, m[12], 0x8d2a4c8a, 20);
    STEP(H, a, b, c, d, m[5], 0xfffa3942, 4);
    STEP(H, d, a, b, c, m[8], 0x8771f681, 11);
    STEP(H, c, d, a, b, m[11], 0x6d9d6122, 16);
    STEP(H, b, c, d, a, m[14], 0xfde5380c, 23);
    STEP(H, a, b, c, d, m[1], 0xa4beea44, 4);
    STEP(H, d, a, b, c, m[4], 0x4bdecfa9, 11);
    STEP(H, c, d, a, b, m[7], 0xf6bb4b60, 16);
    STEP(H, b, c, d, a, m[10], 0xbebfbc70, 23);
    STEP(H, a, b, c, d, m[13], 0x289b7ec6, 4);
    STEP(H, d, a, b, c, m[0], 0xeaa127fa, 11);
    STEP(H, c, d, a, b, m[3], 0xd4ef3085, 16);
    STEP(H, b, c, d, a, m[6], 0x04881d05, 23);
    STEP(H, a, b, c, d, m[9], 0xd9d4d039, 4);
    STEP(H, d, a, b, c, m[12], 0xe6db99e5, 11);
    STEP(H, c, d, a, b, m[15], 0x1fa27cf8, 16);
    STEP(H, b, c, d, a, m[2], 0xc4ac5665, 23);
    STEP(I, a, b, c, d, m[0], 0xf4292244, 6);
    STEP(I, d, a, b, c, m[7], 0x432aff97, 10);
    STEP(I, c, d, a, b, m[14], 0xab9423a7, 15);
    STEP(I, b, c, d, a, m[5], 0xfc93a039, 21);
    STEP(I, a, b, c, d, m[12], 0x655b59c3, 6);
    STEP(I, d, a, b, c, m[3], 0x8f0ccc92, 10);
    STEP(I, c, d, a, b, m[10], 0xffeff47d, 15);
    STEP(I, b, c, d, a, m[1], 0x85845dd1, 21);
    STEP(I, a, b, c, d, m[8], 0x6fa87e4f, 6);
    STEP(I, d, a, b, c, m[15], 0xfe2ce6e0, 10);
    STEP(I, c, d, a, b, m[6], 0xa3014314, 15);
    STEP(I, b, c, d, a, m[13], 0x4e0811a1, 21);
    STEP(I, a, b, c, d, m[4], 0xf7537e82, 6);
    STEP(I, d, a, b, c, m[11], 0xbd3af235, 10);
    STEP(I, c, d, a, b, m[2], 0x2ad7d2bb, 15);
    STEP(I, b, c, d, a, m[9], 0xeb86d391, 21);
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
}

/* MD5 padding appended in place: 0x80, zeros, the bit length (64-bit LE); the buffer must have
 * room for len + 72 bytes. Returns the number of 64-byte blocks. */
static size_t md5_pad(uint8_t *msg, size_t len)
{
    size_t blocks = (len + 8) / 64 + 1;
    size_t padded = blocks * 64;
    msg[len] = 0x80;
    memset(msg + len + 1, 0, padded - len - 9);
    uint64_t bits = (uint64_t)len * 8;
    for (int i = 0; i < 8; i++)
        msg[padded - 8 + i] = (uint8_t)(bits >> (8 * i));
    return blocks;
}

static uint32_t bswap32(uint32_t x)
{
    return (x >> 24) | ((x >> 8) & 0xff00) | ((x << 8) & 0xff0000) | (x << 24);
}

/* The first 64 bits of the MD5 of a padded message, read big-endian (as the server's
 * bit(64)::int8 reads the hex digest). */
static uint64_t md5_head64_padded(const uint8_t *msg, size_t blocks)
{
    uint32_t h[4] = {0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476};
    for (size_t i = 0; i < blocks; i++)
        md5_block(h, msg + 64 * i);
    return (uint64_t)bswap32(h[0]) << 32 | bswap32(h[1]);
}

#define LANES 8

#if defined(__SSE2__)
#include <emmintrin.h>

#define VF(x, y, z) _mm_xor_si128((z), _mm_and_si128((x), _mm_xor_si128((y), (z))))
#define VG(x, y, z) _mm_xor_si128((y), _mm_and_si128((z), _mm_xor_si128((x), (y))))
#define VH(x, y, z) _mm_xor_si128(_mm_xor_si128((x), (y)), (z))
#define VI(x, y, z) _mm_xor_si128((y), _mm_or_si128((x), _mm_xor_si128((z), ones)))
#define VROTL(x, c) _mm_or_si128(_mm_slli_epi32((x), (c)), _mm_srli_epi32((x), 32 - (c)))
#define VSTEP(f, a, b, c, d, x, k, r)                                                           \
    (a) = _mm_add_epi32(                                                                        \
        (b), VROTL(_mm_add_epi32(_mm_add_epi32((a), f((b), (c), (d))),                           \
                                 _mm_add_epi32((x), _mm_set1_epi32((int)(k)))),                  \
                   (r)))

static const uint8_t zero_block[64];

/* Load block j of four messages (zero_block where a message is shorter) and transpose, so
 * m[i] holds word i of each message, one per lane; live[l] is -1 where message l has block j. */
static void load4(uint8_t *const msg[4], const size_t blocks[4], size_t j, __m128i m[16],
                  int live[4])
{
    const uint8_t *p[4];
    for (int l = 0; l < 4; l++) {
        live[l] = j < blocks[l] ? -1 : 0;
        p[l] = live[l] ? msg[l] + 64 * j : zero_block;
    }
    for (int q = 0; q < 4; q++) {
        __m128i r0 = _mm_loadu_si128((const __m128i *)(p[0] + 16 * q));
        __m128i r1 = _mm_loadu_si128((const __m128i *)(p[1] + 16 * q));
        __m128i r2 = _mm_loadu_si128((const __m128i *)(p[2] + 16 * q));
        __m128i r3 = _mm_loadu_si128((const __m128i *)(p[3] + 16 * q));
        __m128i t0 = _mm_unpacklo_epi32(r0, r1), t1 = _mm_unpacklo_epi32(r2, r3);
        __m128i t2 = _mm_unpackhi_epi32(r0, r1), t3 = _mm_unpackhi_epi32(r2, r3);
        m[4 * q] = _mm_unpacklo_epi64(t0, t1);
        m[4 * q + 1] = _mm_unpackhi_epi64(t0, t1);
        m[4 * q + 2] = _mm_unpacklo_epi64(t2, t3);
        m[4 * q + 3] = _mm_unpackhi_epi64(t2, t3);
    }
}

/* x = keep ? x + x0 : x0, lane by lane */
#define VFOLD(keep, x, x0)                                                                      \
    (x) = _mm_or_si128(_mm_and_si128((keep), _mm_add_epi32((x), (x0))),                         \
                       _mm_andnot_si128((keep), (x0)))

static void add_heads(__m128i a, __m128i b, uint64_t *sum)
{
    uint32_t ha[4], hb[4];
    _mm_storeu_si128((__m128i *)ha, a);
    _mm_storeu_si128((__m128i *)hb, b);
    for (int l = 0; l < 4; l++)
        *sum += (uint64_t)bswap32(ha[l]) << 32 | bswap32(hb[l]);
}

/* Eight padded messages at once: two groups of four 32-bit lanes whose step chains are
 * interleaved (MD5 is bound by the latency of its serial chain; two independent chains fill
 * the pipeline). Adds the eight head64 values to *sum. */
static void md5x8_sum(uint8_t *const msg[LANES], const size_t blocks[LANES], uint64_t *sum)
{
    const __m128i ones = _mm_set1_epi32(-1);
    __m128i a0 = _mm_set1_epi32(0x67452301), b0 = _mm_set1_epi32((int)0xefcdab89),
            c0 = _mm_set1_epi32((int)0x98badcfe), d0 = _mm_set1_epi32(0x10325476);
    __m128i a1 = a0, b1 = b0, c1 = c0, d1 = d0;
    size_t most = 0;
    for (int l = 0; l < LANES; l++)
        most = blocks[l] > most ? blocks[l] : most;
    for (size_t j = 0; j < most; j++) {
        __m128i m0[16], m1[16];
        int live0[4], live1[4];
        load4(msg, blocks, j, m0, live0);
        load4(msg + 4, blocks + 4, j, m1, live1);
        __m128i sa0 = a0, sb0 = b0, sc0 = c0, sd0 = d0;
        __m128i sa1 = a1, sb1 = b1, sc1 = c1, sd1 = d1;
        VSTEP(VF, a0, b0, c0, d0, m0[0], 0xd76aa478, 7);
        VSTEP(VF, a1, b1, c1, d1, m1[0], 0xd76aa478, 7);
        VSTEP(VF, d0, a0, b0, c0, m0[1], 0xe8c7b756, 12);
        VSTEP(VF, d1, a1, b1, c1, m1[1], 0xe8c7b756, 12);
        VSTEP(VF, c0, d0, a0, b0, m0[2], 0x242070db, 17);
        VSTEP(VF, c1, d1, a1, b1, m1[2], 0x242070db, 17);
        VSTEP(VF, b0, c0, d0, a0, m0[3], 0xc1bdceee, 22);
        VSTEP(VF, b1, c1, d1, a1, m1[3], 0xc1bdceee, 22);
        VSTEP(VF, a0, b0, c0, d0, m0[4], 0xf57c0faf, 7);
        VSTEP(VF, a1, b1, c1, d1, m1[4], 0xf57c0faf, 7);
        VSTEP(VF, d0, a0, b0, c0, m0[5], 0x4787c62a, 12);
        VSTEP(VF, d1, a1, b1, c1, m1[5], 0x4787c62a, 12);
        VSTEP(VF, c0, d0, a0, b0, m0[6], 0xa8304613, 17);
        VSTEP(VF, c1, d1, a1, b1, m1[6], 0xa8304613, 17);
        VSTEP(VF, b0, c0, d0, a0, m0[7], 0xfd469501, 22);
        VSTEP(VF, b1, c1, d1, a1, m1[7], 0xfd469501, 22);
        VSTEP(VF, a0, b0, c0, d0, m0[8], 0x698098d8, 7);
        VSTEP(VF, a1, b1, c1, d1, m1[8], 0x698098d8, 7);
        VSTEP(VF, d0, a0, b0, c0, m0[9], 0x8b44f7af, 12);
        VSTEP(VF, d1, a1, b1, c1, m1[9], 0x8b44f7af, 12);
        VSTEP(VF, c0, d0, a0, b0, m0[10], 0xffff5bb1, 17);
        VSTEP(VF, c1, d1, a1, b1, m1[10], 0xffff5bb1, 17);
        VSTEP(VF, b0, c0, d0, a0, m0[11], 0x895cd7be, 22);
        VSTEP(VF, b1, c1, d1, a1, m1[11], 0x895cd7be, 22);
        VSTEP(VF, a0, b0, c0, d0, m0[12], 0x6b901122, 7);
        VSTEP(VF, a1, b1, c1, d1, m1[12], 0x6b901122, 7);
        VSTEP(VF, d0, a0, b0, c0, m0[13], 0xfd987193, 12);
        VSTEP(VF, d1, a1, b1, c1, m1[13], 0xfd987193, 12);
        VSTEP(VF, c0, d0, a0, b0, m0[14], 0xa679438e, 17);
        VSTEP(VF, c1, d1, a1, b1, m1[14], 0xa679438e, 17);
        VSTEP(VF, b0, c0, d0, a0, m0[15], 0x49b40821, 22);
        VSTEP(VF, b1, c1, d1, a1, m1[15], 0x49b40821, 22);
        VSTEP(VG, a0, b0, c0, d0, m0[1], 0xf61e2562, 5);
        VSTEP(VG, a1, b1, c1, d1, m1[1], 0xf61e2562, 5);
        VSTEP(VG, d0, a0, b0, c0, m0[6], 0xc040b340, 9);
        VSTEP(VG, d1, a1, b1, c1, m1[6], 0xc040b340, 9);
        VSTEP(VG, c0, d0, a0, b0, m0[11], 0x265e5a51, 14);
        VSTEP(VG, c1, d1, a1, b1, m1[11], 0x265e5a51, 14);
        VSTEP(VG, b0, c0, d0, a0, m0[0], 0xe9b6c7aa, 20);
        VSTEP(VG, b1, c1, d1, a1, m1[0], 0xe9b6c7aa, 20);
        VSTEP(VG, a0, b0, c0, d0, m0[5], 0xd62f105d, 5);
        VSTEP(VG, a1, b1, c1, d1, m1[5], 0xd62f105d, 5);
        VSTEP(VG, d0, a0, b0, c0, m0[10], 0x02441453, 9);
        VSTEP(VG, d1, a1, b1, c1, m1[10], 0x02441453, 9);
        VSTEP(VG, c0, d0, a0, b0, m0[15], 0xd8a1e681, 14);
        VSTEP(VG, c1, d1, a1, b1, m1[15], 0xd8a1e681, 14);
        VSTEP(VG, b0, c0, d0, a0, m0[4], 0xe7d3fbc8, 20);
        VSTEP(VG, b1, c1, d1, a1, m1[4], 0xe7d3fbc8, 20);
        VSTEP(VG, a0, b0, c0, d0, m0[9], 0x21e1cde6, 5);
        VSTEP(VG, a1, b1, c1, d1, m1[9], 0x21e1cde6, 5);
        VSTEP(VG, d0, a0, b0, c0, m0[14], 0xc33707d6, 9);
        VSTEP(VG, d1, a1, b1, c1, m1[14], 0xc33707d6, 9);
        VSTEP(VG, c0, d0, a0, b0, m0[3], 0xf4d50d87, 14);
        VSTEP(VG, c1, d1, a1, b1, m1[3], 0xf4d50d87, 14);
        VSTEP(VG, b0, c0, d0, a0, m0[8], 0x455a14ed, 20);
        VSTEP(VG, b1, c1, d1, a1, m1[8], 0x455a14ed, 20);
        VSTEP(VG, a0, b0, c0, d0, m0[13], 0xa9e3e905, 5);
        VSTEP(VG, a1, b1, c1, d1, m1[13], 0xa9e3e905, 5);
        VSTEP(VG, d0, a0, b0, c0, m0[2], 0xfcefa3f8, 9);
        VSTEP(VG, d1, a1, b1, c1, m1[2], 0xfcefa3f8, 9);
        VSTEP(VG, c0, d0, a0, b0, m0[7], 0x676f02d9, 14);
        VSTEP(VG, c1, d1, a1, b1, m1[7], 0x676f02d9, 14);
        VSTEP(VG, b0, c0, d0, a0, m0[12], 0x8d2a4c8a, 20);
        VSTEP(VG, b1, c1, d1, a1, m1[12], 0x8d2a4c8a, 20);
        VSTEP(VH, a0, b0, c0, d0, m0[5], 0xfffa3942, 4);
        VSTEP(VH, a1, b1, c1, d1, m1[5], 0xfffa3942, 4);
        VSTEP(VH, d0, a0, b0, c0, m0[8], 0x8771f681, 11);
        VSTEP(VH, d1, a1, b1, c1, m1[8], 0x8771f681, 11);
        VSTEP(VH, c0, d0, a0, b0, m0[11], 0x6d9d6122, 16);
        VSTEP(VH, c1, d1, a1, b1, m1[11], 0x6d9d6122, 16);
        VSTEP(VH, b0, c0, d0, a0, m0[14], 0xfde5380c, 23);
        VSTEP(VH, b1, c1, d1, a1, m1[14], 0xfde5380c, 23);
        VSTEP(VH, a0, b0, c0, d0, m0[1], 0xa4beea44, 4);
        VSTEP(VH, a1, b1, c1, d1, m1[1], 0xa4beea44, 4);
        VSTEP(VH, d0, a0, b0, c0, m0[4], 0x4bdecfa9, 11);
        VSTEP(VH, d1, a1, b1, c1, m1[4], 0x4bdecfa9, 11);
        VSTEP(VH, c0, d0, a0, b0, m0[7], 0xf6bb4b60, 16);
        VSTEP(VH, c1, d1, a1, b1, m1[7], 0xf6bb4b60, 16);
        VSTEP(VH, b0, c0, d0, a0, m0[10], 0xbebfbc70, 23);
        VSTEP(VH, b1, c1, d1, a1, m1[10], 0xbebfbc70, 23);
        VSTEP(VH, a0, b0, c0, d0, m0[13], 0x289b7ec6, 4);
        VSTEP(VH, a1, b1, c1, d1, m1[13], 0x289b7ec6, 4);
        VSTEP(VH, d0, a0, b0, c0, m0[0], 0xeaa127fa, 11);
        VSTEP(VH, d1, a1, b1, c1, m1[0], 0xeaa127fa, 11);
        VSTEP(VH, c0, d0, a0, b0, m0[3], 0xd4ef3085, 16);
        VSTEP(VH, c1, d1, a1, b1, m1[3], 0xd4ef3085, 16);
        VSTEP(VH, b0, c0, d0, a0, m0[6], 0x04881d05, 23);
        VSTEP(VH, b1, c1, d1, a1, m1[6], 0x04881d05, 23);
        VSTEP(VH, a0, b0, c0, d0, m0[9], 0xd9d4d039, 4);
        VSTEP(VH, a1, b1, c1, d1, m1[9], 0xd9d4d039, 4);
        VSTEP(VH, d0, a0, b0, c0, m0[12], 0xe6db99e5, 11);
        VSTEP(VH, d1, a1, b1, c1, m1[12], 0xe6db99e5, 11);
        VSTEP(VH, c0, d0, a0, b0, m0[15], 0x1fa27cf8, 16);
        VSTEP(VH, c1, d1, a1, b1, m1[15], 0x1fa27cf8, 16);
        VSTEP(VH, b0, c0, d0, a0, m0[2], 0xc4ac5665, 23);
        VSTEP(VH, b1, c1, d1, a1, m1[2], 0xc4ac5665, 23);
        VSTEP(VI, a0, b0, c0, d0, m0[0], 0xf4292244, 6);
        VSTEP(VI, a1, b1, c1, d1, m1[0], 0xf4292244, 6);
        VSTEP(VI, d0, a0, b0, c0, m0[7], 0x432aff97, 10);
        VSTEP(VI, d1, a1, b1, c1, m1[7], 0x432aff97, 10);
        VSTEP(VI, c0, d0, a0, b0, m0[14], 0xab9423a7, 15);
        VSTEP(VI, c1, d1, a1, b1, m1[14], 0xab9423a7, 15);
        VSTEP(VI, b0, c0, d0, a0, m0[5], 0xfc93a039, 21);
        VSTEP(VI, b1, c1, d1, a1, m1[5], 0xfc93a039, 21);
        VSTEP(VI, a0, b0, c0, d0, m0[12], 0x655b59c3, 6);
        VSTEP(VI, a1, b1, c1, d1, m1[12], 0x655b59c3, 6);
        VSTEP(VI, d0, a0, b0, c0, m0[3], 0x8f0ccc92, 10);
        VSTEP(VI, d1, a1, b1, c1, m1[3], 0x8f0ccc92, 10);
        VSTEP(VI, c0, d0, a0, b0, m0[10], 0xffeff47d, 15);
        VSTEP(VI, c1, d1, a1, b1, m1[10], 0xffeff47d, 15);
        VSTEP(VI, b0, c0, d0, a0, m0[1], 0x85845dd1, 21);
        VSTEP(VI, b1, c1, d1, a1, m1[1], 0x85845dd1, 21);
        VSTEP(VI, a0, b0, c0, d0, m0[8], 0x6fa87e4f, 6);
        VSTEP(VI, a1, b1, c1, d1, m1[8], 0x6fa87e4f, 6);
        VSTEP(VI, d0, a0, b0, c0, m0[15], 0xfe2ce6e0, 10);
        VSTEP(VI, d1, a1, b1, c1, m1[15], 0xfe2ce6e0, 10);
        VSTEP(VI, c0, d0, a0, b0, m0[6], 0xa3014314, 15);
        VSTEP(VI, c1, d1, a1, b1, m1[6], 0xa3014314, 15);
        VSTEP(VI, b0, c0, d0, a0, m0[13], 0x4e0811a1, 21);
        VSTEP(VI, b1, c1, d1, a1, m1[13], 0x4e0811a1, 21);
        VSTEP(VI, a0, b0, c0, d0, m0[4], 0xf7537e82, 6);
        VSTEP(VI, a1, b1, c1, d1, m1[4], 0xf7537e82, 6);
        VSTEP(VI, d0, a0, b0, c0, m0[11], 0xbd3af235, 10);
        VSTEP(VI, d1, a1, b1, c1, m1[11], 0xbd3af235, 10);
        VSTEP(VI, c0, d0, a0, b0, m0[2], 0x2ad7d2bb, 15);
        VSTEP(VI, c1, d1, a1, b1, m1[2], 0x2ad7d2bb, 15);
        VSTEP(VI, b0, c0, d0, a0, m0[9], 0xeb86d391, 21);
        VSTEP(VI, b1, c1, d1, a1, m1[9], 0xeb86d391, 21);
        __m128i keep0 = _mm_set_epi32(live0[3], live0[2], live0[1], live0[0]);
        __m128i keep1 = _mm_set_epi32(live1[3], live1[2], live1[1], live1[0]);
        VFOLD(keep0, a0, sa0);
        VFOLD(keep0, b0, sb0);
        VFOLD(keep0, c0, sc0);
        VFOLD(keep0, d0, sd0);
        VFOLD(keep1, a1, sa1);
        VFOLD(keep1, b1, sb1);
        VFOLD(keep1, c1, sc1);
        VFOLD(keep1, d1, sd1);
    }
    add_heads(a0, b0, sum);
    add_heads(a1, b1, sum);
}
#else
static void md5x8_sum(uint8_t *const msg[LANES], const size_t blocks[LANES], uint64_t *sum)
{
    for (int l = 0; l < LANES; l++)
        *sum += md5_head64_padded(msg[l], blocks[l]);
}
#endif

/* ------------------------------------------------------------------------------------------
 * COPY text -> ROW()::text -> digest term
 */

static uint8_t quote_trigger[256]; /* " \ ( ) , and C isspace() */
static int8_t hex_value[256];

static void init_tables(void)
{
    const char *triggers = "\"\\(),\t\n\v\f\r ";
    for (const char *c = triggers; *c; c++)
        quote_trigger[(uint8_t)*c] = 1;
    for (int c = 0; c < 256; c++)
        hex_value[c] = -1;
    for (int c = 0; c < 10; c++)
        hex_value['0' + c] = (int8_t)c;
    for (int c = 0; c < 6; c++) {
        hex_value['a' + c] = (int8_t)(10 + c);
        hex_value['A' + c] = (int8_t)(10 + c);
    }
}

typedef struct {
    uint8_t *data;
    size_t len, cap;
} buf_t;

static int buf_reserve(buf_t *b, size_t extra)
{
    if (b->len + extra <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + extra)
        cap *= 2;
    uint8_t *p = realloc(b->data, cap);
    if (p == NULL)
        return -1;
    b->data = p;
    b->cap = cap;
    return 0;
}

/* State of one COPY text stream. */
typedef struct {
    uint64_t rows, sum;
    buf_t tail;  /* bytes after the last newline seen */
    buf_t lane[LANES];          /* record texts (padded) waiting to be hashed together */
    size_t lane_blocks[LANES];
    int nlanes;
    buf_t val;   /* scratch: one unescaped field */
    int in_dump; /* pg_dump's table data: a "\." line ends it ("\.\n\n\n" is written) */
    int ended;   /* that line was seen: ignore the rest */
} copy_state;

static void copy_state_free(copy_state *s)
{
    free(s->tail.data);
    for (int l = 0; l < LANES; l++)
        free(s->lane[l].data);
    free(s->val.data);
    memset(s, 0, sizeof(*s));
}

/* Copy v to r doubling every '"' and '\\' (record_out's quoting); returns the bytes written, at
 * most 2 * vlen, and r must have room for that many. Sixteen bytes at a time where none of them
 * needs doubling. */
static size_t copy_doubling(uint8_t *r, const uint8_t *v, size_t vlen)
{
    size_t o = 0, i = 0;
#if defined(__SSE2__)
    const __m128i quote = _mm_set1_epi8('"'), backslash = _mm_set1_epi8('\\');
    while (i + 16 <= vlen) {
        __m128i x = _mm_loadu_si128((const __m128i *)(v + i));
        int special = _mm_movemask_epi8(
            _mm_or_si128(_mm_cmpeq_epi8(x, quote), _mm_cmpeq_epi8(x, backslash)));
        _mm_storeu_si128((__m128i *)(r + o), x); /* o + 16 <= 2 * i + 16 <= 2 * vlen */
        if (special == 0) {
            i += 16;
            o += 16;
            continue;
        }
        int k = __builtin_ctz((unsigned)special);
        o += (size_t)k;
        i += (size_t)k;
        r[o++] = v[i];
        r[o++] = v[i++];
    }
#endif
    for (; i < vlen; i++) {
        if (v[i] == '"' || v[i] == '\\')
            r[o++] = v[i];
        r[o++] = v[i];
    }
    return o;
}

/* Append one COPY field, as record_out would print it, to rec. -1 on out of memory. */
static int add_field(copy_state *s, buf_t *rec, const uint8_t *f, size_t n)
{
    if (n == 2 && f[0] == '\\' && f[1] == 'N')
        return 0; /* NULL prints as nothing */
    const uint8_t *v = f;
    size_t vlen = n;
    if (memchr(f, '\\', n) != NULL) {
        s->val.len = 0;
        if (buf_reserve(&s->val, n) < 0)
            return -1;
        uint8_t *out = s->val.data;
        size_t o = 0;
        for (size_t i = 0; i < n; i++) {
            uint8_t c = f[i];
            if (c != '\\' || i + 1 == n) {
                out[o++] = c;
                continue;
            }
            c = f[++i];
            if (c >= '0' && c <= '7') {
                int x = c - '0';
                for (int k = 0; k < 2 && i + 1 < n && f[i + 1] >= '0' && f[i + 1] <= '7'; k++)
                    x = x * 8 + (f[++i] - '0');
                out[o++] = (uint8_t)(x & 0xFF);
            } else if (c == 'x' && i + 1 < n && hex_value[f[i + 1]] >= 0) {
                int x = hex_value[f[++i]];
                if (i + 1 < n && hex_value[f[i + 1]] >= 0)
                    x = x * 16 + hex_value[f[++i]];
                out[o++] = (uint8_t)x;
            } else {
                switch (c) {
                case 'b': c = '\b'; break;
                case 'f': c = '\f'; break;
                case 'n': c = '\n'; break;
                case 'r': c = '\r'; break;
                case 't': c = '\t'; break;
                case 'v': c = '\v'; break;
                default: break;
                }
                out[o++] = c;
            }
        }
        v = out;
        vlen = o;
    }
    int quote = vlen == 0;
    for (size_t i = 0; !quote && i < vlen; i++)
        quote = quote_trigger[v[i]];
    if (!quote) {
        if (buf_reserve(rec, vlen) < 0)
            return -1;
        memcpy(rec->data + rec->len, v, vlen);
        rec->len += vlen;
        return 0;
    }
    if (buf_reserve(rec, 2 * vlen + 2) < 0)
        return -1;
    uint8_t *r = rec->data + rec->len;
    r[0] = '"';
    size_t o = 1 + copy_doubling(r + 1, v, vlen);
    r[o++] = '"';
    rec->len += o;
    return 0;
}

/* One complete line (without its newline). -1 on out of memory. */
static int add_line(copy_state *s, const uint8_t *line, size_t n)
{
    if (s->ended)
        return 0;
    if (s->in_dump && n == 2 && line[0] == '\\' && line[1] == '.') {
        s->ended = 1;
        return 0;
    }
    buf_t *rec = &s->lane[s->nlanes];
    rec->len = 0;
    if (buf_reserve(rec, 1) < 0)
        return -1;
    rec->data[rec->len++] = '(';
    size_t start = 0;
    for (;;) {
        const uint8_t *tab = memchr(line + start, '\t', n - start);
        size_t end = tab ? (size_t)(tab - line) : n;
        if (add_field(s, rec, line + start, end - start) < 0)
            return -1;
        if (buf_reserve(rec, 1 + 72) < 0) /* and room for the MD5 padding */
            return -1;
        rec->data[rec->len++] = tab ? ',' : ')';
        if (!tab)
            break;
        start = end + 1;
    }
    s->lane_blocks[s->nlanes] = md5_pad(rec->data, rec->len);
    s->rows++;
    if (++s->nlanes == LANES) {
        uint8_t *msg[LANES];
        for (int l = 0; l < LANES; l++)
            msg[l] = s->lane[l].data;
        md5x8_sum(msg, s->lane_blocks, &s->sum);
        s->nlanes = 0;
    }
    return 0;
}

/* Hash the records still waiting for a full set of lanes. */
static void copy_flush(copy_state *s)
{
    for (int l = 0; l < s->nlanes; l++)
        s->sum += md5_head64_padded(s->lane[l].data, s->lane_blocks[l]);
    s->nlanes = 0;
}

/* Feed any piece of the stream. -1 on out of memory. */
static int copy_feed(copy_state *s, const uint8_t *p, size_t n)
{
    while (n > 0) {
        const uint8_t *nl = memchr(p, '\n', n);
        if (nl == NULL) {
            if (buf_reserve(&s->tail, n) < 0)
                return -1;
            memcpy(s->tail.data + s->tail.len, p, n);
            s->tail.len += n;
            return 0;
        }
        size_t len = (size_t)(nl - p);
        int rc;
        if (s->tail.len) {
            if (buf_reserve(&s->tail, len) < 0)
                return -1;
            memcpy(s->tail.data + s->tail.len, p, len);
            rc = add_line(s, s->tail.data, s->tail.len + len);
            s->tail.len = 0;
        } else {
            rc = add_line(s, p, len);
        }
        if (rc < 0)
            return -1;
        p += len + 1;
        n -= len + 1;
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------
 * CopyDigest
 */

typedef struct {
    PyObject_HEAD
    copy_state st;
    PyThread_type_lock lock; /* one feed at a time: the GIL is released while hashing */
} CopyDigestObject;

static int CopyDigest_init(CopyDigestObject *self, PyObject *args, PyObject *kwds)
{
    if (!PyArg_ParseTuple(args, ":CopyDigest"))
        return -1;
    copy_state_free(&self->st);
    if (self->lock == NULL && (self->lock = PyThread_allocate_lock()) == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static void CopyDigest_dealloc(CopyDigestObject *self)
{
    copy_state_free(&self->st);
    if (self->lock)
        PyThread_free_lock(self->lock);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *CopyDigest_update(CopyDigestObject *self, PyObject *arg)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    PyThread_acquire_lock(self->lock, WAIT_LOCK);
    rc = copy_feed(&self->st, view.buf, (size_t)view.len);
    PyThread_release_lock(self->lock);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    if (rc < 0)
        return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *CopyDigest_state(CopyDigestObject *self, PyObject *unused)
{
    Py_BEGIN_ALLOW_THREADS
    PyThread_acquire_lock(self->lock, WAIT_LOCK);
    copy_flush(&self->st);
    PyThread_release_lock(self->lock);
    Py_END_ALLOW_THREADS
    return Py_BuildValue("(KKn)", (unsigned long long)self->st.rows,
                         (unsigned long long)self->st.sum, (Py_ssize_t)self->st.tail.len);
}

static PyMethodDef CopyDigest_methods[] = {
    {"update", (PyCFunction)CopyDigest_update, METH_O,
     "update(buf): feed the next piece of the COPY text stream (split anywhere)."},
    {"state", (PyCFunction)CopyDigest_state, METH_NOARGS,
     "state() -> (rows, sum mod 2**64, bytes after the last newline)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject CopyDigestType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "vaultkeeper._copydigest.CopyDigest",
    .tp_basicsize = sizeof(CopyDigestObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Streaming md5sum64-v1 digest of one COPY text stream.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)CopyDigest_init,
    .tp_dealloc = (destructor)CopyDigest_dealloc,
    .tp_methods = CopyDigest_methods,
};

/* ------------------------------------------------------------------------------------------
 * DumpScanner: the data section of a pg_dump custom-format archive.
 *
 * Integers are a sign byte then int_size bytes, little-endian. Blocks: a type byte; BLK_DATA (1)
 * is a dump id then (length, bytes) pieces ending with a zero length; BLK_BLOBS (3) is a dump id
 * then, per large object, its oid and (length, bytes) pieces ending with a zero length, the
 * list ending with oid 0. With --compress=0 the pieces of a table data block are its COPY text.
 */

enum {
    S_TYPE,
    S_DATA_ID,
    S_DATA_LEN,
    S_DATA_BYTES,
    S_BLOBS_ID,
    S_BLOB_OID,
    S_BLOB_LEN,
    S_BLOB_BYTES
};

typedef struct {
    int64_t dump_id;
    uint64_t rows, sum;
} block_result;

typedef struct {
    int64_t dump_id;
    uint64_t offset;
} block_start;

typedef struct {
    PyObject_HEAD
    int int_size;
    int state;
    uint8_t intbuf[16];
    int intlen;
    uint64_t remaining;
    int64_t current_id;
    copy_state copy;
    block_result *results;
    size_t nresults, capresults;
    int digest;          /* 0: only find the blocks (offsets), no COPY text digest */
    uint64_t fed;        /* bytes fed before the current buffer */
    uint64_t this_start; /* offset of the current block's type byte */
    block_start *starts;
    size_t nstarts, capstarts;
    char error[200];
    PyThread_type_lock lock;
} DumpScannerObject;

/* Collect one archive integer; 1 when complete (value in *out), 0 when more bytes are needed. */
static int take_int(DumpScannerObject *d, const uint8_t **p, size_t *n, int64_t *out)
{
    int need = 1 + d->int_size;
    while (d->intlen < need && *n > 0) {
        d->intbuf[d->intlen++] = **p;
        (*p)++;
        (*n)--;
    }
    if (d->intlen < need)
        return 0;
    uint64_t v = 0;
    for (int i = d->int_size; i >= 1; i--)
        v = v << 8 | d->intbuf[i];
    *out = d->intbuf[0] ? -(int64_t)v : (int64_t)v;
    d->intlen = 0;
    return 1;
}

/* Room for one more element in a growing array (*arr, n used of *cap); -1 out of memory. */
static int reserve_one(void **arr, size_t n, size_t *cap, size_t elem)
{
    if (n < *cap)
        return 0;
    size_t grown = *cap ? 2 * *cap : 64;
    void *r = realloc(*arr, grown * elem);
    if (r == NULL)
        return -1;
    *arr = r;
    *cap = grown;
    return 0;
}

static int push_start(DumpScannerObject *d, int64_t dump_id)
{
    if (reserve_one((void **)&d->starts, d->nstarts, &d->capstarts, sizeof(*d->starts)) < 0)
        return -1;
    d->starts[d->nstarts++] = (block_start){dump_id, d->this_start};
    return 0;
}

/* 0 ok, -1 out of memory, -2 format error (message in d->error). */
static int scan_feed(DumpScannerObject *d, const uint8_t *p, size_t n)
{
    int64_t v;
    const uint8_t *const p0 = p;
    const uint64_t base = d->fed;
    d->fed += n;
    while (n > 0) {
        switch (d->state) {
        case S_TYPE:
            d->this_start = base + (uint64_t)(p - p0);
            if (*p == 1)
                d->state = S_DATA_ID;
            else if (*p == 3)
                d->state = S_BLOBS_ID;
            else {
                snprintf(d->error, sizeof(d->error), "unexpected block type %d", *p);
                return -2;
            }
            p++;
            n--;
            break;
        case S_DATA_ID:
            if (!take_int(d, &p, &n, &v))
                return 0;
            if (push_start(d, v) < 0)
                return -1;
            d->current_id = v;
            copy_state_free(&d->copy);
            d->copy.in_dump = 1;
            d->state = S_DATA_LEN;
            break;
        case S_DATA_LEN:
            if (!take_int(d, &p, &n, &v))
                return 0;
            if (v < 0) {
                snprintf(d->error, sizeof(d->error), "negative data length in block %lld",
                         (long long)d->current_id);
                return -2;
            }
            if (v > 0) {
                d->remaining = (uint64_t)v;
                d->state = S_DATA_BYTES;
                break;
            }
            if (d->digest && d->copy.tail.len) {
                snprintf(d->error, sizeof(d->error),
                         "table data of dump id %lld ends in the middle of a row",
                         (long long)d->current_id);
                return -2;
            }
            if (d->digest)
                copy_flush(&d->copy);
            if (reserve_one((void **)&d->results, d->nresults, &d->capresults,
                            sizeof(*d->results)) < 0)
                return -1;
            d->results[d->nresults++] =
                (block_result){d->current_id, d->copy.rows, d->copy.sum};
            d->state = S_TYPE;
            break;
        case S_DATA_BYTES: {
            size_t take = d->remaining < n ? (size_t)d->remaining : n;
            if (d->digest && copy_feed(&d->copy, p, take) < 0)
                return -1;
            p += take;
            n -= take;
            d->remaining -= take;
            if (d->remaining == 0)
                d->state = S_DATA_LEN;
            break;
        }
        case S_BLOBS_ID:
            if (!take_int(d, &p, &n, &v))
                return 0;
            if (push_start(d, v) < 0)
                return -1;
            d->state = S_BLOB_OID;
            break;
        case S_BLOB_OID:
            if (!take_int(d, &p, &n, &v))
                return 0;
            d->state = v == 0 ? S_TYPE : S_BLOB_LEN;
            break;
        case S_BLOB_LEN:
            if (!take_int(d, &p, &n, &v))
                return 0;
            if (v < 0) {
                snprintf(d->error, sizeof(d->error), "negative large object length");
                return -2;
            }
            d->remaining = (uint64_t)v;
            d->state = v == 0 ? S_BLOB_OID : S_BLOB_BYTES;
            break;
        case S_BLOB_BYTES: {
            size_t take = d->remaining < n ? (size_t)d->remaining : n;
            p += take;
            n -= take;
            d->remaining -= take;
            if (d->remaining == 0)
                d->state = S_BLOB_LEN;
            break;
        }
        }
    }
    return 0;
}

static int DumpScanner_init(DumpScannerObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"int_size", "digest", NULL};
    int int_size, digest = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "i|p:DumpScanner", kwlist, &int_size, &digest))
        return -1;
    if (int_size < 1 || int_size > 8) {
        PyErr_Format(PyExc_ValueError, "unsupported archive integer size %d", int_size);
        return -1;
    }
    copy_state_free(&self->copy);
    free(self->results);
    self->results = NULL;
    self->nresults = self->capresults = 0;
    free(self->starts);
    self->starts = NULL;
    self->nstarts = self->capstarts = 0;
    self->digest = digest;
    self->fed = self->this_start = 0;
    self->int_size = int_size;
    self->state = S_TYPE;
    self->intlen = 0;
    self->error[0] = 0;
    if (self->lock == NULL && (self->lock = PyThread_allocate_lock()) == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static void DumpScanner_dealloc(DumpScannerObject *self)
{
    copy_state_free(&self->copy);
    free(self->results);
    free(self->starts);
    if (self->lock)
        PyThread_free_lock(self->lock);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *DumpScanner_feed(DumpScannerObject *self, PyObject *arg)
{
    if (self->error[0]) {
        PyErr_SetString(PyExc_ValueError, self->error);
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    PyThread_acquire_lock(self->lock, WAIT_LOCK);
    rc = scan_feed(self, view.buf, (size_t)view.len);
    PyThread_release_lock(self->lock);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    if (rc == -1)
        return PyErr_NoMemory();
    if (rc == -2) {
        PyErr_SetString(PyExc_ValueError, self->error);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *DumpScanner_results(DumpScannerObject *self, PyObject *unused)
{
    PyObject *list = PyList_New((Py_ssize_t)self->nresults);
    for (size_t i = 0; list != NULL && i < self->nresults; i++) {
        block_result *r = &self->results[i];
        PyObject *t = Py_BuildValue("(LKK)", (long long)r->dump_id, (unsigned long long)r->rows,
                                    (unsigned long long)r->sum);
        if (t == NULL)
            Py_CLEAR(list);
        else
            PyList_SET_ITEM(list, (Py_ssize_t)i, t);
    }
    return list;
}

static PyObject *DumpScanner_offsets(DumpScannerObject *self, PyObject *unused)
{
    PyObject *list = PyList_New((Py_ssize_t)self->nstarts);
    for (size_t i = 0; list != NULL && i < self->nstarts; i++) {
        block_start *r = &self->starts[i];
        PyObject *t = Py_BuildValue("(LK)", (long long)r->dump_id, (unsigned long long)r->offset);
        if (t == NULL)
            Py_CLEAR(list);
        else
            PyList_SET_ITEM(list, (Py_ssize_t)i, t);
    }
    return list;
}

static PyObject *DumpScanner_at_block_boundary(DumpScannerObject *self, PyObject *unused)
{
    return PyBool_FromLong(self->state == S_TYPE && self->intlen == 0);
}

static PyMethodDef DumpScanner_methods[] = {
    {"feed", (PyCFunction)DumpScanner_feed, METH_O,
     "feed(buf): the next bytes of the archive's data section."},
    {"results", (PyCFunction)DumpScanner_results, METH_NOARGS,
     "results() -> [(dump_id, rows, sum mod 2**64)] of every complete table data block."},
    {"offsets", (PyCFunction)DumpScanner_offsets, METH_NOARGS,
     "offsets() -> [(dump_id, offset)] of every block begun, offset counted from the first byte fed."},
    {"at_block_boundary", (PyCFunction)DumpScanner_at_block_boundary, METH_NOARGS,
     "True when the bytes fed so far end exactly after a block (a complete archive does)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject DumpScannerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "vaultkeeper._copydigest.DumpScanner",
    .tp_basicsize = sizeof(DumpScannerObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Per-table md5sum64-v1 digests of an uncompressed pg_dump custom-format data section.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)DumpScanner_init,
    .tp_dealloc = (destructor)DumpScanner_dealloc,
    .tp_methods = DumpScanner_methods,
};

static struct PyModuleDef copydigest_module = {
    PyModuleDef_HEAD_INIT,
    "vaultkeeper._copydigest",
    "Native md5sum64-v1 digests of COPY text (optional; see vaultkeeper.archive.copytext).",
    0,
    NULL,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC PyInit__copydigest(void)
{
    init_tables();
    if (PyType_Ready(&CopyDigestType) < 0 || PyType_Ready(&DumpScannerType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&copydigest_module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&CopyDigestType);
    Py_INCREF(&DumpScannerType);
    if (PyModule_AddIntConstant(m, "API_VERSION", API_VERSION) < 0 ||
        PyModule_AddObject(m, "CopyDigest", (PyObject *)&CopyDigestType) < 0 ||
        PyModule_AddObject(m, "DumpScanner", (PyObject *)&DumpScannerType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
