/*
 * vaultkeeper._chainscan: the verifier's fast path in C (see vaultkeeper/chain/scan.py).
 *
 * scan(buf, anchor_seqs) proves a buffer of complete ledger lines clean -- every line has the
 * canonical layout, is not a LOG_DROP, its stored hash is BLAKE3(prev || "{" || line[75:]), its
 * prev is the stored hash of the line before and its seq is one more -- and returns a summary,
 * or None as soon as anything is unusual. None is never a verdict: the caller re-reads the
 * buffer with the Python line-by-line path, which names every finding. The checks are exactly
 * those of the Python fast path (scan.scan_clean_python), so both accept the same buffers.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

#include "blake3_portable.h"

/* Bumped whenever scan()'s arguments or result change; scan.py ignores a stale build. */
#define API_VERSION 1

#define MAX_SAFE_INT 9007199254740991ULL /* 2**53 - 1 */
#define HASH_AT 9                         /* {"hash":"<64 hex>","payload":{ */
#define HASHED_FROM 75
#define PREFIX_LEN 86
#define HEX_LEN 64
#define TS_LEN 27
#define MAX_TYPE_LEN 64
#define MAX_SEQ_DIGITS 16
/* },"prev":"<64>","seq":<d>,"ts":"<27>","type":"<t>"} is 128 + d + t bytes */
#define TAIL_FIXED 128
#define MIN_LINE (PREFIX_LEN + TAIL_FIXED + 2)

static const char HEAD[] = "{\"hash\":\"";
static const char PAYLOAD_PREFIX[] = "\",\"payload\":{";
static const char TAIL_SEP[] = "},\"prev\":\"";
static const char SEQ_SEP[] = "\",\"seq\":";
static const char TS_SEP[] = ",\"ts\":\"";
static const char TYPE_SEP[] = "\",\"type\":\"";
/* YYYY-MM-DDTHH:MM:SS.ffffffZ: where the digits are */
static const uint8_t TS_DIGIT[27] = {1, 1, 1, 1, 0, 1, 1, 0, 1, 1, 0, 1, 1, 0,
                                     1, 1, 0, 1, 1, 0, 1, 1, 1, 1, 1, 1, 0};
static const char HEX[] = "0123456789abcdef";

typedef struct {
    uint64_t seq;
    const uint8_t *prev;
    const uint8_t *hash;
} line_fields;

enum { DIGIT = 1, TYPE_CHAR = 2, LOWER_HEX = 4 };
static uint8_t char_class[256];
static uint8_t hex_pair[256][2];

static void init_tables(void)
{
    for (int c = 0; c < 256; c++) {
        int digit = c >= '0' && c <= '9';
        int type = digit || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_' ||
                   c == '.' || c == ':' || c == '-';
        int hex = digit || (c >= 'a' && c <= 'f');
        char_class[c] = (uint8_t)((digit ? DIGIT : 0) | (type ? TYPE_CHAR : 0) |
                                  (hex ? LOWER_HEX : 0));
        hex_pair[c][0] = (uint8_t)HEX[c >> 4];
        hex_pair[c][1] = (uint8_t)HEX[c & 15];
    }
}

static int is_type_char(uint8_t c)
{
    return char_class[c] & TYPE_CHAR;
}

static int is_digit(uint8_t c)
{
    return char_class[c] & DIGIT;
}

static int is_lower_hex(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!(char_class[p[i]] & LOWER_HEX))
            return 0;
    return 1;
}

/* Reads a line (without its \n) that has the canonical layout and is not a LOG_DROP; 0 for
   anything else. The tail is parsed from the end: its last "}," "prev" separator is the only
   one that can be followed by a well-formed tail, as in the Python fast path's rfind. */
