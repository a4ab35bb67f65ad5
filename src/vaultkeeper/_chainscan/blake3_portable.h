/*
 * BLAKE3 (hash mode, 32-byte output), portable C, written for vaultkeeper from the BLAKE3
 * specification (O'Connor, Aumasson, Neves, Wilcox-O'Hearn, 2020). No SIMD: one compression at
 * a time. Inputs of any length are hashed with the full chunk/tree structure.
 */
#ifndef VK_BLAKE3_PORTABLE_H
#define VK_BLAKE3_PORTABLE_H

#include <stddef.h>
#include <stdint.h>

#define VK_BLAKE3_OUT_LEN 32
#define VK_BLAKE3_BLOCK_LEN 64
#define VK_BLAKE3_CHUNK_LEN 1024
/* 2^54 chunks of 1 KiB cover 2^64 bytes: the chaining-value stack never holds more. */
#define VK_BLAKE3_MAX_DEPTH 54

typedef struct {
    uint32_t cv[8];
    uint64_t chunk_counter;
    uint8_t block[VK_BLAKE3_BLOCK_LEN];
    uint8_t block_len;
    uint8_t blocks_compressed;
} vk_blake3_chunk_state;

typedef struct {
    vk_blake3_chunk_state chunk;
    uint8_t cv_stack_len;
    uint32_t cv_stack[VK_BLAKE3_MAX_DEPTH + 1][8];
} vk_blake3_hasher;

void vk_blake3_init(vk_blake3_hasher *self);
void vk_blake3_update(vk_blake3_hasher *self, const void *input, size_t input_len);
/* Does not modify the hasher: more input may follow and finalize may be called again. */
void vk_blake3_finalize(const vk_blake3_hasher *self, uint8_t out[VK_BLAKE3_OUT_LEN]);
void vk_blake3(const void *input, size_t input_len, uint8_t out[VK_BLAKE3_OUT_LEN]);

/* An input of at most one chunk, given as its 1..16 blocks: blocks[k] points to 64 readable
   bytes, and the last block holds last_len bytes (0 only for the empty input) followed by
   zeros. Callers pass pointers into their own data and copy only blocks that need it. */
typedef struct {
    const uint8_t *blocks[VK_BLAKE3_CHUNK_LEN / VK_BLAKE3_BLOCK_LEN];
    unsigned nblocks;
    unsigned last_len;
} vk_blake3_chunk_input;

/* Inputs hashed at once in the lanes of a vector (GCC and Clang vector extensions; defining
   VK_BLAKE3_NO_VECTOR forces plain scalar code). */
#if (defined(__GNUC__) || defined(__clang__)) && !defined(VK_BLAKE3_NO_VECTOR)
#define VK_BLAKE3_LANES 4
#else
#define VK_BLAKE3_LANES 1
#endif

/* out[i] = BLAKE3(input i) for n inputs of at most one chunk each. */
void vk_blake3_hash_chunks(const vk_blake3_chunk_input *in, size_t n,
                           uint8_t out[][VK_BLAKE3_OUT_LEN]);

#endif
