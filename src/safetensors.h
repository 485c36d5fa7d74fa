/* safetensors.h: read and write the safetensors format (checkpoints, Hugging Face model files).
 *
 * File layout: u64 little-endian header length N, N bytes of JSON header (padded with spaces to a
 * multiple of 8), then the data buffer. The header maps each tensor name to
 *   {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}   (offsets relative to the buffer)
 * plus an optional "__metadata__": {string: string}. The buffer is fully covered by the tensors,
 * without holes or overlaps (as the reference implementation requires).
 *
 * Checksums: the writer stores the CRC32 (zlib) of every tensor's bytes as 8 lowercase hex digits
 * in metadata under "checksum.<name>". elmo_st_open verifies every checksum that is present;
 * files from other tools (no checksums) load as they are.
 *
 * dtype strings are the file's own: "F32", "BF16", "F8_E4M3", "F16", "I64", "I32", "U8" (written by
 * elmo) and also "F64", "F8_E5M2", "I8", "I16", "U16", "U32", "U64", "BOOL" (accepted on read).
 */
#ifndef ELMO_SAFETENSORS_H
#define ELMO_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif


#define ELMO_ST_MAX_DIMS 8

/* Bytes per element of a dtype string, 0 if the dtype is unknown. */
size_t elmo_st_dtype_size(const char *dtype);

/* ---- writing ---- */

typedef struct elmo_st_writer elmo_st_writer;

/* Streaming source: copy bytes [offset, offset + n) of the tensor into buf. Returns ELMO_OK or an
 * error code with err filled (the save then fails and nothing is written under the path). */
typedef int (*elmo_st_fill_fn)(void *ctx, size_t offset, void *buf, size_t n, elmo_err *err);

elmo_st_writer *elmo_st_writer_new(void);
/* Adds a tensor; shape [ndim] (ndim 0 = scalar). name and shape are copied; `data` (nbytes) is
 * kept, not copied, and must stay valid until elmo_st_save. Bad input (unknown dtype, nbytes !=
 * prod(shape) * dtype size, duplicate or reserved name) is reported by elmo_st_save. */
void elmo_st_add(elmo_st_writer *w, const char *name, const char *dtype, int ndim,
                 const int64_t *shape, const void *data, size_t nbytes);
/* Adds a tensor whose bytes come from `fill` during elmo_st_save, in ascending chunks of at most
 * the writer's chunk size (so a multi-GB tensor is never copied whole). */
void elmo_st_add_stream(elmo_st_writer *w, const char *name, const char *dtype, int ndim,
                        const int64_t *shape, size_t nbytes, elmo_st_fill_fn fill, void *ctx);
/* Adds (or replaces) a metadata entry; key and value are copied. Keys "checksum.*" are reserved. */
void elmo_st_add_meta(elmo_st_writer *w, const char *key, const char *value);
/* Largest chunk requested from a fill callback (default 64 MiB). */
void elmo_st_set_chunk_bytes(elmo_st_writer *w, size_t bytes);
/* Writes the file atomically (temp name, then rename). Tensors are laid out by element size
 * (largest first, then by name) so every tensor is aligned to its element size. */
int elmo_st_save(elmo_st_writer *w, const char *path, elmo_err *err);
void elmo_st_writer_free(elmo_st_writer **w);

/* ---- reading ---- */

typedef struct elmo_st_file elmo_st_file;

/* zlib's CRC32 of n bytes continuing crc (crc32(0, NULL, 0) to start), large buffers over several threads;
 * the value of one serial crc32 pass. The per-tensor checksums of the writer and the loader use it. */
uint32_t elmo_st_crc32(uint32_t crc, const void *data, size_t n);
/* Opens, validates the header strictly, mmaps the file read-only and verifies every checksum in
 * the metadata. Errors (ELMO_EINPUT) name the path: "model.safetensors: tensor 'x' ...". */
int elmo_st_open(elmo_st_file **out, const char *path, elmo_err *err);
/* As elmo_st_open without reading the data (no checksum pass): for inspecting shapes. */
int elmo_st_open_unverified(elmo_st_file **out, const char *path, elmo_err *err);
/* Checks every checksum present in the metadata (ELMO_EINPUT on mismatch). */
int elmo_st_verify(const elmo_st_file *f, elmo_err *err);
void elmo_st_close(elmo_st_file **f);

const char *elmo_st_path(const elmo_st_file *f);
/* Tensors are numbered 0..count-1 in name order. */
int elmo_st_count(const elmo_st_file *f);
const char *elmo_st_name(const elmo_st_file *f, int i);
/* Looks a tensor up. Returns 1 and fills the non-NULL outputs (shape has ELMO_ST_MAX_DIMS room;
 * data points into the read-only mapping, valid until elmo_st_close), or 0 if it is missing. */
int elmo_st_find(const elmo_st_file *f, const char *name, const char **dtype, int *ndim,
                 int64_t shape[ELMO_ST_MAX_DIMS], const void **data, size_t *nbytes);
/* Like elmo_st_find but requires the tensor with this dtype and (if shape is not NULL) this shape
 * [ndim]; otherwise ELMO_EINPUT "path: tensor 'x' has shape [3, 4] (expected [3, 5])". */
int elmo_st_expect(const elmo_st_file *f, const char *name, const char *dtype, int ndim,
                   const int64_t *shape, const void **data, elmo_err *err);
/* Metadata value for key, or NULL. Entries are numbered 0..meta_count-1 in file order. */
const char *elmo_st_meta(const elmo_st_file *f, const char *key);
int elmo_st_meta_count(const elmo_st_file *f);
const char *elmo_st_meta_key(const elmo_st_file *f, int i);

#ifdef __cplusplus
}
#endif

#endif