static int read_fields(const uint8_t *line, size_t len, line_fields *out)
{
    if (len < MIN_LINE)
        return 0;
    if (memcmp(line, HEAD, sizeof HEAD - 1) != 0 ||
        memcmp(line + HASH_AT + HEX_LEN, PAYLOAD_PREFIX, sizeof PAYLOAD_PREFIX - 1) != 0)
        return 0;
    const uint8_t *p = line + len;
    if (p[-1] != '}' || p[-2] != '"')
        return 0;
    p -= 2;
    size_t type_len = 0;
    while (type_len <= MAX_TYPE_LEN && is_type_char(p[-1])) {
        p--;
        type_len++;
    }
    if (type_len == 0 || type_len > MAX_TYPE_LEN)
        return 0;
    if (type_len == 8 && memcmp(p, "LOG_DROP", 8) == 0)
        return 0;
    p -= sizeof TYPE_SEP - 1;
    if (memcmp(p, TYPE_SEP, sizeof TYPE_SEP - 1) != 0)
        return 0;
    p -= TS_LEN;
    if (p[4] != '-' || p[7] != '-' || p[10] != 'T' || p[13] != ':' || p[16] != ':' ||
        p[19] != '.' || p[26] != 'Z')
        return 0;
    for (size_t i = 0; i < TS_LEN; i++)
        if (TS_DIGIT[i] && !is_digit(p[i]))
            return 0;
    p -= sizeof TS_SEP - 1;
    if (memcmp(p, TS_SEP, sizeof TS_SEP - 1) != 0)
        return 0;
    const uint8_t *digits_end = p;
    size_t ndigits = 0;
    while (ndigits <= MAX_SEQ_DIGITS && is_digit(p[-1])) {
        p--;
        ndigits++;
    }
    if (ndigits == 0 || ndigits > MAX_SEQ_DIGITS || (ndigits > 1 && p[0] == '0'))
        return 0;
    uint64_t seq = 0;
    for (const uint8_t *d = p; d < digits_end; d++)
        seq = seq * 10 + (uint64_t)(*d - '0');
    if (seq > MAX_SAFE_INT)
        return 0;
    p -= sizeof SEQ_SEP - 1;
    if (memcmp(p, SEQ_SEP, sizeof SEQ_SEP - 1) != 0)
        return 0;
    p -= HEX_LEN;
    out->prev = p;
    p -= sizeof TAIL_SEP - 1;
    /* the payload is line[85] ("{") up to and including the "}" that starts the tail */
    if (p < line + PREFIX_LEN || memcmp(p, TAIL_SEP, sizeof TAIL_SEP - 1) != 0)
        return 0;
    out->seq = seq;
    out->hash = line + HASH_AT;
    return 1;
}

static int digest_is(const uint8_t digest[VK_BLAKE3_OUT_LEN], const uint8_t *stored_hex)
{
    uint8_t hex[HEX_LEN];
    for (size_t i = 0; i < VK_BLAKE3_OUT_LEN; i++)
        memcpy(hex + 2 * i, hex_pair[digest[i]], 2);
    return memcmp(hex, stored_hex, HEX_LEN) == 0;
}

/* Lines waiting for their hash check, hashed together (see vk_blake3_hash_chunks). The hashed
   bytes prev || "{" || line[75:] are laid out as blocks without copying the line: prev is
   exactly the first block, then line[74:] in place, except the block starting there (its ","
   is read as "{") and a partial last block (zero-padded), which are copied. */
#define BATCH 16

typedef struct {
    size_t n;
    vk_blake3_chunk_input in[BATCH];
    const uint8_t *stored[BATCH];
    uint8_t first[BATCH][VK_BLAKE3_BLOCK_LEN];
    uint8_t last[BATCH][VK_BLAKE3_BLOCK_LEN];
} hash_batch;

static int batch_flush(hash_batch *b)
{
    uint8_t digests[BATCH][VK_BLAKE3_OUT_LEN];
    size_t n = b->n;
    if (n == 0)
        return 1;
    b->n = 0;
    vk_blake3_hash_chunks(b->in, n, digests);
    for (size_t i = 0; i < n; i++)
        if (!digest_is(digests[i], b->stored[i]))
            return 0;
    return 1;
}

/* Queues the hash check of a line (records over one BLAKE3 chunk are checked at once); 0 if
   it already failed. */
static int check_hash(hash_batch *b, const uint8_t *line, size_t len, const uint8_t *prev)
{
    const uint8_t *rest = line + HASHED_FROM - 1;
    const size_t rest_len = len - (HASHED_FROM - 1);
    if (HEX_LEN + rest_len > VK_BLAKE3_CHUNK_LEN) {
        vk_blake3_hasher h;
        uint8_t digest[VK_BLAKE3_OUT_LEN];
        vk_blake3_init(&h);
        vk_blake3_update(&h, prev, HEX_LEN);
        vk_blake3_update(&h, "{", 1);
        vk_blake3_update(&h, line + HASHED_FROM, len - HASHED_FROM);
        vk_blake3_finalize(&h, digest);
        return digest_is(digest, line + HASH_AT);
    }
    size_t i = b->n;
    vk_blake3_chunk_input *in = &b->in[i];
    size_t nrest = (rest_len + VK_BLAKE3_BLOCK_LEN - 1) / VK_BLAKE3_BLOCK_LEN;
    size_t last_len = rest_len - VK_BLAKE3_BLOCK_LEN * (nrest - 1);
    in->nblocks = (unsigned)(1 + nrest);
    in->last_len = (unsigned)last_len;
    in->blocks[0] = prev;
    for (size_t k = 1; k < nrest; k++)
        in->blocks[1 + k] = rest + VK_BLAKE3_BLOCK_LEN * k;
    size_t take = nrest == 1 ? rest_len : VK_BLAKE3_BLOCK_LEN;
    memcpy(b->first[i], rest, take);
    memset(b->first[i] + take, 0, VK_BLAKE3_BLOCK_LEN - take);
    b->first[i][0] = '{';
    in->blocks[1] = b->first[i];
    if (nrest > 1 && last_len < VK_BLAKE3_BLOCK_LEN) {
        memcpy(b->last[i], rest + VK_BLAKE3_BLOCK_LEN * (nrest - 1), last_len);
        memset(b->last[i] + last_len, 0, VK_BLAKE3_BLOCK_LEN - last_len);
        in->blocks[nrest] = b->last[i];
    }
    b->stored[i] = line + HASH_AT;
    b->n = i + 1;
    return b->n < BATCH || batch_flush(b);
}

typedef struct {
    Py_ssize_t lines;
    uint64_t first_seq;
    const uint8_t *first_prev;
    uint64_t last_seq;
    const uint8_t *last_hash;
} summary;

/* 1 and a summary if every line of buf is clean; anchor_hash[i] is set for each anchors[i]
   (strictly increasing) inside the buffer. Touches no Python object: runs without the GIL. */
static int scan_buffer(const uint8_t *buf, size_t size, const uint64_t *anchors, size_t nanchors,
                       const uint8_t **anchor_hash, summary *out)
{
    if (size == 0 || buf[size - 1] != '\n')
        return 0;
    const uint8_t *line = buf;
    const uint8_t *end = buf + size;
    size_t next_anchor = 0;
    Py_ssize_t n = 0;
    line_fields f;
    hash_batch batch;
    batch.n = 0;
    while (line < end) {
        const uint8_t *nl = memchr(line, '\n', (size_t)(end - line));
        size_t len = (size_t)(nl - line);
        if (!read_fields(line, len, &f))
            return 0;
        if (n == 0) {
            if (!is_lower_hex(f.prev, HEX_LEN))
                return 0;
            out->first_seq = f.seq;
            out->first_prev = f.prev;
        }
        else if (f.seq != out->last_seq + 1 || memcmp(f.prev, out->last_hash, HEX_LEN) != 0) {
            return 0;
        }
        if (!check_hash(&batch, line, len, f.prev))
            return 0;
        while (next_anchor < nanchors && anchors[next_anchor] < f.seq)
            next_anchor++;
        if (next_anchor < nanchors && anchors[next_anchor] == f.seq)
            anchor_hash[next_anchor++] = f.hash;
        out->last_seq = f.seq;
        out->last_hash = f.hash;
        n++;
        line = nl + 1;
    }
    if (!batch_flush(&batch))
        return 0;
    out->lines = n;
    return 1;
}

static PyObject *hex_str(const uint8_t *p)
{
    return PyUnicode_DecodeASCII((const char *)p, HEX_LEN, "strict");
}

static PyObject *build_result(const summary *s, const uint64_t *anchors, size_t nanchors,
                              const uint8_t **anchor_hash)
{
    size_t found = 0;
    for (size_t i = 0; i < nanchors; i++)
        found += anchor_hash[i] != NULL;
    PyObject *pairs = PyTuple_New((Py_ssize_t)found);
    if (pairs == NULL)
        return NULL;
    Py_ssize_t k = 0;
    for (size_t i = 0; i < nanchors; i++) {
        if (anchor_hash[i] == NULL)
            continue;
        PyObject *digest = hex_str(anchor_hash[i]);
        PyObject *pair =
            digest == NULL ? NULL : Py_BuildValue("(KN)", (unsigned long long)anchors[i], digest);
        if (pair == NULL) {
            Py_DECREF(pairs);
            return NULL;
        }
        PyTuple_SET_ITEM(pairs, k++, pair);
    }
    PyObject *first_prev = hex_str(s->first_prev);
    PyObject *last_hash = first_prev == NULL ? NULL : hex_str(s->last_hash);
    if (last_hash == NULL) {
        Py_XDECREF(first_prev);
        Py_DECREF(pairs);
        return NULL;
    }
    return Py_BuildValue("(nKNKNN)", s->lines, (unsigned long long)s->first_seq, first_prev,
                         (unsigned long long)s->last_seq, last_hash, pairs);
}

PyDoc_STRVAR(scan_doc,
"scan(buf, anchor_seqs, /) -> (lines, first_seq, first_prev, last_seq, last_hash, anchors) | None\n"
"\n"
"Summary of buf (complete ledger lines) if every line is provably clean, else None.\n"
"anchor_seqs: strictly increasing ints in 0..2**53-1; anchors holds (seq, hash) for those\n"
"inside buf. The GIL is released while scanning.");

static PyObject *chainscan_scan(PyObject *module, PyObject *args)
{
    Py_buffer view;
    PyObject *anchor_seqs;
    (void)module;
    if (!PyArg_ParseTuple(args, "y*O!:scan", &view, &PyTuple_Type, &anchor_seqs))
        return NULL;
    PyObject *result = NULL;
    summary s = {0};
    int clean;
    size_t nanchors = (size_t)PyTuple_GET_SIZE(anchor_seqs);
    uint64_t *anchors = PyMem_Calloc(nanchors ? nanchors : 1, sizeof *anchors);
    const uint8_t **anchor_hash = PyMem_Calloc(nanchors ? nanchors : 1, sizeof *anchor_hash);
    if (anchors == NULL || anchor_hash == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (size_t i = 0; i < nanchors; i++) {
        unsigned long long v = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(anchor_seqs, i));
        if (v == (unsigned long long)-1 && PyErr_Occurred())
            goto done;
        if (v > MAX_SAFE_INT || (i > 0 && v <= anchors[i - 1])) {
            PyErr_SetString(PyExc_ValueError,
                            "anchor_seqs must be strictly increasing integers in 0..2**53-1");
            goto done;
        }
        anchors[i] = v;
    }
    Py_BEGIN_ALLOW_THREADS
    clean = scan_buffer(view.buf, (size_t)view.len, anchors, nanchors, anchor_hash, &s);
    Py_END_ALLOW_THREADS
    if (clean) {
        result = build_result(&s, anchors, nanchors, anchor_hash);
    }
    else {
        result = Py_NewRef(Py_None);
    }
done:
    PyMem_Free(anchors);
    PyMem_Free(anchor_hash);
    PyBuffer_Release(&view);
    return result;
}

PyDoc_STRVAR(blake3_digest_doc,
"blake3_digest(data, step=0, /) -> bytes\n"
"\n"
"The 32-byte BLAKE3 hash of data, from this module's own implementation (for tests).\n"
"step > 0 feeds data to the incremental hasher step bytes at a time.");

static PyObject *chainscan_blake3_digest(PyObject *module, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t step = 0;
    (void)module;
    if (!PyArg_ParseTuple(args, "y*|n:blake3_digest", &view, &step))
        return NULL;
    if (step < 0) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "step must be >= 0");
        return NULL;
    }
    uint8_t out[VK_BLAKE3_OUT_LEN];
    const uint8_t *p = view.buf;
    size_t len = (size_t)view.len;
    Py_BEGIN_ALLOW_THREADS
    if (step == 0) {
        vk_blake3(p, len, out);
    }
    else {
        vk_blake3_hasher h;
        vk_blake3_init(&h);
        for (size_t off = 0; off < len; off += (size_t)step) {
            size_t take = len - off < (size_t)step ? len - off : (size_t)step;
            vk_blake3_update(&h, p + off, take);
        }
        vk_blake3_finalize(&h, out);
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    return PyBytes_FromStringAndSize((const char *)out, VK_BLAKE3_OUT_LEN);
}

PyDoc_STRVAR(blake3_chunks_doc,
"blake3_chunks(inputs, /) -> list[bytes]\n"
"\n"
"BLAKE3 of each input (bytes of at most 1024 bytes each), hashed several at once the way scan()\n"
"hashes records (for tests).");

static PyObject *chainscan_blake3_chunks(PyObject *module, PyObject *arg)
{
    (void)module;
    PyObject *seq = PySequence_Fast(arg, "blake3_chunks() takes a sequence of bytes");
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject *result = NULL;
    vk_blake3_chunk_input *in = PyMem_Calloc(n ? (size_t)n : 1, sizeof *in);
    uint8_t (*pad)[VK_BLAKE3_BLOCK_LEN] = PyMem_Calloc(n ? (size_t)n : 1, sizeof *pad);
    uint8_t (*out)[VK_BLAKE3_OUT_LEN] = PyMem_Calloc(n ? (size_t)n : 1, sizeof *out);
    if (in == NULL || pad == NULL || out == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyBytes_Check(item) || PyBytes_GET_SIZE(item) > VK_BLAKE3_CHUNK_LEN) {
            PyErr_SetString(PyExc_ValueError, "inputs must be bytes of at most 1024 bytes");
            goto done;
        }
        const uint8_t *data = (const uint8_t *)PyBytes_AS_STRING(item);
        size_t len = (size_t)PyBytes_GET_SIZE(item);
        size_t nblocks = len == 0 ? 1 : (len + VK_BLAKE3_BLOCK_LEN - 1) / VK_BLAKE3_BLOCK_LEN;
        size_t last_len = len - VK_BLAKE3_BLOCK_LEN * (nblocks - 1);
        for (size_t k = 0; k + 1 < nblocks; k++)
            in[i].blocks[k] = data + VK_BLAKE3_BLOCK_LEN * k;
        memcpy(pad[i], data + VK_BLAKE3_BLOCK_LEN * (nblocks - 1), last_len);
        in[i].blocks[nblocks - 1] = pad[i];
        in[i].nblocks = (unsigned)nblocks;
        in[i].last_len = (unsigned)last_len;
    }
    vk_blake3_hash_chunks(in, (size_t)n, out);
    result = PyList_New(n);
    for (Py_ssize_t i = 0; result != NULL && i < n; i++) {
        PyObject *digest = PyBytes_FromStringAndSize((const char *)out[i], VK_BLAKE3_OUT_LEN);
        if (digest == NULL)
            Py_CLEAR(result);
        else
            PyList_SET_ITEM(result, i, digest);
    }
done:
    PyMem_Free(in);
    PyMem_Free(pad);
    PyMem_Free(out);
    Py_DECREF(seq);
    return result;
}

static PyMethodDef chainscan_methods[] = {
    {"scan", chainscan_scan, METH_VARARGS, scan_doc},
    {"blake3_digest", chainscan_blake3_digest, METH_VARARGS, blake3_digest_doc},
    {"blake3_chunks", chainscan_blake3_chunks, METH_O, blake3_chunks_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef chainscan_module = {
    PyModuleDef_HEAD_INIT,
    "vaultkeeper._chainscan",
    "Native fast path of the ledger chain verifier (optional; see vaultkeeper.chain.scan).",
    0,
    chainscan_methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC PyInit__chainscan(void)
{
    init_tables();
    PyObject *m = PyModule_Create(&chainscan_module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "API_VERSION", API_VERSION) < 0 ||
        PyModule_AddIntConstant(m, "BLAKE3_LANES", VK_BLAKE3_LANES) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
